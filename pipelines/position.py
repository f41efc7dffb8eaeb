"""Where a run is in its data: which samples of each epoch were trained on, and which were bad.

Every training row carries a `position`, one int64 packing (epoch, shard, sample number): the
sample number is the sample's place in its shard's file order (tar_samples.SampleNumbering), so it
names the same sample on every read, whatever was skipped or shuffled. A checkpoint stores a
DataPosition; a resumed run reads each (epoch, shard) again, seeking past the samples it lists,
so every sample of an epoch is trained on once, whatever the kill point and worker count.
"""

from __future__ import annotations

import base64
import zlib
from dataclasses import dataclass, field

import numpy as np

EPOCH_BITS, SHARD_BITS, INDEX_BITS = 16, 24, 23  # 63 bits: the position stays a positive int64
MAX_EPOCHS, MAX_SHARDS, MAX_SAMPLES_PER_SHARD = 1 << EPOCH_BITS, 1 << SHARD_BITS, 1 << INDEX_BITS


def pack(epoch, shard, index) -> np.ndarray:
    """int64 positions from (epoch, shard, sample number); each may be an array."""
    epoch, shard, index = (np.asarray(v, dtype=np.int64) for v in (epoch, shard, index))
    return (epoch << (SHARD_BITS + INDEX_BITS)) | (shard << INDEX_BITS) | index


def unpack(positions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(epoch, shard, sample number) arrays from int64 positions."""
    positions = np.asarray(positions, dtype=np.int64)
    return (
        positions >> (SHARD_BITS + INDEX_BITS),
        (positions >> INDEX_BITS) & (MAX_SHARDS - 1),
        positions & (MAX_SAMPLES_PER_SHARD - 1),
    )


@dataclass(frozen=True)
class BadSample:
    """A bad sample (index >= 0) or a bad stretch of a shard (index -1, told apart by its byte offset).
    The same bad input read twice in an epoch (a resume) is one entry: it is counted once."""

    epoch: int
    shard: int
    index: int
    offset: int
    reason: str

    @property
    def identity(self) -> tuple:
        return (
            (self.epoch, self.shard, self.index)
            if self.index >= 0
            else (self.epoch, self.shard, -1, self.offset, self.reason)
        )


@dataclass
class DataPosition:
    """Consumed samples per epoch and shard (bitmaps), bad samples, and each shard's sample count
    once a read has counted it. Saved in every checkpoint as data_position.json.

    An epoch every shard of which is done keeps counts only (`finished`): its bitmaps (a byte per
    sample in memory) and its bad samples' identities are what a resumed read of that epoch would
    need, and none is left to read. So a long run holds the epochs in flight, not all of them."""

    consumed: dict[int, dict[int, np.ndarray]] = field(default_factory=dict)  # epoch -> shard -> bool[n]
    repeated: dict[int, int] = field(default_factory=dict)  # epoch -> samples trained on more than once
    bad: dict[tuple, BadSample] = field(default_factory=dict)
    samples_per_shard: dict[int, int] = field(default_factory=dict)
    finished: dict[int, FinishedEpoch] = field(default_factory=dict)  # epoch -> its counts
    _bad_in: dict[tuple[int, int], list[int]] = field(default_factory=dict, repr=False)  # (epoch, shard) -> indices

    def add_consumed(self, positions: np.ndarray) -> None:
        """Mark these positions trained on; any seen before (or twice here) counts as repeated."""
        epochs, shards, indices = unpack(positions)
        for epoch in np.unique(epochs):
            in_epoch = epochs == epoch
            for shard in np.unique(shards[in_epoch]):
                chosen = indices[in_epoch & (shards == shard)]
                if int(epoch) in self.finished:  # every sample of it was trained on already
                    self.repeated[int(epoch)] = self.repeated.get(int(epoch), 0) + len(chosen)
                    continue
                bitmap = self._bitmap(int(epoch), int(shard), int(chosen.max()) + 1)
                unique, counts = np.unique(chosen, return_counts=True)
                repeats = int((counts - 1).sum() + bitmap[unique].sum())
                if repeats:
                    self.repeated[int(epoch)] = self.repeated.get(int(epoch), 0) + repeats
                bitmap[unique] = True

    def add_bad(self, samples) -> None:
        for sample in samples:
            if sample.epoch in self.finished or sample.identity in self.bad:
                continue
            self.bad[sample.identity] = sample
            if sample.index >= 0:
                self._bad_in.setdefault((sample.epoch, sample.shard), []).append(sample.index)

    def skip(self, epoch: int, shard: int) -> np.ndarray:
        """bool[n]: the samples of (epoch, shard) a resumed read passes over (trained on, or bad)."""
        bitmap = self.consumed.get(epoch, {}).get(shard, np.zeros(0, bool)).copy()
        bad = self._bad_in.get((epoch, shard))
        if bad:
            bitmap = _grown(bitmap, max(bad) + 1)
            bitmap[bad] = True
        return bitmap

    def shard_done(self, epoch: int, shard: int, take: int = -1) -> bool:
        """True when every sample of the shard (or, with take >= 0, that many of them: a mixture's
        partial copy) is known consumed or bad for `epoch`: nothing is left to read."""
        if epoch in self.finished:
            return True
        if take >= 0:
            return int(self.skip(epoch, shard).sum()) >= take
        count = self.samples_per_shard.get(shard)
        return count is not None and int(self.skip(epoch, shard)[:count].sum()) >= count

    def finish_epoch(self, epoch: int) -> None:
        """Keep only the counts of an epoch whose every shard is done (the caller knows it is)."""
        bad = [self.bad.pop(key) for key in [k for k, s in self.bad.items() if s.epoch == epoch]]
        self.finished[epoch] = FinishedEpoch(
            consumed={shard: int(bitmap.sum()) for shard, bitmap in self.consumed.pop(epoch, {}).items()},
            bad=_count_bad(bad),
        )
        self._bad_in = {key: indices for key, indices in self._bad_in.items() if key[0] != epoch}

    def consumed_in(self, epoch: int, shard: int) -> int:
        """Samples of (epoch, shard) trained on (each once; repeats are counted apart)."""
        if epoch in self.finished:
            return self.finished[epoch].consumed.get(shard, 0)
        return int(self.consumed.get(epoch, {}).get(shard, np.zeros(0, bool)).sum())

    def consumed_count(self, epoch: int) -> int:
        if epoch in self.finished:
            return sum(self.finished[epoch].consumed.values())
        return int(sum(bitmap.sum() for bitmap in self.consumed.get(epoch, {}).values()))

    def consumed_per_shard(self) -> dict[int, int]:
        """Samples trained on per shard, over every epoch."""
        totals: dict[int, int] = {}
        for epoch in self.epochs():
            for shard, count in self.consumed_by_shard(epoch).items():
                totals[shard] = totals.get(shard, 0) + count
        return totals

    def bad_per_shard(self) -> dict[int, int]:
        totals: dict[int, int] = {}
        for sample in self.bad.values():
            totals[sample.shard] = totals.get(sample.shard, 0) + 1
        for finished in self.finished.values():
            for (shard, _), count in finished.bad.items():
                totals[shard] = totals.get(shard, 0) + count
        return totals

    def total_consumed(self) -> int:
        return sum(self.consumed_count(epoch) for epoch in self.epochs())

    def bad_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for sample in self.bad.values():
            counts[sample.reason] = counts.get(sample.reason, 0) + 1
        for finished in self.finished.values():
            for (_, reason), count in finished.bad.items():
                counts[reason] = counts.get(reason, 0) + count
        return counts

    def epochs(self) -> list[int]:
        """The epochs with any sample trained on, finished ones included."""
        return sorted(set(self.consumed) | set(self.finished))

    def consumed_by_shard(self, epoch: int) -> dict[int, int]:
        """Samples of `epoch` trained on, per shard."""
        if epoch in self.finished:
            return dict(self.finished[epoch].consumed)
        return {shard: int(bitmap.sum()) for shard, bitmap in self.consumed.get(epoch, {}).items()}

    def _bitmap(self, epoch: int, shard: int, size: int) -> np.ndarray:
        shards = self.consumed.setdefault(epoch, {})
        shards[shard] = _grown(shards.get(shard, np.zeros(0, bool)), size)
        return shards[shard]

    def to_json(self) -> dict:
        return {
            "format": 2,
            "consumed": {
                str(e): {str(s): _encode(b) for s, b in shards.items()} for e, shards in self.consumed.items()
            },
            "consumed_counts": {str(e): self.consumed_count(e) for e in self.epochs()},
            "repeated": {str(e): n for e, n in self.repeated.items()},
            "bad": [[s.epoch, s.shard, s.index, s.offset, s.reason] for s in self.bad.values()],
            "samples_per_shard": {str(s): n for s, n in self.samples_per_shard.items()},
            "finished": {str(e): finished.to_json() for e, finished in self.finished.items()},
        }

    @classmethod
    def from_json(cls, data: dict) -> "DataPosition":
        position = cls(
            consumed={
                int(e): {int(s): _decode(b) for s, b in shards.items()} for e, shards in data["consumed"].items()
            },
            repeated={int(e): n for e, n in data.get("repeated", {}).items()},
            samples_per_shard={int(s): n for s, n in data.get("samples_per_shard", {}).items()},
            finished={int(e): FinishedEpoch.from_json(f) for e, f in data.get("finished", {}).items()},
        )
        position.add_bad(BadSample(*row) for row in data.get("bad", []))
        return position


@dataclass(frozen=True)
class FinishedEpoch:
    """What is kept of a finished epoch: samples trained on per shard, bad ones per (shard, reason)."""

    consumed: dict[int, int]
    bad: dict[tuple[int, str], int]

    def to_json(self) -> dict:
        return {
            "consumed": {str(s): n for s, n in self.consumed.items()},
            "bad": [[shard, reason, n] for (shard, reason), n in self.bad.items()],
        }

    @classmethod
    def from_json(cls, data: dict) -> "FinishedEpoch":
        if not isinstance(data, dict):
            raise ValueError(f"a finished epoch's counts must be a mapping, got {type(data).__name__}")
        consumed = {int(s): _count(n) for s, n in data.get("consumed", {}).items()}
        bad = {}
        for row in data.get("bad", []):
            if not (isinstance(row, list) and len(row) == 3 and isinstance(row[1], str)):
                raise ValueError(f"a finished epoch's bad count must be [shard, reason, count], got {row!r:.80}")
            bad[(int(row[0]), row[1])] = _count(row[2])
        return cls(consumed, bad)


def _count(value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_SAMPLES_PER_SHARD:
        raise ValueError(f"a sample count must be an integer from 0 to {MAX_SAMPLES_PER_SHARD}, got {value!r:.40}")
    return value


def _count_bad(samples: list[BadSample]) -> dict[tuple[int, str], int]:
    counts: dict[tuple[int, str], int] = {}
    for sample in samples:
        counts[(sample.shard, sample.reason)] = counts.get((sample.shard, sample.reason), 0) + 1
    return counts


def _grown(bitmap: np.ndarray, size: int) -> np.ndarray:
    if len(bitmap) >= size:
        return bitmap
    grown = np.zeros(max(size, 2 * len(bitmap)), bool)
    grown[: len(bitmap)] = bitmap
    return grown


def _encode(bitmap: np.ndarray) -> str:
    """A bitmap as base64 of its zlib-compressed bits: a finished epoch (all ones) takes a few bytes."""
    return f"{len(bitmap)}:" + base64.b64encode(zlib.compress(np.packbits(bitmap).tobytes(), 6)).decode()


def _decode(text: str) -> np.ndarray:
    """The bitmap `_encode` wrote; ValueError for anything else (it comes from a checkpoint file),
    its size bounded before any byte is decompressed."""
    if not isinstance(text, str):
        raise ValueError(f"a consumed-samples bitmap must be text, got {type(text).__name__}")
    size_text, _, data = text.partition(":")
    size = int(size_text) if size_text.isdecimal() and len(size_text) < 12 else -1
    if not 0 <= size <= MAX_SAMPLES_PER_SHARD:
        raise ValueError(
            f"a consumed-samples bitmap gives its size as {size_text[:20]!r}: expected 0 to {MAX_SAMPLES_PER_SHARD}"
        )
    packed_bytes = (size + 7) // 8
    inflater = zlib.decompressobj()
    raw = inflater.decompress(base64.b64decode(data, validate=True), packed_bytes)
    bits = np.unpackbits(np.frombuffer(raw, np.uint8))
    return np.pad(bits[:size], (0, max(0, size - len(bits)))).astype(bool)
