"""`mmtrain eval clip|vlm`: evaluate a saved checkpoint on eval shards in one process (Ray Data
reads the shards; no Ray Train)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from mmtrain.pipelines.dataset import build_dataset
from mmtrain.training.checkpoint.store import latest_checkpoint, load_checkpoint, load_config_dict
from mmtrain.training.config.io import apply_override, from_dict
from mmtrain.training.ray_train.driver import ensure_ray
from mmtrain.training.tasks.kinds import check_kind
from mmtrain.training.tasks.registry import trainer


def evaluate_checkpoint(kind: str, checkpoint: Path, shards: list[str], overrides: list[str] = ()) -> tuple[dict, list]:
    """(metrics, sample table) for a checkpoint of trainer `kind` (or a run directory's latest one)."""
    spec = trainer(kind)
    checkpoint = latest_checkpoint(checkpoint)
    data = load_config_dict(checkpoint)
    check_kind(
        data,
        kind,
        f"checkpoint {checkpoint}",
        f"mmtrain eval {kind}",
        f"mmtrain eval {{kind}} --checkpoint {checkpoint} --data ...",
    )
    for override in overrides:
        apply_override(data, override)
    cfg = from_dict(spec.config_class, data)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, eval_shards=list(shards)))
    assets = spec.eval_assets(cfg)
    task = spec.task(cfg)
    model = task.build_model()
    load_checkpoint(checkpoint, model)
    model.eval()
    ensure_ray(cfg.run.ray_address, cfg.run.local_num_cpus)
    dataset = build_dataset(
        cfg.data, list(shards), train=False, columns=spec.task.eval_columns, text_stage=spec.task.text_stage(cfg)
    )
    with torch.no_grad():
        batches = dataset.iter_batches(batch_size=cfg.eval.batch_size, batch_format="numpy")
        evaluation = task.evaluate(model, batches, torch.device("cpu"), assets)
    return evaluation.metrics, evaluation.table
