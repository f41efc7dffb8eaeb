"""The run's data ledger: good and bad sample counts, the bad-fraction limit, and the data position
that read tasks consult on a resume."""

from __future__ import annotations

import asyncio

import numpy as np
import ray

from mmtrain.pipelines.bad_samples import TooManyBadSamples
from mmtrain.pipelines.mixture import WHOLE, MixturePlan, per_source
from mmtrain.pipelines.position import BadSample, DataPosition


@ray.remote(num_cpus=0)
class SampleLedger:
    """One per dataset. Stages send counts fire-and-forget; read tasks ask `plan` what to skip; the
    trainer reads the summary and, at each checkpoint, hands over what was trained on and takes the
    position to save.

    With `wait_for_begin`, `plan` waits until the trainer has called `begin` (with the checkpoint's
    position, or None for a fresh run), so no read task runs before the resume point is known.
    """

    def __init__(self, wait_for_begin: bool = False, num_shards: int = 0, mix: MixturePlan | None = None):
        self._num_shards = num_shards
        self._mix = mix  # a mixture's plan: partial shard copies, and each copy's source for the summary
        self._takes = mix.takes if mix is not None else (WHOLE,) * num_shards
        self._position = DataPosition()
        self._good = 0
        self._actors_started = 0
        self._ready = asyncio.Event()
        if not wait_for_begin:
            self._ready.set()

    def begin(self, position: dict | None) -> None:
        self._position = DataPosition.from_json(position) if position else DataPosition()
        self._good = self._position.total_consumed()  # samples read again after a resume are counted again
        self._ready.set()

    async def plan(self, epoch: int, shard: int, take: int = WHOLE) -> tuple[np.ndarray, bool]:
        """(bitmap of samples to pass over, whether nothing is left to read) for one (epoch, shard),
        of which the epoch reads `take` samples (a mixture's partial copy) or all."""
        await self._ready.wait()
        return self._position.skip(epoch, shard), self._position.shard_done(epoch, shard, take)

    def record(self, good: int, bad: list[BadSample]) -> None:
        self._good += good
        self._position.add_bad(bad)

    def actor_started(self) -> None:
        self._actors_started += 1

    def shard_counted(self, shard: int, count: int) -> None:
        known = self._position.samples_per_shard.get(shard, 0)
        self._position.samples_per_shard[shard] = max(known, count)

    def consume(self, positions: np.ndarray) -> None:
        self._position.add_consumed(positions)
        # Epochs behind the one in progress are done: keep their counts, not a byte per sample.
        in_progress = self.epoch_in_progress()
        for epoch in [e for e in self._position.consumed if e < in_progress]:
            self._position.finish_epoch(epoch)

    def position(self) -> dict:
        return self._position.to_json()

    def epoch_in_progress(self) -> int:
        """The oldest epoch with samples left to train on."""
        epoch = 0
        while self._num_shards and all(
            self._position.shard_done(epoch, s, self._takes[s]) for s in range(self._num_shards)
        ):
            epoch += 1
        return epoch

    def summary(self) -> dict:
        bad = self._position.bad_counts()
        summary = {
            "good": self._good,
            "bad": bad,
            "bad_total": sum(bad.values()),
            "actors_started": self._actors_started,
        }
        if self._mix is not None:  # each source's samples trained on, and bad, over the run
            summary["sources"] = {
                "samples": per_source(self._position.consumed_per_shard(), self._mix),
                "bad": per_source(self._position.bad_per_shard(), self._mix),
            }
        return summary


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
