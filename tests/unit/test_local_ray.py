"""How mmtrain starts a local Ray instance (ray.init is replaced: no Ray starts here)."""

import os
import types

import ray

from mmtrain.training.ray_train import driver as run


def _start_local(monkeypatch, **environ) -> dict:
    # A copy of the environment, so that what ensure_ray sets does not reach the other tests.
    monkeypatch.setattr(os, "environ", dict(os.environ))
    for key in ("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "RAY_ADDRESS"):
        os.environ.pop(key, None)
    os.environ.update(environ)
    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs) or types.SimpleNamespace(dashboard_url=""))
    run.ensure_ray("", 8)
    assert len(calls) == 1
    return calls[0]


def test_a_local_instance_gets_its_settings_by_inheritance_not_a_runtime_env(monkeypatch):
    """A job with a runtime env starts every Ray worker through Ray's setup_worker.py (a second
    Python start-up per process); the local instance inherits this process's environment instead."""
    kwargs = _start_local(monkeypatch)
    assert kwargs["address"] == "local" and kwargs["num_cpus"] == 8
    assert "runtime_env" not in kwargs
    assert os.environ["RAY_TRAIN_ENABLE_PRINT_PATCH"] == "0"
    assert os.environ["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] == "0"
    assert os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "0.5"


def test_the_users_own_settings_win(monkeypatch):
    _start_local(monkeypatch, RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="3", RAY_TRAIN_ENABLE_PREEMPTION_WATCHER="1")
    assert os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "3"
    assert os.environ["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] == "1"
