"""A checkpoint from elsewhere cannot run code, and any damage to one is a reason to skip it for
the newest intact one, even when whoever damaged it rewrote the checksums to match."""

import hashlib
import json
import pickle
import pickletools

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmtrain.training.checkpoint.metadata import ALLOWED, UnsafeCheckpoint, load_metadata
from mmtrain.training.checkpoint.store import checkpoint_problem, latest_checkpoint, load_checkpoint, save_checkpoint
from mmtrain.training.engine.loop import TrainState


def _stack_global_payload(module: str, name: str, argument: str) -> bytes:
    """A protocol-4 pickle that calls module:name(argument), as a crafted .metadata would."""

    def text(value: str) -> bytes:
        data = value.encode()
        return pickle.BINUNICODE + len(data).to_bytes(4, "little") + data

    return (
        pickle.PROTO
        + b"\x04"
        + text(module)
        + text(name)
        + pickle.STACK_GLOBAL
        + text(argument)
        + pickle.TUPLE1
        + pickle.REDUCE
        + pickle.STOP
    )


def _save(directory, step=3):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    save_checkpoint(
        directory,
        model,
        optimizer,
        TrainState(step=step, samples_seen=8),
        {"seed": 1},
        data_position={"format": 1, "consumed": {}},
    )
    return model, optimizer


def _rechecksum(directory):
    """What an attacker who writes the payload does too: checksums that match it."""
    names = sorted(
        str(p.relative_to(directory))
        for p in directory.rglob("*")
        if p.is_file() and not p.name.startswith("checksums")
    )
    digests = {name: hashlib.sha256((directory / name).read_bytes()).hexdigest() for name in names}
    (directory / "checksums.json").write_text(json.dumps(digests))


def test_the_published_stack_global_payload_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    payload = _stack_global_payload("torch.distributed.checkpoint.filesystem", "os.system", f"touch {marker}")
    pickletools.dis(payload, out=open(tmp_path / "dis.txt", "w"))  # a valid pickle
    path = tmp_path / "ck" / "weights" / ".metadata"
    _save(tmp_path / "ck")
    path.write_bytes(payload)
    _rechecksum(tmp_path / "ck")
    with pytest.raises(UnsafeCheckpoint, match="os.system"):
        load_metadata(open(path, "rb"), len(payload))
    problem = checkpoint_problem(tmp_path / "ck")
    assert problem is not None and "os.system" in problem
    assert not marker.exists()


_MODULES = sorted({module for module, _ in ALLOWED} | {"os", "builtins", "subprocess", "posix"})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    module=st.sampled_from(_MODULES),
    name=st.one_of(
        st.sampled_from(
            [
                "system",
                "os.system",
                "eval",
                "exec",
                "__import__",
                "getattr",
                "Metadata.__reduce__",
                "_StorageInfo.__init__",
                "Path",
                "PosixPath.unlink",
                "load",
                "_get_layout.__globals__",
                "Size.__new__",
            ]
        ),
        st.text(min_size=1, max_size=40),
    ),
)
def test_any_name_off_the_allow_list_is_refused_before_it_is_resolved(module, name):
    payload = _stack_global_payload(module, name, "x")
    if (module, name) in ALLOWED:
        return  # an allowed class called with a string: refused by the type check or its own constructor
    import io

    with pytest.raises(UnsafeCheckpoint):
        load_metadata(io.BytesIO(payload), len(payload))


def test_an_allowed_callable_returning_something_else_is_refused(tmp_path):
    import io

    payload = _stack_global_payload("torch", "Size", "abc")  # Size("abc") is not Metadata
    with pytest.raises(UnsafeCheckpoint):
        load_metadata(io.BytesIO(payload), len(payload))


def _truncate_ranks(d):
    (d / "ranks.json").write_text('{"ran')


def _checksums_of_wrong_type(d):
    (d / "checksums.json").write_text("[]")


def _zero_ranks(d):
    (d / "ranks.json").write_text('{"ranks": 0}')


def _uncovered_truncated_shard(d):
    shard = d / "weights" / "__0_0.distcp"
    shard.write_bytes(shard.read_bytes()[:10])
    digests = json.loads((d / "checksums.json").read_text())
    del digests["weights/__0_0.distcp"]
    (d / "checksums.json").write_text(json.dumps(digests))


def _negative_step(d):
    (d / "state.json").write_text(json.dumps({"step": -5, "samples_seen": 8}))


def _malicious_metadata(d):
    (d / "weights" / ".metadata").write_bytes(_stack_global_payload("os", "system", "true"))


def _bitmap_bomb(d):
    (d / "data_position.json").write_text(json.dumps({"format": 1, "consumed": {"0": {"0": "99999999999:eJw="}}}))


def _frozen_of_wrong_shape(d):
    (d / "frozen.json").write_text('{"lm": "/elsewhere"}')


def _config_not_yaml(d):
    (d / "config.yaml").write_text("a: [")


def _checksums_leave_the_directory(d):
    digests = json.loads((d / "checksums.json").read_text())
    (d / "checksums.json").write_text(json.dumps({**digests, "../../etc/hostname": "0" * 64}))


@pytest.mark.parametrize(
    "damage, reason",
    [
        (_truncate_ranks, "ranks.json"),
        (_checksums_of_wrong_type, "not a mapping"),
        (_zero_ranks, "ranks"),
        (_uncovered_truncated_shard, "not covered"),
        (_negative_step, "step=-5"),
        (_malicious_metadata, "os:system"),
        (_bitmap_bomb, "bitmap"),
        (_frozen_of_wrong_shape, "frozen.json"),
        (_config_not_yaml, "YAML"),
        (_checksums_leave_the_directory, "outside the checkpoint"),
    ],
)
def test_any_damaged_checkpoint_is_skipped_for_the_newest_intact_one(tmp_path, capsys, damage, reason):
    older, newer = tmp_path / "checkpoint_000005", tmp_path / "checkpoint_000010"
    model, optimizer = _save(older, step=5)
    _save(newer, step=10)
    damage(newer)
    if damage not in (_checksums_leave_the_directory, _checksums_of_wrong_type, _uncovered_truncated_shard):
        _rechecksum(newer)
    problem = checkpoint_problem(newer)
    assert problem is not None and reason in problem, problem
    assert latest_checkpoint(tmp_path) == older
    assert f"skipping checkpoint {newer}" in capsys.readouterr().out
    assert load_checkpoint(older, model, optimizer).step == 5
