"""Export a checkpoint to the standard format of its trainer (training/tasks/registry.py: a CLIP run
as a transformers CLIPModel directory, a VLM run as a LlavaForConditionalGeneration directory;
safetensors both)."""

from __future__ import annotations

from pathlib import Path

from mmtrain.training.checkpoint.store import load_config_dict
from mmtrain.training.tasks.kinds import run_kind
from mmtrain.training.tasks.registry import TRAINERS, TrainerSpec


def trainer_of_checkpoint(checkpoint: Path) -> TrainerSpec:

    kind = run_kind(load_config_dict(checkpoint))
    if kind is None:
        raise ValueError(f"{checkpoint}'s config.yaml has no key that tells its trainer: not an mmtrain checkpoint")
    return TRAINERS[kind]


def export_checkpoint(checkpoint: Path, out_dir: Path, format: str | None = None) -> tuple[Path, str]:
    """(the export directory, the transformers class that loads it); `format` None = the trainer's own."""
    spec = trainer_of_checkpoint(checkpoint)
    if format not in (None, spec.export_format):
        wanted = next((other for other in TRAINERS.values() if other.export_format == format), None)
        exports = f"exports {wanted.name.upper()} runs" if wanted else "is no export format"
        raise ValueError(
            f"{checkpoint} is a {spec.name.upper()} checkpoint; --format {format} {exports} "
            f"(use --format {spec.export_format})"
        )
    return spec.export(checkpoint, out_dir), spec.export_loader
