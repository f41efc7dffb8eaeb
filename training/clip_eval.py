"""Evaluate a saved CLIP checkpoint on eval shards, outside Ray Train (one process)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from training.config_io import apply_override, from_dict
from training.checkpoint import load_checkpoint, load_config_dict
from training.clip_task import ClipTask
from training.config import ClipRunConfig
from training.evaluate import embed_eval_set, retrieval_recall, zero_shot_accuracy, zero_shot_classifier


def evaluate_checkpoint(checkpoint: Path, shards: list[str], overrides: list[str] = ()) -> dict:
    from pipelines import contract
from pipelines.dataset import build_dataset
    from training.run import _classes_and_templates, ensure_ray

    if not (Path(checkpoint) / "model.pt").is_file():
        raise ValueError(f"{checkpoint} is not a checkpoint directory (no model.pt)")
    data = load_config_dict(checkpoint)
    for override in overrides:
        apply_override(data, override)
    cfg = from_dict(ClipRunConfig, data)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, eval_shards=list(shards)),
                              eval=dataclasses.replace(cfg.eval, classes=[], templates=[]))
    classes, templates = _classes_and_templates(cfg)
    model = ClipTask(cfg).build_model()
    load_checkpoint(Path(checkpoint), model)
    model.eval()
    ensure_ray(cfg.run.ray_address, cfg.run.local_num_cpus)
    dataset = build_dataset(cfg.data, list(shards), train=False, columns=contract.TENSOR_COLUMNS)
    device = torch.device("cpu")
    batches = dataset.iter_torch_batches(batch_size=cfg.eval.batch_size)
    image_NE, text_NE, labels_N = embed_eval_set(model, batches, device)
    metrics = {"eval_samples": float(image_NE.shape[0])}
    limit = cfg.eval.max_retrieval_samples
    metrics.update(retrieval_recall(image_NE[:limit], text_NE[:limit]))
    if classes:
        classifier = zero_shot_classifier(model, cfg.data.tokenizer, cfg.data.context_length,
                                          classes, templates, device)
        metrics.update(zero_shot_accuracy(image_NE, labels_N, classifier))
    return metrics


