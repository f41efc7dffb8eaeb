"""Checkpoints as plain tensors and JSON: loadable with torch.load(weights_only=True), never
unpickling arbitrary objects. Layout of a checkpoint directory:

    model.pt  optimizer.pt   state dicts
    state.json               step, epoch, samples seen, the learning-rate schedule in force
    config.yaml              the resolved run config
    tracking.json            the MLflow run this checkpoint's lineage logs to
    data_position.json       what the run has trained on in each epoch, and the bad samples it met
                             (pipelines/position.py): a resume continues the epoch from there
    checksums.json           sha256 of every file above, written last: a checkpoint without it, or
                             with a file that does not match, is incomplete or damaged

No RNG state is saved: a run draws its randomness from (seed, step, rank) (training.resume.seed_for),
so every rank of a resumed run gets reproducible randomness of its own. The learning-rate schedule
is a function of the step and the schedule in state.json, so no scheduler state is saved either.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import torch
import yaml

from training.loop import TrainState


def save_checkpoint(directory: Path, model, optimizer, state: TrainState, config: dict,
                    tracking_run_id: str = "", data_position: dict | None = None) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), directory / "model.pt")
    if optimizer is not None:
        torch.save(optimizer.state_dict(), directory / "optimizer.pt")
    (directory / "state.json").write_text(json.dumps(state.to_dict()))
    (directory / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (directory / "tracking.json").write_text(json.dumps({"mlflow_run_id": tracking_run_id}))
    if data_position is not None:
        (directory / DATA_POSITION).write_text(json.dumps(data_position))
    # Over the files just written (and any already there), never over an older checksums.json: a
    # checkpoint saved again into its directory would otherwise list a stale digest of that file.
    checksums = {path.name: _sha256(path) for path in sorted(directory.iterdir())
                 if path.is_file() and path.name != CHECKSUMS}
    (directory / CHECKSUMS).write_text(json.dumps(checksums, indent=1))
    return directory


CHECKSUMS = "checksums.json"
DATA_POSITION = "data_position.json"


def checkpoint_problem(directory: Path) -> str | None:
    """Why a checkpoint directory cannot be trusted (a missing, truncated or altered file), or None.
    Checkpoints written before checksums existed are trusted if their model.pt is there."""
    directory = Path(directory)
    for required in ("model.pt", "state.json", "config.yaml"):
        if not (directory / required).is_file():
            return f"no {required}"
    if not (directory / CHECKSUMS).is_file():
        return None if not (directory / "tracking.json").is_file() else f"no {CHECKSUMS} (the write did not finish)"
    # A run reads its tower's and its own checkpoint several times (resolve, stages, workers): hash a
    # directory once per process, again only when a file's size or modification time has changed.
    files = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(directory.iterdir()) if p.is_file())
    return _verify(str(directory.resolve()), files)


@functools.lru_cache(maxsize=64)
def _verify(directory: str, files: tuple) -> str | None:
    directory = Path(directory)
    try:
        expected = json.loads((directory / CHECKSUMS).read_text())
    except ValueError:
        return f"{CHECKSUMS} is not JSON"
    for name, digest in expected.items():
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        if _sha256(path) != digest:
            return f"{name} does not match its checksum (truncated or altered)"
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_checkpoint(directory: Path, model, optimizer=None) -> TrainState:
    directory = Path(directory)
    model.load_state_dict(_load(directory / "model.pt"))
    if optimizer is not None and (directory / "optimizer.pt").is_file():
        optimizer.load_state_dict(_load(directory / "optimizer.pt"))
    saved = json.loads((directory / "state.json").read_text())
    known = TrainState.__dataclass_fields__
    return TrainState(**{key: value for key, value in saved.items() if key in known})


def load_config_dict(directory: Path) -> dict:
    return yaml.safe_load((Path(directory) / "config.yaml").read_text())


def load_tracking_run_id(directory: Path) -> str:
    """The MLflow run id saved with the checkpoint ("" when none was)."""
    path = Path(directory) / "tracking.json"
    return json.loads(path.read_text()).get("mlflow_run_id", "") if path.is_file() else ""


def load_data_position(directory: Path) -> dict | None:
    """The data position saved with the checkpoint (None for one saved without: its epoch restarts)."""
    path = Path(directory) / DATA_POSITION
    return json.loads(path.read_text()) if path.is_file() else None


def _load(path: Path):
    return torch.load(path, map_location="cpu", weights_only=True)


def latest_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory itself, or the newest intact `checkpoint_*` inside a run directory
    (a damaged newer one is skipped, saying which and why)."""
    path = Path(path)
    if (path / "model.pt").is_file():
        problem = checkpoint_problem(path)
        if problem:
            raise ValueError(f"checkpoint {path} is damaged: {problem}; give the run directory to use "
                             "its newest intact checkpoint")
        return path
    for candidate in sorted((p for p in path.glob("checkpoint_*") if p.is_dir()), reverse=True):
        problem = checkpoint_problem(candidate)
        if problem is None:
            return candidate
        print(f"[mmtrain] skipping checkpoint {candidate}: {problem}", flush=True)
    raise ValueError(f"no intact checkpoint in {path}: give a checkpoint directory (with model.pt) or a run "
                     "directory that holds checkpoint_* folders")
