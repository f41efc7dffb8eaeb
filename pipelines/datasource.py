"""A Ray Data datasource for WebDataset shards that survives bad tars and bad samples.

It reuses Ray's file-based machinery (path listing, s3://, per-epoch file shuffling) and
replaces only the per-file parsing. Bad samples are emitted as rows with `bad_reason` set, so
the first map stage can count them in one place and drop them.
"""

from __future__ import annotations

from typing import Iterator

import pyarrow as pa
from ray.data.datasource import FileBasedDatasource

from pipelines.tar_samples import iter_raw_samples, to_record

RAW_SCHEMA = pa.schema([
    ("key", pa.string()),
    ("image_bytes", pa.binary()),
    ("caption", pa.string()),
    ("label", pa.int64()),
    ("conversation", pa.string()),
    ("bad_reason", pa.string()),  # "" for a usable sample
])


class ShardDatasource(FileBasedDatasource):
    _FILE_EXTENSIONS = ["tar"]

    def __init__(self, paths, rows_per_block: int = 256, **file_based_kwargs):
        super().__init__(paths, **file_based_kwargs)
        self._rows_per_block = rows_per_block

    def _read_stream(self, stream, path: str) -> Iterator[pa.Table]:
        columns = {name: [] for name in RAW_SCHEMA.names}
        for raw in iter_raw_samples(stream):
            record = to_record(raw)
            if isinstance(record, str):
                row = (raw.key, b"", "", -1, "[]", record)
            else:
                row = (record.key, record.image_bytes, record.caption, record.label, record.conversation, "")
            for name, value in zip(RAW_SCHEMA.names, row):
                columns[name].append(value)
            if len(columns["key"]) >= self._rows_per_block:
                yield pa.table(columns, schema=RAW_SCHEMA)
                columns = {name: [] for name in RAW_SCHEMA.names}
        if columns["key"]:
            yield pa.table(columns, schema=RAW_SCHEMA)
