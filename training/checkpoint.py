"""Checkpoints as plain tensors and JSON: loadable with torch.load(weights_only=True), never
unpickling arbitrary objects. Layout of a checkpoint directory:

    model.pt  optimizer.pt  scheduler.pt  rng.pt   state dicts / tensors
    state.json                                     step, epoch, samples seen
    config.yaml                                    the resolved run config
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
import yaml

from training.loop import TrainState


def save_checkpoint(directory: Path, model, optimizer, scheduler, state: TrainState, config: dict) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), directory / "model.pt")
    if optimizer is not None:
        torch.save(optimizer.state_dict(), directory / "optimizer.pt")
    if scheduler is not None:
        torch.save(scheduler.state_dict(), directory / "scheduler.pt")
    torch.save({"torch": torch.get_rng_state(),
                "numpy": _numpy_rng_tensor(),
                "python": torch.tensor(random.getstate()[1], dtype=torch.int64)}, directory / "rng.pt")
    (directory / "state.json").write_text(json.dumps(state.to_dict()))
    (directory / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return directory


def load_checkpoint(directory: Path, model, optimizer=None, scheduler=None) -> TrainState:
    directory = Path(directory)
    model.load_state_dict(_load(directory / "model.pt"))
    if optimizer is not None and (directory / "optimizer.pt").is_file():
        optimizer.load_state_dict(_load(directory / "optimizer.pt"))
    if scheduler is not None and (directory / "scheduler.pt").is_file():
        scheduler.load_state_dict(_load(directory / "scheduler.pt"))
    if (directory / "rng.pt").is_file():
        rng = _load(directory / "rng.pt")
        torch.set_rng_state(rng["torch"])
        numpy_state = rng["numpy"].numpy()
        np.random.set_state(("MT19937", numpy_state[:-1].astype(np.uint32), int(numpy_state[-1]), 0, 0.0))
        random.setstate((3, tuple(int(v) for v in rng["python"].tolist()), None))
    return TrainState(**json.loads((directory / "state.json").read_text()))


def load_config_dict(directory: Path) -> dict:
    return yaml.safe_load((Path(directory) / "config.yaml").read_text())


def _numpy_rng_tensor() -> torch.Tensor:
    _, keys, position, _, _ = np.random.get_state()
    return torch.from_numpy(np.append(keys.astype(np.int64), position))


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
