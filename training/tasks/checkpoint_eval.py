"""`mmtrain eval clip|vlm`: evaluate a saved checkpoint on eval shards in one process (no Ray Train)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from training.checkpoint.store import latest_checkpoint, load_checkpoint, load_config_dict
from training.config.io import apply_override, from_dict
from training.config.kinds import RUN_CONFIGS, check_kind
from training.ray_train.payload import EvalAssets



def evaluate_checkpoint(kind: str, checkpoint: Path, shards: list[str], overrides: list[str] = ()) -> tuple[dict, list]:
    """(metrics, sample table) for a CLIP or VLM checkpoint (or a run directory's latest one)."""
    from pipelines.dataset import build_dataset
    from training.ray_train.driver import classes_and_templates, ensure_ray
    from training.tasks.registry import task_class

    checkpoint = latest_checkpoint(checkpoint)
    data = load_config_dict(checkpoint)
    check_kind(data, kind, f"checkpoint {checkpoint}", f"mmtrain eval {kind}",
               f"mmtrain eval {{kind}} --checkpoint {checkpoint} --data ...")
    for override in overrides:
        apply_override(data, override)
    cfg = from_dict(RUN_CONFIGS[kind], data)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, eval_shards=list(shards)))
    assets = EvalAssets()
    if kind == "clip":
        cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, classes=[], templates=[]))
        classes, templates = classes_and_templates(cfg)
        assets = EvalAssets(cfg.data.tokenizer, classes, templates)
    task_type = task_class(kind)
    task = task_type(cfg)
    model = task.build_model()
    load_checkpoint(checkpoint, model)
    model.eval()
    ensure_ray(cfg.run.ray_address, cfg.run.local_num_cpus)
    dataset = build_dataset(cfg.data, list(shards), train=False, columns=task_type.eval_columns,
                            text_stage=task_type.text_stage(cfg))
    with torch.no_grad():
        batches = dataset.iter_batches(batch_size=cfg.eval.batch_size, batch_format="numpy")
        metrics = task.evaluate(model, batches, torch.device("cpu"), assets)
    return metrics, task.eval_table
