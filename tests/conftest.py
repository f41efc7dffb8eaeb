import os

import pytest

from tests.assets import free_port, make_synth

os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory):
    """A small synthetic dataset (train + val shards, manifest, tokenizer), made once."""
    return make_synth(tmp_path_factory.mktemp("synth"), train=256, val=64, shard_samples=64)


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance for all integration tests. More logical CPUs than cores so that
    Ray Data and Train workers can share a 2-core machine (with one logical CPU per core, Train's
    workers and Ray Data's actors wait for each other's CPUs)."""
    import os

    import ray

    # Settings by inheritance, as mmtrain's own local instance gets them (training/ray_train/driver.py's
    # ensure_ray): a runtime env would start every worker through a second Python start-up.
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    # address="local": a new instance even if a test's `ray start` head is up.
    ray.init(address="local", num_cpus=6, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server on 127.0.0.1 (sqlite backend, proxied artifacts)."""
    import subprocess
    import sys
    import time
    import urllib.request

    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = (root / "server.log").open("w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{root}/mlflow.db",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            break
        except OSError:
            assert server.poll() is None and time.time() < deadline, (root / "server.log").read_text()[-3000:]
            time.sleep(0.5)
    yield url
    os.killpg(server.pid, 15)
    server.wait(timeout=30)
