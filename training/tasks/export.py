"""Export a checkpoint to the standard format of its trainer: a CLIP run as a transformers
CLIPModel directory, a VLM run as a LlavaForConditionalGeneration directory (safetensors both)."""

from __future__ import annotations

from pathlib import Path

FORMATS = {"clip": "hf", "vlm": "llava"}
LOADERS = {"hf": "CLIPModel", "llava": "LlavaForConditionalGeneration"}


def trainer_of(checkpoint: Path) -> str:
    from training.checkpoint.store import load_config_dict

    return "vlm" if "stage" in load_config_dict(checkpoint) else "clip"


def export_checkpoint(checkpoint: Path, out_dir: Path, format: str | None = None) -> tuple[Path, str]:
    """(the export directory, the transformers class that loads it); `format` None = the trainer's own."""
    trainer = trainer_of(checkpoint)
    format = format or FORMATS[trainer]
    if FORMATS[trainer] != format:
        other = "llava" if trainer == "vlm" else "hf"
        raise ValueError(f"{checkpoint} is a {trainer.upper()} checkpoint; --format {format} exports "
                         f"{'VLM' if format == 'llava' else 'CLIP'} runs (use --format {other})")
    if format == "hf":
        from training.models.hf_clip import export_hf

        return export_hf(checkpoint, out_dir), LOADERS[format]
    from training.models.hf_llava import export_llava

    return export_llava(checkpoint, out_dir), LOADERS[format]
