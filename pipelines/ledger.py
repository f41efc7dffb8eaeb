"""Count good and bad samples across every Ray Data task, and enforce the bad-fraction limit."""

from __future__ import annotations

from collections import Counter

import ray

from pipelines.bad_samples import TooManyBadSamples


@ray.remote(num_cpus=0)
class SampleLedger:
    """One per dataset. Stages send counts fire-and-forget; the consumer reads the summary."""

    def __init__(self):
        self._good = 0
        self._bad: Counter[str] = Counter()

    def record(self, good: int, bad: dict[str, int]) -> None:
        self._good += good
        self._bad.update(bad)

    def summary(self) -> dict:
        return {"good": self._good, "bad": dict(self._bad), "bad_total": sum(self._bad.values())}


def bad_fraction(summary: dict) -> float:
    total = summary["good"] + summary["bad_total"]
    return summary["bad_total"] / total if total else 0.0


def check_bad_fraction(summary: dict, max_fraction: float, min_samples: int) -> None:
    """Raise TooManyBadSamples once enough samples are seen and too many of them were bad."""
    seen = summary["good"] + summary["bad_total"]
    if seen >= min_samples and bad_fraction(summary) > max_fraction:
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(summary["bad"].items()))
        raise TooManyBadSamples(
            f"{summary['bad_total']} of {seen} samples were bad ({bad_fraction(summary):.1%} > "
            f"data.max_bad_fraction={max_fraction:.1%}): {reasons}. Fix the shards "
            "(`mmtrain data inspect` lists them) or raise data.max_bad_fraction."
        )
