"""The trainers mmtrain knows, each described once. Everything that differs between trainers and is
not the task's own code lives in its TrainerSpec; the rest of mmtrain asks the spec and never
switches on a trainer's name. A third trainer is one task module and one entry here.

Task classes, collates and exporters are named as "module:attribute" and imported on first use:
the VLM's task pulls in transformers, which a CLIP inference actor should not pay for at start-up.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from mmtrain.training.config.schema import ClipRunConfig, VlmRunConfig


def _load(path: str):
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)


@dataclass(frozen=True)
class TrainerSpec:
    name: str  # `mmtrain train NAME`, the `task` tag of its MLflow runs, a sweep's `trainer`
    config_class: type  # its run config
    task_path: str  # the Task class (training/tasks/protocol.py)
    resolve_path: str  # (cfg, RunShards) -> (cfg with what the data decides filled in, EvalAssets or None)
    eval_assets_path: str  # cfg -> EvalAssets for evaluating a saved checkpoint on cfg.data.eval_shards
    collate_path: str  # Ray's collate for its training batches ("" = Ray's default)
    export_format: str  # `mmtrain models export --format`
    export_path: str  # (checkpoint, out_dir) -> the export directory
    export_loader: str  # the transformers class that loads the export
    summary: str  # one line for `mmtrain train --help`
    eval_summary: str  # what `mmtrain eval NAME` measures
    commands: str  # the commands that take its runs, for errors that name them

    @property
    def task(self) -> type:
        return _load(self.task_path)

    @property
    def resolve(self) -> Callable:
        return _load(self.resolve_path)

    def eval_assets(self, cfg):
        return _load(self.eval_assets_path)(cfg)

    def collate(self):
        return _load(self.collate_path)() if self.collate_path else None

    def export(self, checkpoint, out_dir):
        return _load(self.export_path)(checkpoint, out_dir)


CLIP = TrainerSpec(
    name="clip",
    config_class=ClipRunConfig,
    task_path="mmtrain.training.tasks.clip:ClipTask",
    resolve_path="mmtrain.training.tasks.resolve:resolve_clip",
    eval_assets_path="mmtrain.training.tasks.resolve:clip_eval_assets",
    collate_path="",
    export_format="hf",
    export_path="mmtrain.training.models.hf_clip:export_hf",
    export_loader="CLIPModel",
    summary="CLIP-style contrastive dual encoder",
    eval_summary="zero-shot accuracy and retrieval recall",
    commands="mmtrain train clip, eval clip, embed, search, classify or data filter",
)
VLM = TrainerSpec(
    name="vlm",
    config_class=VlmRunConfig,
    task_path="mmtrain.training.tasks.vlm:VlmTask",
    resolve_path="mmtrain.training.tasks.resolve:resolve_vlm",
    eval_assets_path="mmtrain.training.tasks.resolve:vlm_eval_assets",
    collate_path="mmtrain.pipelines.collate:VlmCollate",
    export_format="llava",
    export_path="mmtrain.training.tasks.llava_export:export_llava",
    export_loader="LlavaForConditionalGeneration",
    summary="LLaVA-style VLM: frozen CLIP tower -> projector -> causal LM",
    eval_summary="held-out loss, perplexity and exact match of greedy answers",
    commands="mmtrain train vlm, eval vlm, ask or caption",
)

TRAINERS: dict[str, TrainerSpec] = {spec.name: spec for spec in (CLIP, VLM)}


def trainer(name: str) -> TrainerSpec:
    if name not in TRAINERS:
        raise ValueError(f"unknown trainer {name!r}: one of {', '.join(TRAINERS)}")
    return TRAINERS[name]


def trainer_of(cfg) -> TrainerSpec:
    """The spec whose config class `cfg` is."""
    return next(spec for spec in TRAINERS.values() if isinstance(cfg, spec.config_class))
