"""What each metric is named, by what it measures. One scheme everywhere: Ray Train results, the
console, MLflow, a sweep's `metric`.

MLflow 3.17's UI draws one chart section per metric prefix (the name up to its last "/"), sections
in code-point order and unprefixed metrics last (tools/mlflow_ui_check.py shows it). These prefixes put
the training curves first, the input stream's counts next, the held-out evaluation after them:
"train" < "train_data" < "val".
"""

from __future__ import annotations

from mmtrain.pipelines.config import InvalidValue

TRAIN = "train/"  # the training step: loss, lr, samples_per_s, grad_norm, ...
TRAIN_DATA = "train_data/"  # the training stream: good samples, bad samples by reason, data actors
VAL = "val/"  # evaluation on the held-out split: zero-shot accuracy, retrieval, eval loss
# Where a worker's wall time went outside the training step (seconds, once per run): run tags, not
# curves (`python -m benchmarks.overhead` prints them as a breakdown).
OVERHEAD = "overhead/"
LOSS, SAMPLES_PER_S = TRAIN + "loss", TRAIN + "samples_per_s"
PREFIXES = (TRAIN, TRAIN_DATA, VAL)


def as_train(metrics: dict) -> dict:
    return {TRAIN + name: value for name, value in metrics.items()}


def as_val(metrics: dict) -> dict:
    return {VAL + name: value for name, value in metrics.items()}


def is_val(name: str) -> bool:
    return name.startswith(VAL)


def check_sweep_metric(metric: str) -> None:
    """A sweep ranks trials on a reported metric, so its name must be one this scheme reports."""
    if metric.startswith(PREFIXES):
        return
    raise InvalidValue(
        f"metric={metric!r} is not a reported metric: use {TRAIN}<name> (e.g. {LOSS}) "
        f"or {VAL}<name> (e.g. {VAL}zero_shot_top1, {VAL}loss)"
    )
