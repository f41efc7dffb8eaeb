"""A Ray Data datasource that reads WebDataset shards for every epoch of a run in one execution.

One read task per (epoch, shard), in epoch order (a run of more than MAX_READ_TASKS reads gives
each task several shards of an epoch, read in turn, so that planning stays bounded); within an
epoch the shard order, and within a shard the sample order (a seeded shuffle buffer), are
functions of (seed, epoch). So one execution, and one pool of read/decode/tokenize actors, serves
the whole run, and the trainer sees epoch boundaries only in the rows' positions (position.py).

A read task asks the run's SampleLedger which samples of its (epoch, shard) were already trained on
or found bad (a resumed run) and seeks past them. Bad samples and bad stretches of a shard are
emitted as rows with `bad_reason` set, so the first map stage counts them in one place and drops them.

Each row carries `augment_seed`, a function of (seed, epoch, shard name, sample number): the decode
stage draws its random crops and flips from it, so a sample gets the same augmentation in an epoch
whether it is read in a fresh run or after a resume.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import ray
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from mmtrain.pipelines import bad_samples
from mmtrain.pipelines.mixture import WHOLE, MixturePlan
from mmtrain.pipelines.position import MAX_EPOCHS, MAX_SAMPLES_PER_SHARD, MAX_SHARDS
from mmtrain.pipelines.tar_samples import Bad, Record, TextLimits, iter_records

logger = logging.getLogger("mmtrain.data")
LOGGED_PER_SHARD = 5  # bad samples named in the log per shard; the rest are counted
MAX_READ_TASKS = 20_000  # a run's planned read tasks (each a Python object in the driver)

RAW_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("image_bytes", pa.binary()),  # the first image; b"" for a text-only sample
        ("more_images", pa.list_(pa.binary())),  # a multi-image sample's others, in placeholder order
        ("caption", pa.string()),
        ("label", pa.int64()),
        ("conversation", pa.string()),
        ("bad_reason", pa.string()),  # "" for a usable sample
        ("augment_seed", pa.int64()),  # -1: no seed, draw fresh randomness
        ("epoch", pa.int32()),
        ("shard", pa.int32()),  # the shard's place in the run's shard list
        ("index", pa.int64()),  # the sample's number in its shard; -1 for a bad stretch of the shard
        ("offset", pa.int64()),  # byte offset of the sample's first header
    ]
)


@dataclass(frozen=True)
class ShardRead:
    """What one read task reads: a shard, for one epoch, in what order."""

    path: str
    shard: int
    epoch: int
    seed: Optional[int]  # None: file order and unseeded augmentation (eval, or data.shuffle_seed=null)
    shuffle_buffer: int  # samples held for the in-shard shuffle; 0 = file order
    take: int = WHOLE  # a mixture's partial copy: samples this epoch reads of the shard (a random subset)
    copy: int = 0  # a mixture's pass over the shard (pipelines/mixture.py): each draws its own augmentation


class EpochShardDatasource(Datasource):
    def __init__(
        self,
        paths: list[str],
        filesystem: pafs.FileSystem,
        *,
        epochs: int = 1,
        seed: Optional[int] = None,
        shuffle_buffer: int = 0,
        rows_per_block: int = 256,
        ledger=None,
        limits: TextLimits = TextLimits(),
        mix: Optional[MixturePlan] = None,
    ):
        if len(paths) >= MAX_SHARDS or epochs > MAX_EPOCHS:
            raise ValueError(
                f"{len(paths)} shards x {epochs} epochs: positions hold at most {MAX_SHARDS - 1} "
                f"shards and {MAX_EPOCHS} epochs"
            )
        self._paths, self._filesystem = list(paths), filesystem
        self._epochs = epochs
        self._seed, self._shuffle_buffer = seed, shuffle_buffer
        self._rows_per_block, self._ledger = rows_per_block, ledger
        self._limits = limits
        self._takes = mix.takes if mix is not None else (WHOLE,) * len(paths)
        self._copies = mix.copies if mix is not None else (0,) * len(paths)
        self._sources = np.asarray(mix.source_of) if mix is not None else None

    def get_name(self) -> str:
        return "ReadShards"

    def estimate_inmemory_data_size(self) -> Optional[int]:
        return None

    def read_orders(self) -> list[np.ndarray]:
        """Each epoch's shard order (int32 shard numbers): the run's reads, epoch by epoch, held as
        numbers (4 bytes a read), the ShardReads made in the read tasks."""
        return [np.asarray(self._order(epoch), dtype=np.int32) for epoch in range(self._epochs)]

    def _order(self, epoch: int):
        """An epoch's shard order: a permutation by (seed, epoch). A mixture's sources are spread
        evenly over the epoch (each source's copies in random order, at random offsets within even
        slots), so the stream carries every source throughout and the batch blend waits little."""
        if self._seed is None:
            return range(len(self._paths))
        rng = np.random.default_rng([self._seed, epoch])
        if self._sources is None:
            return rng.permutation(len(self._paths))
        times = np.empty(len(self._paths))
        for source in np.unique(self._sources):
            members = rng.permutation(np.flatnonzero(self._sources == source))
            times[members] = (np.arange(len(members)) + rng.random(len(members))) / len(members)
        return np.argsort(times, kind="stable")

    def reads_per_task(self) -> int:
        """1 (a task per shard and epoch, as Ray Data balances best) until the run has more reads
        than MAX_READ_TASKS; then each task reads that many shards of an epoch in turn, so planning
        stays bounded (100,000 shards x 10 epochs: 20,000 tasks, not 1,000,000)."""
        return max(1, -(-len(self._paths) * self._epochs // MAX_READ_TASKS))

    def num_read_tasks(self) -> int:
        return self._epochs * -(-len(self._paths) // self.reads_per_task())

    def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None) -> list[ReadTask]:
        filesystem, rows_per_block, ledger, limits = self._filesystem, self._rows_per_block, self._ledger, self._limits
        size = self.reads_per_task()
        # Several shards per task: the shard list travels once, through the object store.
        shared = ray.put((self._paths, self._takes, self._copies)) if size > 1 else None
        seed, buffer = self._seed, self._shuffle_buffer

        def task(epoch: int, shards: np.ndarray) -> ReadTask:
            if shared is None:
                i = int(shards[0])
                reads = [ShardRead(self._paths[i], i, epoch, seed, buffer, self._takes[i], self._copies[i])]
                make, files = (lambda: reads), (self._paths[i],)
            else:
                make, files = (lambda: _shard_reads(ray.get(shared), shards, epoch, seed, buffer)), None
            metadata = BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None, input_files=files)
            return ReadTask(
                lambda: (
                    table for read in make() for table in read_shard(read, filesystem, rows_per_block, ledger, limits)
                ),
                metadata,
                schema=RAW_SCHEMA,
                per_task_row_limit=per_task_row_limit,
            )

        return [
            task(epoch, order[start : start + size])
            for epoch, order in enumerate(self.read_orders())
            for start in range(0, len(order), size)
        ]


def _shard_reads(shared: tuple, shards: np.ndarray, epoch: int, seed: Optional[int], buffer: int) -> list[ShardRead]:
    paths, takes, copies = shared
    return [ShardRead(paths[i], int(i), epoch, seed, buffer, takes[i], copies[i]) for i in shards.tolist()]


def read_shard(
    read: ShardRead, filesystem: pafs.FileSystem, rows_per_block: int, ledger=None, limits: TextLimits = TextLimits()
) -> Iterator[pa.Table]:
    """One (epoch, shard)'s rows, passing over what the ledger says this epoch already used; a
    mixture's partial copy stops once its `take` samples of the epoch are read (a resumed read
    counts those already used)."""
    skip, done = ray.get(ledger.plan.remote(read.epoch, read.shard, read.take)) if ledger is not None else (None, False)
    if done:  # every sample of this shard was trained on (or bad) this epoch: nothing to open
        return
    with filesystem.open_input_file(read.path) as stream:  # random access: skipped samples are sought past
        records = iter_records(stream, skip=_Mask(skip) if skip is not None and skip.any() else None, limits=limits)
        if read.seed is not None and read.shuffle_buffer:
            rng = np.random.default_rng([read.seed, read.epoch, read.shard])
            records = shuffled(records, read.shuffle_buffer, rng)
        if read.take != WHOLE:  # the shard's count is not learned from a read that stops early
            used = int(skip.sum()) if skip is not None else 0
            yield from shard_tables(_first(records, read.take - used), read, rows_per_block)
            return
        yield from shard_tables(records, read, rows_per_block, on_count=ledger)


def _first(records: Iterable[Record | Bad], samples: int) -> Iterator[Record | Bad]:
    """Records up to the `samples`-th sample (a bad stretch of the shard is no sample)."""
    for record in records:
        if samples <= 0:
            return
        samples -= record.index >= 0
        yield record


class _Mask:
    """`index in mask` for a bool bitmap that may be shorter than the shard."""

    def __init__(self, bitmap: np.ndarray):
        self._bitmap = bitmap

    def __contains__(self, index: int) -> bool:
        return index < len(self._bitmap) and bool(self._bitmap[index])


def shuffled(records: Iterable[Record | Bad], buffer_size: int, rng: np.random.Generator) -> Iterator[Record | Bad]:
    """A shuffle buffer (webdataset's): hold up to `buffer_size` samples, emit a random one as each
    new one arrives. Bad records pass straight through: they are only counted."""
    buffer: list[Record] = []
    for record in records:
        if isinstance(record, Bad):
            yield record
            continue
        if len(buffer) < buffer_size:
            buffer.append(record)
            continue
        slot = int(rng.integers(buffer_size))
        yield buffer[slot]
        buffer[slot] = record
    order = rng.permutation(len(buffer))
    yield from (buffer[i] for i in order)


def shard_tables(
    records: Iterable[Record | Bad], read: ShardRead, rows_per_block: int, on_count=None
) -> Iterator[pa.Table]:
    """A shard's records as RAW_SCHEMA blocks; the first few bad ones are named in the log with the
    shard and byte offset. `on_count` (the ledger) learns the shard's sample count at the end."""
    columns = {name: [] for name in RAW_SCHEMA.names}
    first_seed = _shard_seed(read.seed, read.epoch, os.path.basename(read.path), read.copy)
    bad, count = 0, 0
    for record in records:
        seed = -1 if first_seed < 0 or record.index < 0 else (first_seed + record.index) % 2**62
        if record.index >= MAX_SAMPLES_PER_SHARD:  # no position can name it: skipped and counted, with its byte offset
            record = Bad(record.key, bad_samples.PARSE_ERROR, record.offset)
        count = max(count, record.index + 1)
        if isinstance(record, Bad):
            bad += 1
            if bad <= LOGGED_PER_SHARD:
                logger.warning(
                    "%s: skipped %s at byte %d: %s",
                    read.path,
                    repr(record.key) if record.key else "a stretch",
                    record.offset,
                    record.reason,
                )
            row = (record.key, b"", [], "", -1, "[]", record.reason, seed)
        else:
            row = (
                *(record.key, record.image_bytes, list(record.more_images)),
                *(record.caption, record.label, record.conversation, "", seed),
            )
        for name, value in zip(RAW_SCHEMA.names, row + (read.epoch, read.shard, record.index, record.offset)):
            columns[name].append(value)
        if len(columns["key"]) >= rows_per_block:
            yield pa.table(columns, schema=RAW_SCHEMA)
            columns = {name: [] for name in RAW_SCHEMA.names}
    if columns["key"]:
        yield pa.table(columns, schema=RAW_SCHEMA)
    if bad > LOGGED_PER_SHARD:
        logger.warning(
            "%s: %d more skipped (counted by reason in the run's data/bad/* metrics)", read.path, bad - LOGGED_PER_SHARD
        )
    if on_count is not None and count:
        on_count.shard_counted.remote(read.shard, count)


def _shard_seed(seed: int | None, epoch: int, shard_name: str, copy: int = 0) -> int:
    if seed is None:
        return -1
    name = f"{shard_name}#{copy}" if copy else shard_name  # a mixture's second pass draws other crops
    digest = hashlib.blake2b(f"{seed}/{epoch}/{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 2
