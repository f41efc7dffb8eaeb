"""A Ray Data datasource for WebDataset shards that survives bad tars and bad samples.

It reuses Ray's file-based machinery (path listing, s3://, per-epoch file shuffling) and
replaces only the per-file parsing. Bad samples are emitted as rows with `bad_reason` set, so
the first map stage can count them in one place and drop them.

Each row also carries `augment_seed`, a function of (seed, execution, shard name, position in the
shard): the decode stage draws its random crops and flips from it, so the same seed gives the
same augmentations run to run, and each execution (epoch) of the dataset different ones.
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Iterator

import pyarrow as pa
from ray.data.datasource import FileBasedDatasource

from pipelines.tar_samples import Bad, iter_records

logger = logging.getLogger("mmtrain.data")
LOGGED_PER_SHARD = 5  # bad samples named in the log per shard; the rest are counted

RAW_SCHEMA = pa.schema([
    ("key", pa.string()),
    ("image_bytes", pa.binary()),
    ("caption", pa.string()),
    ("label", pa.int64()),
    ("conversation", pa.string()),
    ("bad_reason", pa.string()),  # "" for a usable sample
    ("augment_seed", pa.int64()),  # -1: no seed, draw fresh randomness
])


class ShardDatasource(FileBasedDatasource):
    _FILE_EXTENSIONS = ["tar"]

    def __init__(self, paths, rows_per_block: int = 256, seed: int | None = None, **file_based_kwargs):
        super().__init__(paths, **file_based_kwargs)
        self._rows_per_block = rows_per_block
        self._seed = seed
        self._execution = 0

    def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
        # Ray counts executions of the same dataset (one per epoch) in the data context; the read
        # tasks made here carry this count to _read_stream.
        self._execution = data_context._execution_idx if data_context is not None else 0
        return super().get_read_tasks(parallelism, per_task_row_limit=per_task_row_limit, data_context=data_context)

    def _read_stream(self, stream, path: str) -> Iterator[pa.Table]:
        first_seed = _shard_seed(self._seed, self._execution, os.path.basename(path))
        yield from shard_tables(stream, path, self._rows_per_block, first_seed)


def shard_tables(stream, path: str, rows_per_block: int, first_seed: int = -1) -> Iterator[pa.Table]:
    """One shard's rows (RAW_SCHEMA) in blocks; bad samples are rows with `bad_reason` set, and the
    first few are named in the log with the shard and byte offset."""
    columns = {name: [] for name in RAW_SCHEMA.names}
    bad = 0
    for index, record in enumerate(iter_records(stream)):
        seed = -1 if first_seed < 0 else (first_seed + index) % 2**62
        if isinstance(record, Bad):
            bad += 1
            if bad <= LOGGED_PER_SHARD:
                logger.warning("%s: skipped %s at byte %d: %s", path, repr(record.key) if record.key else "a stretch",
                               record.offset, record.reason)
            row = (record.key, b"", "", -1, "[]", record.reason, seed)
        else:
            row = (record.key, record.image_bytes, record.caption, record.label, record.conversation, "", seed)
        for name, value in zip(RAW_SCHEMA.names, row):
            columns[name].append(value)
        if len(columns["key"]) >= rows_per_block:
            yield pa.table(columns, schema=RAW_SCHEMA)
            columns = {name: [] for name in RAW_SCHEMA.names}
    if columns["key"]:
        yield pa.table(columns, schema=RAW_SCHEMA)
    if bad > LOGGED_PER_SHARD:
        logger.warning("%s: %d more skipped (counted by reason in the run's data/bad/* metrics)", path,
                       bad - LOGGED_PER_SHARD)


def _shard_seed(seed: int | None, execution: int, shard_name: str) -> int:
    if seed is None:
        return -1
    digest = hashlib.blake2b(f"{seed}/{execution}/{shard_name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 2
