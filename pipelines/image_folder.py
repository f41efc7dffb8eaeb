"""A folder of image files as a Ray Data source with the shards' row schema, so batch inference runs
the same decode over loose images as over shards (`mmtrain classify --data photos/`).

Keys are paths relative to the folder. Images in a subfolder named after a class carry that class
as their label (torchvision's ImageFolder layout), so accuracy can be measured on labelled folders.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pyarrow as pa
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from mmtrain.pipelines import bad_samples
from mmtrain.pipelines.contained_files import read_contained
from mmtrain.pipelines.datasource import RAW_SCHEMA, ShardRead, shard_tables
from mmtrain.pipelines.images import IMAGE_SUFFIXES
from mmtrain.pipelines.sources import SHARD_SUFFIXES
from mmtrain.pipelines.tar_samples import MAX_MEMBER_BYTES, Bad, Record

FILES_PER_TASK = 256


def image_files(folder: str | Path) -> list[str]:
    """Image files under a local folder, relative to it, sorted; [] where it holds shards instead."""
    folder = Path(folder)
    if "://" in str(folder) or not folder.is_dir() or any(p.name.endswith(SHARD_SUFFIXES) for p in folder.iterdir()):
        return []
    return sorted(
        str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )


def folder_labels(files: list[str], classes: list[str]) -> list[int]:
    """The class index of each file's parent folder name, or -1."""
    index = {name: i for i, name in enumerate(classes)}
    return [index.get(Path(name).parent.name, -1) for name in files]


class ImageFolderDatasource(Datasource):
    """One read task per FILES_PER_TASK files; each chunk plays the part of a shard (its number is
    the rows' shard, a file's place in it their sample number)."""

    def __init__(self, folder: str | Path, files: list[str], labels: list[int], rows_per_block: int = 64):
        self._folder, self._files, self._labels = str(folder), files, labels
        self._rows_per_block = rows_per_block

    def get_name(self) -> str:
        return "ReadImageFolder"

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def chunks(self) -> list[range]:
        return [
            range(start, min(start + FILES_PER_TASK, len(self._files)))
            for start in range(0, len(self._files), FILES_PER_TASK)
        ]

    def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None) -> list[ReadTask]:
        folder, files, labels, rows = self._folder, self._files, self._labels, self._rows_per_block

        def task(number: int, chunk: range) -> ReadTask:
            metadata = BlockMetadata(num_rows=len(chunk), size_bytes=None, exec_stats=None, input_files=None)
            return ReadTask(
                lambda: read_chunk(folder, [files[i] for i in chunk], [labels[i] for i in chunk], number, rows),
                metadata,
                schema=RAW_SCHEMA,
                per_task_row_limit=per_task_row_limit,
            )

        return [task(number, chunk) for number, chunk in enumerate(self.chunks())]


def read_chunk(
    folder: str, names: list[str], labels: list[int], number: int, rows_per_block: int
) -> Iterator[pa.Table]:
    def records():
        root = Path(folder).resolve()
        for index, (name, label) in enumerate(zip(names, labels)):
            try:
                data = read_contained(Path(folder) / name, root, MAX_MEMBER_BYTES, bad_samples.OVERSIZED_MEMBER)
            except OSError:
                data = bad_samples.UNREADABLE_FILE
            if isinstance(data, str):
                yield Bad(name, data, 0, index)
                continue
            yield Record(name, data, caption="", label=label, index=index)

    yield from shard_tables(records(), ShardRead(folder, number, 0, None, 0), rows_per_block)
