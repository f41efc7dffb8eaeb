"""Find and load a trained CLIP or VLM from a run or checkpoint directory, for inference.

A run's kind is read from its saved config (a VLM config has a `stage`, a CLIP config a `loss`), so
a VLM run given to a CLIP command is refused with the command that takes it, before Ray starts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mmtrain.pipelines.images import BadSample, decode_eval
from mmtrain.training.checkpoint.store import (
    covers_model,
    latest_checkpoint,
    load_checkpoint,
    load_config_dict,
    read_frozen,
    weights_fingerprint,
)
from mmtrain.training.config.io import from_dict
from mmtrain.training.config.schema import ClipRunConfig, VlmRunConfig
from mmtrain.training.models.skip_init import initialisers_skipped
from mmtrain.training.tasks.kinds import check_kind
from mmtrain.training.tasks.registry import trainer


@dataclass(frozen=True)
class TrainedRun:
    kind: str  # its trainer (training/tasks/registry.py)
    checkpoint: Path  # the checkpoint directory (a run directory's newest intact one)
    cfg: ClipRunConfig | VlmRunConfig
    fingerprint: str  # which weights made an output (training.checkpoint.store.weights_fingerprint)


def find_trained(path: str | Path, kind: str, command: str) -> TrainedRun:
    """The checkpoint at `path` (a run directory or a checkpoint), refused unless it is a `kind` run."""
    path = Path(path)
    if not path.exists():
        raise ValueError(
            f"--checkpoint {path} does not exist: give a run directory (e.g. runs/clip-synth) "
            "or one of its checkpoint_* directories"
        )
    checkpoint = latest_checkpoint(path).resolve()
    config = load_config_dict(checkpoint)
    check_kind(config, kind, f"checkpoint {checkpoint}", f"mmtrain {command}")
    cfg = from_dict(trainer(kind).config_class, config)
    # The weights come from the checkpoint: do not load what the run started from.
    cfg = dataclasses.replace(cfg, init_from="")
    return TrainedRun(kind, checkpoint, cfg, model_fingerprint(checkpoint))


def model_fingerprint(checkpoint: Path) -> str:
    """Which weights a checkpoint holds (a digest over its weight files' checksums)."""
    return weights_fingerprint(checkpoint)


def load_trained_model(run: TrainedRun, device: torch.device):
    """(task, model) with the checkpoint's weights, in eval mode on `device`."""
    task = trainer(run.kind).task(run.cfg)
    model = _build_for_loading(task, run.checkpoint)
    load_checkpoint(run.checkpoint, model)
    model.eval().requires_grad_(False)
    return task, model.to(device)


def _build_for_loading(task, checkpoint: Path):
    """The task's model, built without the random initialisation the checkpoint overwrites
    (training/models/skip_init.py). Built again with it when the checkpoint would leave a weight as
    built: frozen modules load their sources at build time, and a key the checkpoint lacks keeps its
    initial value (the load is not strict). A checkpoint with frozen modules skips the first build."""
    if read_frozen(checkpoint):
        return task.build_model()
    with initialisers_skipped():
        model = task.build_model()
    return model if covers_model(checkpoint, model) else task.build_model()


def decode_image_file(image: str | Path, data) -> np.ndarray:
    """An image file as the eval pipeline decodes it (uint8 HWC); a clear error when it cannot be."""

    try:
        return decode_eval(Path(image).read_bytes(), data.augment, data.max_image_pixels)
    except OSError as err:
        raise ValueError(f"--image {image}: {err.strerror or err}") from None
    except BadSample as err:
        raise ValueError(f"--image {image} could not be used as an image ({err.reason})") from None


def inference_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast(device: torch.device):
    """bf16 on a GPU, as training computes; fp32 on CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
