"""Reading a table's rows (CSV, JSONL, Parquet) and naming image bytes' format: shared by convert's
caption tables and its conversation datasets."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Iterator

import pyarrow
import pyarrow.csv
import pyarrow.parquet
from PIL import Image

from mmtrain.pipelines import bad_samples


def table_rows(src: Path, fmt: str, max_line_bytes: int) -> tuple[Iterator[dict | str], list[str]]:
    """(rows, column names) of a table; JSONL is read line by line (a line over `max_line_bytes`
    is skipped), so one bad line is one skip."""
    if fmt == "jsonl":
        return jsonl_rows(src, max_line_bytes)
    load = pyarrow.csv.read_csv if fmt == "csv" else pyarrow.parquet.read_table
    try:
        table = load(str(src))
    except (OSError, ValueError, pyarrow.ArrowException) as err:
        raise ValueError(f"{src} cannot be read as {fmt} ({err})") from None
    return iter(table.to_pylist()), table.column_names


def jsonl_rows(src: Path, max_line_bytes: int) -> tuple[Iterator[dict | str], list[str]]:
    def rows():
        with open(src, "rb") as file:
            for line in iter(lambda: file.readline(max_line_bytes + 1), b""):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line) if len(line) <= max_line_bytes else None
                except (ValueError, RecursionError):
                    row = None
                yield row if isinstance(row, dict) else bad_samples.BAD_METADATA
                if len(line) > max_line_bytes and not line.endswith(b"\n"):  # drop the rest of that line
                    while (rest := file.readline(1 << 20)) and not rest.endswith(b"\n"):
                        pass

    first = next((row for row in rows() if isinstance(row, dict)), {})
    return rows(), list(first)


def ext_of(suffix: str) -> str:
    ext = suffix.lower().lstrip(".")
    return "jpg" if ext == "jpeg" else ext


def sniff_ext(data: bytes) -> str:
    try:
        return ext_of(Image.open(io.BytesIO(data)).format or "jpg")
    except Exception:  # bad bytes still get written; the pipeline counts them as not_an_image
        return "jpg"
