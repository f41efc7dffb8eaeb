"""The Python API: what `mmtrain train`, `eval`, `export` and `dry-run` do, as functions.

    import mmtrain

    cfg = mmtrain.load_config("clip", "clip/custom", ["data.train_shards=[shards/train-*.tar]"])
    metrics = mmtrain.train(cfg)                  # Ray Train on the local instance (or RAY_ADDRESS)
    scores, samples = mmtrain.evaluate("clip", cfg.run.output_dir + "/" + cfg.run.name, ["shards/val-*.tar"])
    hf_dir = mmtrain.export(cfg.run.output_dir + "/" + cfg.run.name, "exported")

Configs are the typed dataclasses of `mmtrain.training.config.schema` (ClipRunConfig, VlmRunConfig):
change a field on the object, or pass "KEY=VALUE" overrides as `--set` takes them.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from mmtrain.training.config.schema import ClipRunConfig, VlmRunConfig
from mmtrain.training.tasks.kinds import load_run_config

RunConfig = ClipRunConfig | VlmRunConfig


def load_config(trainer: str, config: str | Path, overrides: Sequence[str] = ()) -> RunConfig:
    """A run config: `trainer` is "clip" or "vlm"; `config` a YAML file or a preset ("clip/tiny");
    `overrides` "KEY=VALUE" strings, as `--set` takes them. ConfigError says what is wrong."""
    return load_run_config(trainer, Path(config), list(overrides))


def train(cfg: RunConfig) -> dict:
    """Train (or resume, as `cfg.run.resume` allows) and return the final metrics."""
    from mmtrain.training.ray_train.driver import run_training

    return run_training(cfg)


def evaluate(
    trainer: str, checkpoint: str | Path, data: Sequence[str], overrides: Sequence[str] = ()
) -> tuple[dict, list[dict]]:
    """(metrics, per-sample rows) of a checkpoint, or a run directory's latest, on eval shards."""
    from mmtrain.training.ray_train.evaluate_checkpoint import evaluate_checkpoint

    return evaluate_checkpoint(trainer, Path(checkpoint), list(data), list(overrides))


def export(checkpoint: str | Path, out_dir: str | Path, format: str | None = None) -> Path:
    """A Hugging Face model directory (transformers' CLIPModel or LlavaForConditionalGeneration)."""
    from mmtrain.training.checkpoint.store import latest_checkpoint
    from mmtrain.training.tasks.export import export_checkpoint

    out, _loader = export_checkpoint(latest_checkpoint(Path(checkpoint)), Path(out_dir), format)
    return out


def dry_run(out: str | Path = "out/dry-run", sweep: bool = False) -> int:
    """The whole pipeline, small and local (`mmtrain dry-run`); 0 when it worked."""
    from mmtrain.jobs.dry_run import run_dry_run

    return run_dry_run(argparse.Namespace(out=Path(out), sweep=sweep))
