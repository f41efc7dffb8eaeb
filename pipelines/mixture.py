"""Mixtures of datasets by weight (`data.sources`), as LLaVA-1.5's stage 2 mixes VQA, OCR, region and
text-only sets (InternVL calls the weights repeat_time, Megatron-Energon blend weights).

An epoch of a mixture reads each source `weight / sum(weights)` of its samples. Its size is the
smallest in which every source is read at least once: the source with the most samples per unit of
weight is read once, the others repeat (whole passes, then part of one). The plan is a list of
shard *copies* fixed for the run: a source read 2.4 times an epoch appears as three copies of its
shards, the third read in part (each of its shards reads `take` samples, a fresh random subset each
epoch). Positions (epoch, copy, sample) stay unique, so the data position counts every source's
samples exactly, and a resume on any worker count continues the same ratio.
"""

from __future__ import annotations

from dataclasses import dataclass

from mmtrain.pipelines.config import InvalidValue, SourceConfig

WHOLE = -1  # a copy that reads its whole shard


@dataclass(frozen=True)
class MixturePlan:
    """Per shard copy of the run's shard list: which source and shard it reads, how much of it."""

    shard_of: tuple[int, ...]  # the index into the sources' shards, concatenated
    takes: tuple[int, ...]  # samples the copy reads each epoch; WHOLE for all of them
    copies: tuple[int, ...]  # which pass over its shard the copy is (0 = first): its own augmentation
    source_of: tuple[int, ...]
    names: tuple[str, ...]  # per source
    targets: tuple[int, ...]  # per source: samples per epoch

    @property
    def epoch_samples(self) -> int:
        return sum(self.targets)


def plan_mixture(counts: list[list[int]], weights: list[float], names: list[str]) -> MixturePlan:
    """The plan for sources whose shards hold `counts[source][shard]` samples."""
    totals = [sum(source) for source in counts]
    for name, total in zip(names, totals):
        if total == 0:
            raise ValueError(f"data.sources: {name} has no samples: check its shards")
    shares = [weight / sum(weights) for weight in weights]
    epoch = max(total / share for total, share in zip(totals, shares))
    targets = [round(share * epoch) for share in shares]
    shard_of, takes, copies, source_of = [], [], [], []
    first = 0
    for source, (shard_counts, target) in enumerate(zip(counts, targets)):
        passes, left = divmod(target, totals[source])
        for copy in range(passes + (left > 0)):
            for shard, count in enumerate(shard_counts):
                take = count if copy < passes else min(count, left)
                if take == 0:
                    continue
                left -= take if copy == passes else 0
                shard_of.append(first + shard)
                takes.append(WHOLE if take == count else take)
                copies.append(copy)
                source_of.append(source)
        first += len(shard_counts)
    return MixturePlan(tuple(shard_of), tuple(takes), tuple(copies), tuple(source_of), tuple(names), tuple(targets))


def source_names(sources: list[SourceConfig]) -> list[str]:
    names = [source.name or f"source{index}" for index, source in enumerate(sources)]
    if len(set(names)) != len(names):
        raise InvalidValue(f"data.sources: names {names} repeat; give each source its own name")
    return names


def per_source(values_by_shard: dict[int, int], plan: MixturePlan) -> dict[str, int]:
    """Shard-copy counts summed per source name."""
    totals = dict.fromkeys(plan.names, 0)
    for shard, value in values_by_shard.items():
        if 0 <= shard < len(plan.source_of):
            totals[plan.names[plan.source_of[shard]]] += value
    return totals
