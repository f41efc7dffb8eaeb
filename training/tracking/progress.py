"""The training progress line: `[mmtrain] step 700/1500 (47%) loss 2.314, 1,234 samples/s, ETA 3m12s; ...`
One line per log interval (a log file reads the same as a terminal). Knows nothing of Ray.
Training metrics (train/<name>) show without their prefix: it is the training progress line."""

from __future__ import annotations

import time

from mmtrain.training.config.metric_names import LOSS, SAMPLES_PER_S, TRAIN

HEADLINE = (LOSS, SAMPLES_PER_S)
NOT_SHOWN = ("step",)  # in the headline already


class Progress:
    """Steps per second since the first step this process took (start-up excluded), for the ETA."""

    def __init__(self, clock=time.perf_counter):
        self._clock = clock
        self._first: tuple[int, float] | None = None

    def line(self, step: int, max_steps: int, metrics: dict) -> str:
        now = self._clock()
        if self._first is None:
            self._first = (step, now)
        head = f"[mmtrain] step {step}/{max_steps} ({step / max(max_steps, 1):.0%})"
        parts = []
        if LOSS in metrics:
            parts.append(f"loss {metrics[LOSS]:.4g}")
        if SAMPLES_PER_S in metrics:
            parts.append(f"{metrics[SAMPLES_PER_S]:,.0f} samples/s")
        eta = self._eta(step, max_steps, now)
        if eta:
            parts.append(f"ETA {eta}")
        shown = {key.removeprefix(TRAIN): value for key, value in metrics.items() if key not in HEADLINE + NOT_SHOWN}
        rest = ", ".join(_format(key, value) for key, value in sorted(shown.items()))
        return head + (" " + ", ".join(parts) if parts else "") + (f"; {rest}" if rest else "")

    def _eta(self, step: int, max_steps: int, now: float) -> str:
        first_step, first_time = self._first
        if step >= max_steps or step <= first_step:
            return ""
        seconds = (max_steps - step) * (now - first_time) / (step - first_step)
        return duration(seconds)


def duration(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def _format(key: str, value) -> str:
    return f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
