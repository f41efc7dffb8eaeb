"""What the driver hands every Ray Train worker, typed (Ray passes it through train_loop_config)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mmtrain.pipelines.mixture import MixturePlan
from mmtrain.training.config.schema import ClipRunConfig, VlmRunConfig
from mmtrain.training.tasks.protocol import EvalAssets


@dataclass(frozen=True)
class WorkerPayload:
    config: ClipRunConfig | VlmRunConfig
    eval: EvalAssets | None = None  # None: no eval data, no evaluation
    ledger: Any = None  # the SampleLedger actor that counts bad samples
    mix: MixturePlan | None = None  # a mixture's plan: batches are blended to its weights
    source: dict = field(default_factory=dict)  # the code that started the run (training/tracking/source.py)
