"""What the driver hands every Ray Train worker, typed (Ray passes it through train_loop_config)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from training.config.schema import ClipRunConfig, VlmRunConfig


@dataclass(frozen=True)
class EvalAssets:
    """What evaluation needs beside the eval data: CLIP's zero-shot classes, templates and tokenizer
    (empty for the VLM, whose evaluation needs only the data)."""

    tokenizer: str = ""
    classes: list[str] = field(default_factory=list)
    templates: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class WorkerPayload:
    config: ClipRunConfig | VlmRunConfig
    task: str  # "clip" or "vlm"
    tracking_uri: str  # training.tracking.tracker.TRACKING_OFF for none
    eval: EvalAssets | None = None  # None: no eval data, no evaluation
    ledger: Any = None  # the SampleLedger actor that counts bad samples
