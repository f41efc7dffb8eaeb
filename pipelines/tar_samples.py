"""Read WebDataset samples out of a tar stream without letting one bad byte sink the shard.

Ray's own reader raises on a truncated or corrupt tar and drops the whole read task, good
shards included. Here a damaged region is counted and skipped: tarfile's `ignore_zeros` mode
resynchronises at the next valid header, and a truncated tail keeps every sample before it.
Pickle-like members are refused by name and never deserialised.
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass, field
from typing import IO, Iterator, Optional

from pipelines import bad_samples

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp")
PICKLE_EXTENSIONS = {"pyd", "pickle", "pkl", "pth", "pt", "ckpt", "joblib"}
MAX_MEMBER_BYTES = 64 * 1024 * 1024
BLOCK = tarfile.BLOCKSIZE


@dataclass
class RawSample:
    """One sample's members by extension, or the reason it cannot be used."""

    key: str
    fields: dict[str, bytes] = field(default_factory=dict)
    bad_reason: Optional[str] = None


@dataclass
class Record:
    """A usable sample: image bytes, caption, and what its .json metadata said."""

    key: str
    image_bytes: bytes
    caption: str
    label: int = -1
    conversation: str = "[]"


def split_key(member_name: str) -> tuple[str, str]:
    """'dir/00012.txt' -> ('dir/00012', 'txt'): the key ends at the basename's first dot."""
    directory, _, base = member_name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{directory}/{stem}" if directory else stem), ext.lower()


def iter_raw_samples(stream: IO[bytes], max_member_bytes: int = MAX_MEMBER_BYTES) -> Iterator[RawSample]:
    """Yield samples grouped by key (members of a sample are adjacent), plus counted failures."""
    current: Optional[RawSample] = None
    for event in _iter_members(stream, max_member_bytes):
        if isinstance(event, str):  # a shard-level problem: a reason without a sample
            yield RawSample(key="", bad_reason=event)
            continue
        name, data = event
        key, ext = split_key(name)
        if current is not None and key != current.key:
            yield current
            current = None
        if current is None:
            current = RawSample(key=key)
        if ext in PICKLE_EXTENSIONS or ext.rsplit(".", 1)[-1] in PICKLE_EXTENSIONS:
            current.bad_reason = bad_samples.PICKLE_MEMBER
        elif data is None:
            current.bad_reason = bad_samples.OVERSIZED_MEMBER
        else:
            current.fields[ext] = data
    if current is not None:
        yield current


def _iter_members(stream: IO[bytes], max_member_bytes: int):
    """Yield (name, bytes or None if oversized) per regular member, or a reason string."""
    try:
        tar = tarfile.open(fileobj=stream, mode="r|", ignore_zeros=True)
    except (tarfile.TarError, OSError):
        yield bad_samples.CORRUPT_TAR
        return
    expected_offset, members = 0, 0
    try:
        for info in tar:
            members += 1
            # ignore_zeros skips unreadable blocks silently; a jump in offsets is how we see it.
            if info.offset != expected_offset:
                yield bad_samples.CORRUPT_TAR
            expected_offset = info.offset_data + _padded(info.size)
            if not info.isfile():
                continue
            if info.size > max_member_bytes:
                yield info.name, None
                continue
            member = tar.extractfile(info)
            yield info.name, member.read() if member else b""
    except (tarfile.TarError, EOFError):
        yield bad_samples.TRUNCATED_TAR
        return
    except OSError:
        yield bad_samples.UNREADABLE_SHARD
        return
    if members == 0:  # ignore_zeros skipped every block: nothing in this file is a tar header
        yield bad_samples.CORRUPT_TAR


def _padded(size: int) -> int:
    return (size + BLOCK - 1) // BLOCK * BLOCK


def to_record(sample: RawSample) -> Record | str:
    """A usable Record, or the reason the sample is bad."""
    if sample.bad_reason:
        return sample.bad_reason
    fields = sample.fields
    image_ext = next((e for e in IMAGE_EXTENSIONS if e in fields), None)
    if image_ext is None:
        return bad_samples.MISSING_IMAGE
    caption_bytes = fields.get("txt")
    if caption_bytes is None:
        return bad_samples.MISSING_CAPTION
    caption = caption_bytes.decode("utf-8", errors="replace").strip()
    if not caption:
        return bad_samples.EMPTY_CAPTION
    label, conversation = -1, "[]"
    if "json" in fields:
        try:
            meta = json.loads(fields["json"])
            label = int(meta.get("label", -1))
            conversation = json.dumps(meta.get("conversations", []))
        except (ValueError, TypeError, AttributeError):
            return bad_samples.BAD_METADATA
    return Record(sample.key, fields[image_ext], caption, label, conversation)
