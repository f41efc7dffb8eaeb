"""What a trainer's task is to the rest of mmtrain: everything the Ray Train worker, batch inference
and the exporters use of it. The loop needs only the part in training/engine/loop.py (StepTask)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Iterable, Protocol

import torch
from torch import nn

from mmtrain.evaluation.folder_benchmark import FolderBenchmark
from mmtrain.training.engine.loop import StepTask
from mmtrain.training.tracking.figures import HeatmapSpec


@dataclass(frozen=True)
class Evaluation:
    """What an evaluation found: metrics (named without the val/ prefix), rows to show as a table
    (the VLM's generations) and pictures to draw (CLIP's heat maps)."""

    metrics: dict
    table: list[dict] = field(default_factory=list)
    pictures: dict[str, HeatmapSpec] = field(default_factory=dict)


@dataclass(frozen=True)
class EvalAssets:
    """What evaluation needs beside the eval data: CLIP's zero-shot classes, templates and tokenizer
    (empty for the VLM, whose evaluation needs only the data)."""

    tokenizer: str = ""
    classes: list[str] = field(default_factory=list)
    templates: list[str] = field(default_factory=list)
    # VLM: how many of each eval shard's first samples are asked their question (in the shards'
    # order, up to eval.max_generate_samples in all): the same questions on any worker count,
    # whatever share of the eval data each rank reads. Empty: the first max_generate_samples a
    # process meets (one process).
    questions_per_shard: tuple[int, ...] = ()
    # CLIP: eval.benchmarks, their files listed (each rank decodes its share at every evaluation).
    benchmarks: tuple[FolderBenchmark, ...] = ()


class Task(StepTask, Protocol):
    train_columns: ClassVar[tuple[str, ...]]  # the batch contract's columns a training batch carries
    eval_columns: ClassVar[tuple[str, ...] | None]  # None: every column (the VLM keeps its conversations)
    normalize: object  # uint8 images -> the model's normalised input, on the device

    def __init__(self, cfg) -> None: ...

    @staticmethod
    def text_stage(cfg, ledger=None, train: bool = False) -> tuple[type, dict] | None:
        """The Ray Data text stage (callable class, its arguments), or None for captions -> tokens;
        `train`: for the training stream (which may pack rows), not evaluation."""

    def build_model(self) -> nn.Module: ...
    def frozen_sources(self) -> dict[str, str]: ...
    def param_groups(self, model: nn.Module) -> list[dict]: ...
    def step_metrics(self, model: nn.Module) -> dict: ...
    def captions(self, batch: dict) -> list[str]: ...
    def evaluate(
        self, model: nn.Module, batches: Iterable[dict], device: torch.device, assets: EvalAssets | None = None
    ) -> Evaluation: ...
