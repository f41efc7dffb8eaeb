"""Convert a user's images and captions into WebDataset shards.

Formats:
  folder   images with sidecar captions: cat.jpg + cat.txt (+ optional cat.json)
  csv      a table with an image column (path or bytes) and a caption column; also jsonl, parquet;
           a jsonl or parquet table with a `conversations` or `messages` column converts as llava
  llava    LLaVA / ShareGPT conversations: a JSON array or JSONL (pipelines/convert_conversations.py)
  idx      MNIST-style IDX files (train-images-idx3-ubyte[.gz] + labels, t10k-* as the test split)
           with class names from --classes and captions from --template

With `resize`, images whose shorter side is larger are scaled down to it and stored as JPEG
(pipelines/resize.py), on `workers` processes; the rest keep their original bytes.
"""

from __future__ import annotations

import gzip
import hashlib
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

from mmtrain.pipelines import bad_samples
from mmtrain.pipelines.contained_files import read_contained
from mmtrain.pipelines.convert_conversations import conversation_example, is_conversation_table, read_llava_json
from mmtrain.pipelines.images import BadSample
from mmtrain.pipelines.resize import shrink
from mmtrain.pipelines.shard_writer import ShardWriter, encode_json, encode_text, write_manifest
from mmtrain.pipelines.table_rows import ext_of, sniff_ext, table_rows
from mmtrain.pipelines.tar_samples import IMAGE_EXTENSIONS, MAX_MEMBER_BYTES, RawSample, TextLimits, to_record

FORMATS = ("folder", "csv", "jsonl", "parquet", "llava", "idx")
VAL_SPLIT = "val"  # the held-out split's shard prefix (val-00000.tar), as `data synth` names it
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
    more_images: tuple[tuple[bytes, str], ...] = ()  # (bytes, ext) of a multi-image sample's others

    @property
    def images(self) -> list[tuple[bytes, str]]:
        return ([(self.image, self.image_ext)] if self.image else []) + list(self.more_images)


@dataclass(frozen=True)
class ConvertOptions:
    format: str
    split: str = "train"
    # Hold out this fraction of `split` as the "val" split, chosen by a hash of each sample's key: a
    # re-run (or more data added later) holds out the same samples, whatever order they come in.
    val_fraction: float = 0.0
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
    # Where a table's relative image paths start and where any image path may point (default: the
    # table's own directory): a path or link leading elsewhere is skipped, so a table cannot copy a
    # system file into a shard.
    image_root: Optional[Path] = None
    limits: TextLimits = TextLimits()  # captions and metadata the reader would refuse are not written
    max_json_bytes: int = 4 << 30  # a LLaVA JSON array is read whole (665k rows: ~1 GB); JSONL streams


def convert(src: Path, out_dir: Path, options: ConvertOptions, progress: Callable[[int], None] | None = None) -> dict:
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
    if not 0 <= options.val_fraction < 1:
        raise ValueError(f"--val-fraction {options.val_fraction}: give a fraction from 0 (none held out) to below 1")
    if options.val_fraction and options.split == VAL_SPLIT:
        raise ValueError(
            f"--val-fraction holds out a {VAL_SPLIT!r} split from --split {options.split!r}: name it apart"
        )
    if not 1 <= options.quality <= 100:
        raise ValueError(f"--quality {options.quality}: JPEG quality goes from 1 to 100 (default 95)")
    reader = {
        "folder": _read_folder,
        "csv": _read_table,
        "jsonl": _read_table,
        "parquet": _read_table,
        "llava": _read_llava,
        "idx": _read_idx,
    }[options.format]
    writers: dict[str, ShardWriter] = {}
    skipped: dict[str, int] = {}
    extra: dict = {"source": str(src), "format": options.format}
    if options.val_fraction:
        extra["val_fraction"] = options.val_fraction
    items = reader(src, options, extra)
    if options.resize:
        resized = extra["resize"] = {"shorter_side": options.resize, "quality": options.quality, "resized": 0}
        items = _shrink_all(items, options, resized)
    for item in items:
        sample = item if isinstance(item, str) else as_sample(item, options.limits)
        if isinstance(sample, str):  # a skipped input, by reason
            skipped[sample] = skipped.get(sample, 0) + 1
            continue
        split = VAL_SPLIT if item.split == options.split and held_out(item.key, options.val_fraction) else item.split
        writer = writers.get(split)
        if writer is None:
            writer = writers[split] = ShardWriter(
                out_dir, split, max_samples=options.shard_samples, max_bytes=options.shard_bytes
            )
        writer.write(sample)
        if progress:
            progress(1)
    shards = [shard for writer in writers.values() for shard in writer.close()]
    if not shards:
        raise ValueError(f"found no convertible samples in {src} as format {options.format!r}")
    extra["skipped"] = skipped
    return write_manifest(out_dir, shards, extra)


def held_out(key: str, fraction: float) -> bool:
    """Whether a sample's key falls in the held-out `fraction` (a stable hash: the same in every run)."""
    if fraction <= 0:
        return False
    digest = int.from_bytes(hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=8).digest(), "big")
    return digest < fraction * 2**64


def as_sample(item: Example, limits: TextLimits) -> dict | str:
    """The shard sample for an example, or the reason the reader would refuse it: the reader itself
    judges it (to_record), so convert never writes a sample that training would skip."""
    images = item.images
    if len(images) == 1:
        sample = {"__key__": item.key, images[0][1]: images[0][0]}
    else:  # several images are numbered in placeholder order (0.jpg, 1.png, ...); a text-only sample has none
        sample = {"__key__": item.key, **{f"{number}.{ext}": data for number, (data, ext) in enumerate(images)}}
    sample["txt"] = encode_text(item.caption)
    if item.meta is not None:
        try:
            sample["json"] = encode_json(item.meta)
        except (TypeError, ValueError, RecursionError):
            return bad_samples.BAD_METADATA
    if any(len(value) > MAX_MEMBER_BYTES for name, value in sample.items() if name != "__key__"):
        return bad_samples.OVERSIZED_MEMBER
    raw = RawSample(item.key, {name: value for name, value in sample.items() if name != "__key__"})
    record = to_record(raw, limits)
    return record if isinstance(record, str) else sample


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
    images, resized = [], False
    for data, ext in item.images:
        try:
            smaller = shrink(data, options.resize, options.quality, options.max_pixels)
        except BadSample as err:
            return err.reason, False
        images.append((data, ext) if smaller is None else (smaller, "jpg"))
        resized |= smaller is not None
    if not images:
        return item, False
    (image, image_ext), *more = images
    return replace(item, image=image, image_ext=image_ext, more_images=tuple(more)), resized


def _read_folder(src: Path, options: ConvertOptions, extra: dict) -> Iterator[Example | str]:
    root = src.resolve()
    for image_path in sorted(p for p in src.rglob("*") if p.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS):
        try:
            yield _folder_example(image_path, src, root, options)
        except OSError:  # unreadable, or vanished since it was listed
            yield bad_samples.UNREADABLE_FILE


def _folder_example(image_path: Path, src: Path, root: Path, options: ConvertOptions) -> Example | str:
    image = read_contained(image_path, root, MAX_MEMBER_BYTES, bad_samples.OVERSIZED_MEMBER)
    if isinstance(image, str):
        return image
    caption_path = image_path.with_suffix(".txt")
    if not caption_path.is_file():
        return bad_samples.MISSING_CAPTION
    caption = read_contained(caption_path, root, options.limits.max_caption_bytes, bad_samples.CAPTION_TOO_LONG)
    if isinstance(caption, str):
        return caption
    meta = None
    meta_path = image_path.with_suffix(".json")
    if meta_path.exists():
        text = read_contained(meta_path, root, options.limits.max_metadata_bytes, bad_samples.METADATA_TOO_LARGE)
        if isinstance(text, str):
            return text
        try:
            meta = json.loads(text)
        except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested past Python's stack
            return bad_samples.BAD_METADATA
    try:
        caption_text = caption.decode("utf-8").strip()
    except UnicodeDecodeError:
        return bad_samples.UNREADABLE_CAPTION
    key = image_path.relative_to(src).with_suffix("").as_posix().replace(".", "_")
    return Example(options.split, key, image, ext_of(image_path.suffix), caption_text, meta)


def _read_llava(src: Path, options: ConvertOptions, extra: dict) -> Iterator[Example | str]:
    rows = read_llava_json(src, options.max_json_bytes)
    yield from _conversation_examples(rows, Path(options.image_root or src.parent).resolve(), options)


def _conversation_examples(rows, root: Path, options: ConvertOptions) -> Iterator[Example | str]:
    for index, row in enumerate(rows):
        if isinstance(row, str):  # a line or item that is not a JSON object
            yield row
            continue
        try:
            found = conversation_example(row, root)
        except OSError:
            found = bad_samples.UNREADABLE_FILE
        if isinstance(found, str):
            yield found
            continue
        images, turns, caption = found
        (image, ext), *more = images or [(b"", "")]
        meta = {"conversations": turns, **({"id": str(row["id"])} if "id" in row else {})}
        yield Example(options.split, f"{index:09d}", image, ext, caption, meta, tuple(more))


def _read_table(src: Path, options: ConvertOptions, extra: dict) -> Iterator[Example | str]:
    rows, columns = table_rows(src, options.format, options.limits.max_metadata_bytes + MAX_MEMBER_BYTES)
    if options.format != "csv" and is_conversation_table(columns):
        yield from _conversation_examples(rows, Path(options.image_root or src.parent).resolve(), options)
        return
    image_col = options.image_column or _pick(columns, IMAGE_COLUMNS, "--image-column")
    caption_col = options.caption_column or _pick(columns, CAPTION_COLUMNS, "--caption-column")
    for name in filter(None, (image_col, caption_col, options.label_column)):
        if name not in columns:
            raise ValueError(f"{src} has no column {name!r}; columns are {columns}")
    root = Path(options.image_root or src.parent).resolve()
    for index, row in enumerate(rows):
        if isinstance(row, str):  # a line that is not a JSON object
            yield row
            continue
        try:
            yield _table_example(index, row, image_col, caption_col, root, options)
        except OSError:
            yield bad_samples.UNREADABLE_FILE


def _table_example(
    index: int, row: dict, image_col: str, caption_col: str, root: Path, options: ConvertOptions
) -> Example | str:
    image = row.get(image_col)
    if isinstance(image, dict):  # Hugging Face datasets store images as {"bytes", "path"}
        image = image.get("bytes") or image.get("path")
    if isinstance(image, str):
        path = Path(image) if Path(image).is_absolute() else root / image
        if not path.is_file():
            return bad_samples.MISSING_IMAGE
        image_bytes = read_contained(path, root, MAX_MEMBER_BYTES, bad_samples.OVERSIZED_MEMBER)
        if isinstance(image_bytes, str):
            return image_bytes
        ext = ext_of(path.suffix)
    elif isinstance(image, (bytes, bytearray)):
        image_bytes, ext = bytes(image), sniff_ext(image)
    else:
        return bad_samples.MISSING_IMAGE
    caption = row.get(caption_col)
    if caption is not None and not isinstance(caption, (str, int, float)):
        return bad_samples.UNREADABLE_CAPTION
    # as_sample() refuses a label that is no int64 (text, 1e400, 2**70), as the reader would
    meta = {"label": row.get(options.label_column)} if options.label_column else None
    return Example(options.split, f"{index:09d}", image_bytes, ext, str(caption or "").strip(), meta)


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
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _pick(columns: list[str], candidates: tuple[str, ...], flag: str) -> str:
    for name in candidates:
        if name in columns:
            return name
    raise ValueError(f"could not guess which column to use; pass {flag} (columns: {columns})")
