"""Convert a user's images and captions into WebDataset shards.

Formats:
  folder   images with sidecar captions: cat.jpg + cat.txt (+ optional cat.json)
  csv      a table with an image column (path or bytes) and a caption column; also jsonl, parquet
  idx      MNIST-style IDX files (train-images-idx3-ubyte[.gz] + labels, t10k-* as the test split)
           with class names from --classes and captions from --template

With `resize`, images whose shorter side is larger are scaled down to it and stored as JPEG
(pipelines/resize.py), on `workers` processes; the rest keep their original bytes.
"""

from __future__ import annotations

import gzip
import io
import itertools
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
from PIL import Image

from pipelines.images import BadSample
from pipelines.resize import shrink
from pipelines.shard_writer import ShardWriter, encode_json, encode_text, write_manifest
from pipelines import bad_samples
from pipelines.tar_samples import IMAGE_EXTENSIONS, metadata_problem

FORMATS = ("folder", "csv", "jsonl", "parquet", "idx")
DEFAULT_TEMPLATES = (
    "a photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a black and white photo of a {}.",
    "a low resolution photo of a {}.",
    "a photo of the {}.",
)
IDX_SPLITS = {"train": ("train",), "test": ("t10k", "test")}
IMAGE_COLUMNS = ("image", "image_path", "filepath", "file", "path", "img")
CAPTION_COLUMNS = ("caption", "text", "title", "label_text")


@dataclass
class Example:
    split: str
    key: str
    image: bytes
    image_ext: str
    caption: str
    meta: Optional[dict] = None


@dataclass(frozen=True)
class ConvertOptions:
    format: str
    split: str = "train"
    classes_file: Optional[Path] = None
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    image_column: str = ""
    caption_column: str = ""
    label_column: str = ""
    shard_samples: int = 10_000
    shard_bytes: int = 256 * 1024 * 1024
    seed: int = 0
    resize: int = 0  # scale images down to this shorter side (JPEG); 0 = store the bytes as given
    quality: int = 95  # JPEG quality of resized images
    workers: int = 0  # processes that resize; 0 = one per core
    max_pixels: int = 64_000_000  # images over this (read from the header) are skipped, not decoded


def convert(src: Path, out_dir: Path, options: ConvertOptions,
            progress: Callable[[int], None] | None = None) -> dict:
    """Write shards for every example `src` yields; returns the manifest."""
    if options.format not in FORMATS:
        raise ValueError(f"unknown format {options.format!r}; choose one of {', '.join(FORMATS)}")
    src, out_dir = Path(src), Path(out_dir)
    if not src.exists():
        raise ValueError(f"source {src} does not exist")
    for template in options.templates:
        if "{}" not in template:
            raise ValueError(f"caption template {template!r} needs a {{}} where the class name goes")
    if options.resize < 0:
        raise ValueError(f"--resize {options.resize}: give a shorter side in pixels, or 0 to keep images as they are")
    if not 1 <= options.quality <= 100:
        raise ValueError(f"--quality {options.quality}: JPEG quality goes from 1 to 100 (default 95)")
    reader = {
        "folder": _read_folder, "csv": _read_table, "jsonl": _read_table,
        "parquet": _read_table, "idx": _read_idx,
    }[options.format]
    writers: dict[str, ShardWriter] = {}
    skipped: dict[str, int] = {}
    extra: dict = {"source": str(src), "format": options.format}
    items = reader(src, options, extra)
    if options.resize:
        resized = extra["resize"] = {"shorter_side": options.resize, "quality": options.quality, "resized": 0}
        items = _shrink_all(items, options, resized)
    for item in items:
        if isinstance(item, str):  # a skipped input, by reason
            skipped[item] = skipped.get(item, 0) + 1
            continue
        problem = metadata_problem(item.meta) if item.meta is not None else None
        if problem:  # the reader would refuse it: skip it here, counted, rather than write it
            skipped[problem] = skipped.get(problem, 0) + 1
            continue
        writer = writers.get(item.split)
        if writer is None:
            writer = writers[item.split] = ShardWriter(
                out_dir, item.split, max_samples=options.shard_samples, max_bytes=options.shard_bytes)
        sample = {"__key__": item.key, item.image_ext: item.image, "txt": encode_text(item.caption)}
        if item.meta is not None:
            sample["json"] = encode_json(item.meta)
        writer.write(sample)
        if progress:
            progress(1)
    shards = [shard for writer in writers.values() for shard in writer.close()]
    if not shards:
        raise ValueError(f"found no convertible samples in {src} as format {options.format!r}")
    extra["skipped"] = skipped
    return write_manifest(out_dir, shards, extra)


def _shrink_all(items, options: ConvertOptions, counts: dict, chunk: int = 256) -> Iterator[Example | str]:
    """Resize on a process pool, a chunk at a time (Executor.map would read the whole source
    ahead into memory), keeping the source's order."""
    workers = options.workers or os.cpu_count() or 1
    pool = ProcessPoolExecutor(workers) if workers > 1 else None
    try:
        while batch := list(itertools.islice(items, chunk)):
            args = (_shrink_example, batch, itertools.repeat(options))
            for item, resized in pool.map(*args, chunksize=8) if pool else map(*args):
                counts["resized"] += resized
                yield item
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)


def _shrink_example(item: Example | str, options: ConvertOptions) -> tuple[Example | str, bool]:
    """(the example, with its image scaled down where it was larger, or a skip reason; whether it was resized)"""
    if isinstance(item, str):  # a skip reason from the reader
        return item, False
    try:
        smaller = shrink(item.image, options.resize, options.quality, options.max_pixels)
    except BadSample as err:
        return err.reason, False
    if smaller is None:
        return item, False
    return replace(item, image=smaller, image_ext="jpg"), True


def _read_folder(src: Path, options: ConvertOptions, extra: dict) -> Iterator[Example | str]:
    for image_path in sorted(p for p in src.rglob("*") if p.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS):
        caption_path = image_path.with_suffix(".txt")
        if not caption_path.is_file():
            yield "missing_caption"
            continue
        meta_path = image_path.with_suffix(".json")
        try:
            meta = json.loads(meta_path.read_text()) if meta_path.is_file() else None
        except ValueError:
            yield bad_samples.BAD_METADATA
            continue
        key = image_path.relative_to(src).with_suffix("").as_posix().replace(".", "_")
        yield Example(options.split, key, image_path.read_bytes(), _ext(image_path.suffix),
                      caption_path.read_text().strip(), meta)


def _read_table(src: Path, options: ConvertOptions, extra: dict) -> Iterator[Example | str]:
    import pyarrow.csv
    import pyarrow.json
    import pyarrow.parquet

    load = {"csv": pyarrow.csv.read_csv, "jsonl": pyarrow.json.read_json,
            "parquet": pyarrow.parquet.read_table}[options.format]
    table = load(str(src))
    image_col = options.image_column or _pick(table.column_names, IMAGE_COLUMNS, "--image-column")
    caption_col = options.caption_column or _pick(table.column_names, CAPTION_COLUMNS, "--caption-column")
    for name in filter(None, (image_col, caption_col, options.label_column)):
        if name not in table.column_names:
            raise ValueError(f"{src} has no column {name!r}; columns are {table.column_names}")
    base = src.parent
    for index, row in enumerate(table.to_pylist()):
        image = row[image_col]
        if isinstance(image, dict):  # Hugging Face datasets store images as {"bytes", "path"}
            image = image.get("bytes") or image.get("path")
        if isinstance(image, str):
            path = Path(image) if Path(image).is_absolute() else base / image
            if not path.is_file():
                yield "missing_image"
                continue
            image_bytes, ext = path.read_bytes(), _ext(path.suffix)
        elif isinstance(image, (bytes, bytearray)):
            image_bytes, ext = bytes(image), _sniff_ext(image)
        else:
            yield "missing_image"
            continue
        # metadata_problem() in convert() refuses a label that is no int64 (text, 1e400, 2**70)
        meta = {"label": row[options.label_column]} if options.label_column else None
        yield Example(options.split, f"{index:09d}", image_bytes, ext, str(row[caption_col] or "").strip(), meta)


def _read_idx(src: Path, options: ConvertOptions, extra: dict) -> Iterator[Example]:
    if options.classes_file is None:
        raise ValueError("--format idx needs --classes FILE (one class name per line)")
    classes = [line.strip() for line in Path(options.classes_file).read_text().splitlines() if line.strip()]
    extra.update(classes=classes, templates=list(options.templates))
    rng = np.random.default_rng(options.seed)
    found_any = False
    for split, prefixes in IDX_SPLITS.items():
        images_path = _find_idx(src, prefixes, "images-idx3-ubyte")
        labels_path = _find_idx(src, prefixes, "labels-idx1-ubyte")
        if images_path is None or labels_path is None:
            continue
        found_any = True
        images_NHW, labels_N = _load_idx(images_path), _load_idx(labels_path)
        if len(images_NHW) != len(labels_N):
            raise ValueError(f"{images_path} has {len(images_NHW)} images but {labels_path} has {len(labels_N)} labels")
        if labels_N.max() >= len(classes):
            raise ValueError(f"label {labels_N.max()} has no class name: {options.classes_file} lists {len(classes)}")
        template_ids = rng.integers(len(options.templates), size=len(labels_N))
        for index, (pixels_HW, label) in enumerate(zip(images_NHW, labels_N)):
            buffer = io.BytesIO()
            Image.fromarray(pixels_HW, mode="L").save(buffer, format="PNG")
            caption = options.templates[template_ids[index]].format(classes[label])
            meta = {"label": int(label), "class_name": classes[label]}
            yield Example(split, f"{index:06d}", buffer.getvalue(), "png", caption, meta)
    if not found_any:
        raise ValueError(f"no IDX pairs (train-images-idx3-ubyte + train-labels-idx1-ubyte, or t10k-*) in {src}")


def _find_idx(src: Path, prefixes: tuple[str, ...], stem: str) -> Optional[Path]:
    for prefix in prefixes:
        for suffix in ("", ".gz"):
            path = src / f"{prefix}-{stem}{suffix}"
            if path.is_file():
                return path
    return None


def _load_idx(path: Path) -> np.ndarray:
    """IDX: 2 zero bytes, a dtype code (0x08 = uint8), the number of dims, big-endian dim sizes."""
    raw = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    if raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise ValueError(f"{path} is not a uint8 IDX file")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _pick(columns: list[str], candidates: tuple[str, ...], flag: str) -> str:
    for name in candidates:
        if name in columns:
            return name
    raise ValueError(f"could not guess which column to use; pass {flag} (columns: {columns})")


def _ext(suffix: str) -> str:
    ext = suffix.lower().lstrip(".")
    return "jpg" if ext == "jpeg" else ext


def _sniff_ext(data: bytes) -> str:
    try:
        return _ext(Image.open(io.BytesIO(data)).format or "jpg")
    except Exception:  # bad bytes still get written; the pipeline counts them as not_an_image
        return "jpg"
