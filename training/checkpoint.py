"""Checkpoints as plain tensors and JSON: loadable with torch.load(weights_only=True), never
unpickling arbitrary objects. Layout of a checkpoint directory:

    model.pt  optimizer.pt   state dicts
    state.json               step, epoch, samples seen, the learning-rate schedule in force
    config.yaml              the resolved run config
    tracking.json            the MLflow run this checkpoint's lineage logs to

No RNG state is saved: a run draws its randomness from (seed, step, rank) (training.resume.seed_for),
so every rank of a resumed run gets reproducible randomness of its own. The learning-rate schedule
is a function of the step and the schedule in state.json, so no scheduler state is saved either.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

from training.loop import TrainState


def save_checkpoint(directory: Path, model, optimizer, state: TrainState, config: dict,
                    tracking_run_id: str = "") -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), directory / "model.pt")
    if optimizer is not None:
        torch.save(optimizer.state_dict(), directory / "optimizer.pt")
    (directory / "state.json").write_text(json.dumps(state.to_dict()))
    (directory / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (directory / "tracking.json").write_text(json.dumps({"mlflow_run_id": tracking_run_id}))
    return directory


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


def _load(path: Path):
    return torch.load(path, map_location="cpu", weights_only=True)


def latest_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory itself, or the newest `checkpoint_*` inside a run directory."""
    path = Path(path)
    if (path / "model.pt").is_file():
        return path
    candidates = sorted(p for p in path.glob("checkpoint_*") if (p / "model.pt").is_file())
    if not candidates:
        raise ValueError(f"no checkpoint in {path}: give a checkpoint directory (with model.pt) or a run "
                         "directory that holds checkpoint_* folders")
    return candidates[-1]
