"""A mixture's rows regrouped into batches that follow its weights to the row.

The stream delivers rows in read-task order: a shard of one source, then a shard of another. Over an
epoch the mixture plan (pipelines/mixture.py) makes each source's count exact, but within an epoch a
stretch of one source's shards would tilt the ratio by up to a shard. Here each batch takes from
every source what keeps its running count at its share of all rows handed out (largest remainder),
so after any batch every source is within one row of its share. Rows wait in memory until their
source's turn, at most `max_waiting` of them; past that (or when the stream ends) the batch is
filled from the sources that have rows, and later batches catch up. Numpy only: no Ray, no torch.
"""

from __future__ import annotations

from collections import deque
from typing import Iterable, Iterator

import numpy as np

from mmtrain.pipelines import contract, position


class SourceBlend:
    def __init__(self, source_of_shard: np.ndarray, shares: np.ndarray, batch_size: int, max_waiting: int = 0):
        self.source_of_shard = np.asarray(source_of_shard, np.int64)
        self.shares = np.asarray(shares, np.float64) / np.sum(shares)
        self.batch_size = batch_size
        self.max_waiting = max_waiting or 64 * batch_size
        self.handed_out = np.zeros(len(self.shares), np.int64)  # rows per source so far

    def __call__(self, batches: Iterable[dict]) -> Iterator[dict]:
        """Full batches of `batch_size` rows (a shorter tail at the stream's end is dropped, as the
        trainer drops it)."""
        waiting = [deque() for _ in self.shares]  # per source: (batch, row indices) in arrival order
        counts = np.zeros(len(self.shares), np.int64)
        stream = iter(batches)
        ended = False
        while True:
            wanted = self._wanted()
            while not ended and (counts < wanted).any() and counts.sum() < self.max_waiting:
                batch = next(stream, None)
                if batch is None:
                    ended = True
                    break
                self._route(batch, waiting, counts)
            if counts.sum() < self.batch_size:
                return
            taken = np.minimum(wanted, counts)
            short = self.batch_size - taken.sum()
            while short:  # the buffer is full or the stream ended: the sources with rows make it up
                spare = counts - taken
                source = int(np.argmax(spare))
                extra = min(short, int(spare[source]))
                taken[source] += extra
                short -= extra
            yield _take(waiting, taken)
            counts -= taken
            self.handed_out += taken

    def _wanted(self) -> np.ndarray:
        """Each source's rows in the next batch: slot by slot, the source furthest below its share
        of the rows handed out so far (a source ahead after a catch-up gets fewer until even)."""
        wanted = np.zeros(len(self.shares), np.int64)
        total = self.handed_out.sum()
        for slot in range(1, self.batch_size + 1):
            wanted[np.argmax(self.shares * (total + slot) - (self.handed_out + wanted))] += 1
        return wanted

    def _route(self, batch: dict, waiting: list[deque], counts: np.ndarray) -> None:
        positions = np.asarray(batch[contract.POSITION])
        first = positions.reshape(len(positions), -1)[:, 0]  # a packed row's samples share a shard
        sources = self.source_of_shard[position.unpack(first)[1]]
        for source in np.unique(sources):
            rows = np.flatnonzero(sources == source)
            waiting[source].append((batch, rows))
            counts[source] += len(rows)


def _take(waiting: list[deque], taken: np.ndarray) -> dict:
    """`taken[s]` of source s's oldest waiting rows, as one batch."""
    parts = []
    for source, count in enumerate(taken):
        while count:
            batch, rows = waiting[source][0]
            use = rows[:count]
            parts.append((batch, use))
            if len(use) == len(rows):
                waiting[source].popleft()
            else:
                waiting[source][0] = (batch, rows[count:])
            count -= len(use)
    names = parts[0][0].keys()
    return {name: np.concatenate([np.asarray(batch[name])[rows] for batch, rows in parts]) for name in names}
