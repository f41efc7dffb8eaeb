"""Read WebDataset samples out of a tar stream without letting one bad byte sink the shard.

Ray's own reader raises on a truncated or corrupt tar and drops the whole read task, good
shards included. Here a damaged region is counted and skipped: reading resynchronises at the
next valid header (as tarfile's `ignore_zeros` mode does), and a truncated tail keeps every
sample before it.
Pickle-like members are refused by name and never deserialised.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import IO, Iterator, Optional

from pipelines import bad_samples

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp")
PICKLE_EXTENSIONS = {"pyd", "pickle", "pkl", "pth", "pt", "ckpt", "joblib"}
MAX_MEMBER_BYTES = 64 * 1024 * 1024
BLOCK = 512  # a tar header, and the unit member data is padded to


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
        yield from _read_members(stream, max_member_bytes)
    except OSError:  # the storage failed mid-shard (e.g. a dropped S3 connection): keep what was read
        yield bad_samples.UNREADABLE_SHARD


def _read_members(stream: IO[bytes], max_member_bytes: int):
    """A small ustar/pax/GNU reader rather than tarfile, whose Python header parsing cost ~30 us per
    member, most of our read time per sample; here a header costs a checksum (a C-level sum) and
    a few slices. Like tarfile's ignore_zeros mode, zero blocks are skipped and a block that fails
    its checksum is skipped too, until the next valid header (counted once per damaged region).
    """
    members, resyncing = 0, False
    long_name: Optional[str] = None  # from a GNU 'L' or pax 'path' record, for the next member
    pax_size: Optional[int] = None
    while True:
        header = stream.read(BLOCK)
        if len(header) < BLOCK:
            if header and members and not resyncing:
                yield bad_samples.TRUNCATED_TAR
            break
        if header == _ZERO_BLOCK:
            continue
        parsed = _parse_header(header)
        if parsed is None:
            if not resyncing:
                yield bad_samples.CORRUPT_TAR
                resyncing = True
            continue
        resyncing = False
        members += 1
        name, size, kind = parsed
        if kind in (b"L", b"x", b"g"):  # metadata for the next member (global pax: ignored)
            payload = _read_exact(stream, _padded(size))
            if payload is None:
                yield bad_samples.TRUNCATED_TAR
                return
            if kind == b"L":
                long_name = payload[:size].rstrip(b"\0").decode("utf-8", "surrogateescape")
            elif kind == b"x":
                records = _pax_records(payload[:size])
                long_name = records.get("path", long_name)
                pax_size = int(records["size"]) if "size" in records else pax_size
            continue
        if long_name is not None:
            name, long_name = long_name, None
        if pax_size is not None:
            size, pax_size = pax_size, None
        if kind not in _REGULAR_FILE or size > max_member_bytes:
            if _read_exact(stream, _padded(size)) is None:  # skip the data
                yield bad_samples.TRUNCATED_TAR
                return
            if kind in _REGULAR_FILE:
                yield name, None
            continue
        data = _read_exact(stream, _padded(size))
        if data is None:
            yield bad_samples.TRUNCATED_TAR
            return
        yield name, data[:size]
    if members == 0 and not resyncing:  # an empty file, or nothing but zero blocks (else reported above)
        yield bad_samples.CORRUPT_TAR


_ZERO_BLOCK = bytes(BLOCK)
_REGULAR_FILE = (b"0", b"\0", b"7")  # '7': contiguous file, read like a regular one


def _parse_header(block: bytes) -> Optional[tuple[str, int, bytes]]:
    """(name, size, type flag) of a valid header block, None if its checksum does not match."""
    try:
        stored = int(block[148:156].strip(b"\0 ") or b"0", 8)
        size_field = block[124:136]
        if size_field[0] & 0x80:  # GNU base-256 for members over 8 GiB
            size = int.from_bytes(size_field[1:], "big")
        else:
            size = int(size_field.strip(b"\0 ") or b"0", 8)
    except ValueError:
        return None
    # The checksum counts its own 8-byte field as spaces; some old writers summed signed bytes.
    unsigned = sum(block) - sum(block[148:156]) + 8 * 32
    if stored != unsigned and stored != unsigned - 256 * sum(b > 127 for b in block[:148] + block[156:]):
        return None
    name = block[:100].split(b"\0", 1)[0]
    if block[257:263] == b"ustar\0":  # POSIX ustar: long paths are split into prefix / name
        prefix = block[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    return name.decode("utf-8", "surrogateescape"), size, block[156:157]


def _pax_records(payload: bytes) -> dict[str, str]:
    """The 'LENGTH key=value' records of a pax extended header."""
    records, position = {}, 0
    while position < len(payload):
        length_text, _, _ = payload[position:position + 20].partition(b" ")
        try:
            length = int(length_text)
        except ValueError:
            break
        record = payload[position:position + length]
        key, _, value = record[len(length_text) + 1:].rstrip(b"\n").partition(b"=")
        records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        position += max(length, 1)
    return records


def _read_exact(stream: IO[bytes], size: int) -> Optional[bytes]:
    data = stream.read(size) if size else b""
    return data if len(data) == size else None


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
