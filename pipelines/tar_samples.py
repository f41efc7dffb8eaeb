"""Read WebDataset samples out of a tar stream without letting one bad byte sink the shard.

Ray's own reader raises on a truncated or corrupt tar and drops the whole read task, good
shards included. Here a damaged region is counted and skipped: reading resynchronises at the
next valid header (as tarfile's `ignore_zeros` mode does), and a truncated tail keeps every
sample before it.
Pickle-like members are refused by name and never deserialised.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import IO, Container, Iterator, NamedTuple, Optional

from mmtrain.pipelines import bad_samples
from mmtrain.pipelines.conversations import IMAGE_PLACEHOLDER, ROLES

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp")
PICKLE_EXTENSIONS = {"pyd", "pickle", "pkl", "pth", "pt", "ckpt", "joblib"}
MAX_MEMBER_BYTES = 64 * 1024 * 1024
MAX_TAR_SIZE = 1 << 50  # 1 PiB: a member size beyond it is a corrupt header, not a member
BLOCK = 512  # a tar header, and the unit member data is padded to


@dataclass(frozen=True)
class TextLimits:
    """Bounds on a sample's text, checked before any parse or tokenizer sees it: tokenizers read a
    caption whole before truncating, and conversation encoding grows with its turns."""

    max_caption_bytes: int = 64 * 1024
    max_metadata_bytes: int = 1024 * 1024  # the .json member (label, conversation)
    max_turns: int = 256


@dataclass
class RawSample:
    """One sample's members by extension, or the reason it cannot be used."""

    key: str
    fields: dict[str, bytes] = field(default_factory=dict)
    bad_reason: Optional[str] = None
    offset: int = 0  # byte offset of its first header in the shard (for the log)
    index: int = -1  # the sample's number in the shard (SampleNumbering); -1 for a shard-level problem


@dataclass
class Record:
    """A usable sample: image bytes, caption, and what its .json metadata said.

    A sample holds one image (`key.jpg`), several (`key.0.jpg`, `key.1.jpg`, ...: a multi-image
    conversation, one <image> placeholder each, in that order) or none (a text-only conversation)."""

    key: str
    image_bytes: bytes  # the first image; b"" for a text-only sample
    caption: str
    label: int = -1
    conversation: str = "[]"
    index: int = -1  # the sample's number in the shard
    offset: int = 0  # byte offset of its first header
    more_images: tuple[bytes, ...] = ()  # the second image on, in placeholder order

    @property
    def images(self) -> tuple[bytes, ...]:
        return ((self.image_bytes,) if self.image_bytes else ()) + self.more_images


@dataclass
class Bad:
    """A sample (or, with an empty key, a stretch of the shard) that cannot be used, and why."""

    key: str
    reason: str
    offset: int
    index: int = -1  # the sample's number in the shard; -1 for a stretch of the shard


class SampleNumbering:
    """Numbers a shard's samples (runs of adjacent members sharing a key) 0, 1, 2... in file order,
    from member names alone. The reader asks it before reading a member's data, so a sample in
    `skip` is sought past, never read, and the samples after it keep the numbers a full read gives:
    a resumed epoch names its samples as the interrupted one did."""

    def __init__(self, skip: Optional[Container[int]] = None):
        self.skip = skip if skip is not None else ()
        self.index = -1
        self.repeated = False  # the current key was seen earlier in the shard (members not adjacent)
        self._key: Optional[str] = None
        self._seen: set[str] = set()
        self._undo: Optional[tuple] = None

    def wants(self, member_name: str) -> bool:
        """Called for each regular member in order; False: seek past its data."""
        key, _ = split_key(member_name)
        self._undo = None
        if key != self._key:
            self._undo = (self._key, self.index, self.repeated, self._key is not None and self._key not in self._seen)
            if self._key is not None:
                self._seen.add(self._key)
            self._key, self.index, self.repeated = key, self.index + 1, key in self._seen
        return self.index not in self.skip

    def member_lost(self) -> None:
        """The last member's data is cut off by the end of the shard: if it opened a sample, that
        sample never existed (every reader, seeking or not, then counts the same samples)."""
        if self._undo is not None:
            self._key, self.index, self.repeated, added = self._undo
            if added:
                self._seen.discard(self._key)
            self._undo = None

    @property
    def count(self) -> int:
        return self.index + 1


def split_key(member_name: str) -> tuple[str, str]:
    """'dir/00012.txt' -> ('dir/00012', 'txt'): the key ends at the basename's first dot."""
    directory, _, base = member_name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{directory}/{stem}" if directory else stem), ext.lower()


def iter_records(
    stream: IO[bytes],
    max_member_bytes: int = MAX_MEMBER_BYTES,
    skip: Optional[Container[int]] = None,
    limits: TextLimits = TextLimits(),
) -> Iterator[Record | Bad]:
    """Every sample of a shard as a Record or a Bad: the one containment boundary around all that
    parses a sample (headers, members, metadata, conversations). The pipeline, `data inspect`,
    `data tokenizer` and `data convert` all read through it, so they agree on every input, and an
    input no rule below foresaw costs the rest of its shard, never the run. Samples whose number
    is in `skip` are passed over (sought past on a seekable stream)."""
    offset = 0
    try:
        for raw in iter_raw_samples(stream, max_member_bytes, skip):
            offset = raw.offset
            if raw.bad_reason:
                yield Bad(raw.key, raw.bad_reason, raw.offset, raw.index)
                continue
            try:
                record = to_record(raw, limits)
            except Exception:  # a metadata shape no check below foresaw
                record = bad_samples.BAD_METADATA
            yield Bad(raw.key, record, raw.offset, raw.index) if isinstance(record, str) else record
    except Exception:  # a reader bug, or a stream that fails in a new way: keep what came before
        yield Bad("", bad_samples.PARSE_ERROR, offset)


def iter_raw_samples(
    stream: IO[bytes], max_member_bytes: int = MAX_MEMBER_BYTES, skip: Optional[Container[int]] = None
) -> Iterator[RawSample]:
    """Yield samples grouped by key (members of a sample are adjacent), plus counted failures."""
    numbering = SampleNumbering(skip)
    current: Optional[RawSample] = None
    for event in _iter_members(stream, max_member_bytes, numbering):
        if isinstance(event, ShardProblem):  # a reason without a sample
            yield RawSample(key="", bad_reason=event.reason, offset=event.offset)
            continue
        name, data, offset = event
        key, ext = split_key(name)
        if current is not None and numbering.index != current.index:
            yield current
            current = None
        if current is None:
            current = RawSample(key=key, offset=offset, index=numbering.index)
            if numbering.repeated:  # a key seen earlier: its members were not adjacent
                current.bad_reason = bad_samples.MEMBERS_NOT_ADJACENT
        if current.bad_reason:
            continue
        if ext in PICKLE_EXTENSIONS or ext.rsplit(".", 1)[-1] in PICKLE_EXTENSIONS:
            current.bad_reason = bad_samples.PICKLE_MEMBER
        elif data is None:
            current.bad_reason = bad_samples.OVERSIZED_MEMBER
        elif ext in current.fields:
            current.bad_reason = bad_samples.DUPLICATE_MEMBER  # neither copy is trusted over the other
        else:
            current.fields[ext] = data
    if current is not None:
        yield current


class ShardProblem(NamedTuple):
    reason: str  # one of bad_samples.SHARD_LEVEL
    offset: int


def count_samples(stream: IO[bytes]) -> int:
    """How many samples a shard holds (good or bad), from its headers: on a seekable stream no
    member's data is read."""
    numbering = SampleNumbering(skip=_EVERYTHING)
    try:
        for _ in _iter_members(stream, MAX_MEMBER_BYTES, numbering):
            pass
    except Exception:  # as iter_records: input no rule foresaw ends the shard, keeping what came before
        pass
    return numbering.count


class _Everything:
    def __contains__(self, item) -> bool:
        return True


_EVERYTHING = _Everything()


def _iter_members(stream: IO[bytes], max_member_bytes: int, numbering: SampleNumbering):
    """Yield (name, bytes or None if oversized, offset) per regular member that `numbering`
    wants, or a ShardProblem."""
    reader = _Reader(stream)
    try:
        yield from _read_members(reader, max_member_bytes, numbering)
    except OSError:  # the storage failed mid-shard (e.g. a dropped S3 connection): keep what was read
        yield ShardProblem(bad_samples.UNREADABLE_SHARD, reader.position)


class _Reader:
    """The stream, the byte position in it, and a skip that seeks where it can."""

    def __init__(self, stream: IO[bytes]):
        self.stream, self.position = stream, 0
        self._seekable = _seekable(stream)

    def read(self, size: int) -> bytes:
        data = self.stream.read(size) if size else b""
        self.position += len(data)
        return data

    def read_exact(self, size: int) -> Optional[bytes]:
        data = self.read(size)
        return data if len(data) == size else None

    def skip(self, size: int) -> bool:
        """Move past `size` bytes without holding them in memory; False if the shard ends first."""
        if self._seekable:
            end = self.stream.seek(0, 2)
            if self.position + size > end:
                self.stream.seek(end)
                self.position = end
                return False
            self.position = self.stream.seek(self.position + size)
            return True
        while size:
            chunk = self.read(min(size, 1 << 20))
            if not chunk:
                return False
            size -= len(chunk)
        return True


def _seekable(stream) -> bool:
    try:
        return bool(stream.seekable())
    except (AttributeError, OSError, ValueError):
        return False


def _read_members(reader: _Reader, max_member_bytes: int, numbering: SampleNumbering):
    """A small ustar/pax/GNU reader rather than tarfile, whose Python header parsing cost ~30 us per
    member, most of our read time per sample; here a header costs a checksum (a C-level sum) and
    a few slices. Like tarfile's ignore_zeros mode, zero blocks are skipped and a block that fails
    its checksum is skipped too, until the next valid header (counted once per damaged region).
    A header whose checksum holds but whose fields do not parse is counted as bad_header.
    A state machine over the stream's blocks (pending long names and pax sizes, resynchronising),
    so it reads best as one function.
    """
    members, files, resyncing = 0, 0, False
    long_name: Optional[str] = None  # from a GNU 'L' or pax 'path' record, for the next member
    pax_size: Optional[int] = None
    while True:
        offset = reader.position
        header = reader.read(BLOCK)
        if len(header) < BLOCK:
            if header and members and not resyncing:
                yield ShardProblem(bad_samples.TRUNCATED_TAR, offset)
            break
        if header == _ZERO_BLOCK:
            continue
        parsed = _parse_header(header)
        if parsed is None:
            if not resyncing:
                yield ShardProblem(bad_samples.CORRUPT_TAR, offset)
                resyncing = True
            continue
        resyncing = False
        members += 1
        name, size, kind = parsed
        if size == BAD_SIZE:  # the member's extent is unknown: look for the next header
            yield ShardProblem(bad_samples.BAD_HEADER, offset)
            resyncing = True
            continue
        if kind in (b"L", b"x", b"g"):  # metadata for the next member (global pax: ignored)
            if size > max_member_bytes:  # no real name or pax record is this large
                yield ShardProblem(bad_samples.BAD_HEADER, offset)
                if reader.skip(_padded(size)):
                    continue
                yield ShardProblem(bad_samples.TRUNCATED_TAR, offset)
                return
            payload = reader.read_exact(_padded(size))
            if payload is None:
                yield ShardProblem(bad_samples.TRUNCATED_TAR, offset)
                return
            if kind == b"L":
                long_name = _text(payload[:size].rstrip(b"\0"))
            elif kind == b"x":
                records = _pax_records(payload[:size])
                long_name = records.get("path", long_name)
                if "size" in records:
                    pax_size = _pax_size(records["size"])
                    if pax_size is None:
                        yield ShardProblem(bad_samples.BAD_HEADER, offset)  # the member keeps its own header's size
            continue
        if long_name is not None:
            name, long_name = long_name, None
        if pax_size is not None:
            size, pax_size = pax_size, None
        wanted = kind in _REGULAR_FILE and numbering.wants(name)
        files += kind in _REGULAR_FILE
        if not wanted or size > max_member_bytes:
            if not reader.skip(_padded(size)):  # skip the data, without reading it into memory
                if kind in _REGULAR_FILE:
                    numbering.member_lost()
                yield ShardProblem(bad_samples.TRUNCATED_TAR, offset)
                return
            if wanted:
                yield name, None, offset  # oversized: the sample is counted bad, its data never read
            continue
        data = reader.read_exact(_padded(size))
        if data is None:
            numbering.member_lost()
            yield ShardProblem(bad_samples.TRUNCATED_TAR, offset)
            return
        yield name, data[:size], offset
    if files == 0 and (members or not resyncing):  # empty, zero blocks only, or only directories
        yield ShardProblem(bad_samples.EMPTY_SHARD, 0)


def _pax_size(text: str) -> Optional[int]:
    """A pax `size` record's value, None when it is not a plausible size."""
    try:
        size = int(text)
    except ValueError:
        return None
    return size if 0 <= size <= MAX_TAR_SIZE else None


_ZERO_BLOCK = bytes(BLOCK)
_REGULAR_FILE = (b"0", b"\0", b"7")  # '7': contiguous file, read like a regular one


_OCTAL = re.compile(rb" *[0-7]*[ \0]*")
BAD_SIZE = -1  # a header whose checksum holds but whose size field is no size


def _octal(field: bytes) -> Optional[int]:
    """An octal header field (digits, padded with spaces or NULs); None for anything else: a sign,
    an underscore or a space inside, which Python's int() would accept."""
    if not _OCTAL.fullmatch(field):
        return None
    digits = field.strip(b" \0")
    return int(digits, 8) if digits else 0


def _parse_header(block: bytes) -> Optional[tuple[str, int, bytes]]:
    """(name, size, type flag) of a header block whose checksum matches, None if it does not. The
    size is BAD_SIZE when the field is neither octal nor GNU base-256, or beyond MAX_TAR_SIZE (a
    negative base-256 size included): the member's extent is then unknown."""
    stored = _octal(block[148:156])
    if stored is None:
        return None
    # The checksum counts its own 8-byte field as spaces; some old writers summed signed bytes.
    unsigned = sum(block) - sum(block[148:156]) + 8 * 32
    if stored != unsigned and stored != unsigned - 256 * sum(b > 127 for b in block[:148] + block[156:]):
        return None
    size_field = block[124:136]
    if size_field[0] == 0x80:  # GNU base-256 for members over 8 GiB (0xff starts a negative number)
        size = int.from_bytes(size_field[1:], "big")
    else:
        size = _octal(size_field)
    if size is None or size > MAX_TAR_SIZE:
        size = BAD_SIZE
    name = block[:100].split(b"\0", 1)[0]
    if block[257:263] == b"ustar\0":  # POSIX ustar: long paths are split into prefix / name
        prefix = block[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    return _text(name), size, block[156:157]


def _text(data: bytes) -> str:
    """Names and pax values as text; bytes that are not UTF-8 become U+FFFD (keys must be valid
    text everywhere downstream: Arrow columns, logs, MLflow)."""
    return data.decode("utf-8", "replace")


def _pax_records(payload: bytes) -> dict[str, str]:
    """The 'LENGTH key=value' records of a pax extended header."""
    records, position = {}, 0
    while position < len(payload):
        length_text, _, _ = payload[position : position + 20].partition(b" ")
        try:
            length = int(length_text)
        except ValueError:
            break
        record = payload[position : position + length]
        key, _, value = record[len(length_text) + 1 :].rstrip(b"\n").partition(b"=")
        records[_text(key)] = _text(value)
        position += max(length, 1)
    return records


def _padded(size: int) -> int:
    return (size + BLOCK - 1) // BLOCK * BLOCK


def to_record(sample: RawSample, limits: TextLimits = TextLimits()) -> Record | str:
    """A usable Record, or the reason the sample is bad."""
    if sample.bad_reason:
        return sample.bad_reason
    fields = sample.fields
    images = sample_images(fields)
    if isinstance(images, str):
        return images
    caption_bytes = fields.get("txt", b"")
    if len(caption_bytes) > limits.max_caption_bytes:
        return bad_samples.CAPTION_TOO_LONG
    caption = caption_bytes.decode("utf-8", errors="replace").strip()
    label, conversation = -1, []
    if "json" in fields:
        meta = parse_metadata(fields["json"], limits, len(images))
        if isinstance(meta, str):
            return meta
        label, conversation = meta
    if not conversation:  # an image-caption pair: both are needed
        if not images:
            return bad_samples.MISSING_IMAGE
        if "txt" not in fields:
            return bad_samples.MISSING_CAPTION
        if not caption:
            return bad_samples.EMPTY_CAPTION
    first, more = (images[0], images[1:]) if images else (b"", ())
    return Record(sample.key, first, caption, label, json.dumps(conversation), sample.index, sample.offset, more)


NUMBERED_IMAGE = re.compile(r"^(\d{1,3})\.(" + "|".join(IMAGE_EXTENSIONS) + r")$")


def sample_images(fields: dict[str, bytes]) -> tuple[bytes, ...] | str:
    """A sample's images in order: one `jpg` (or png, ...) member, or members numbered `0.jpg`,
    `1.jpg`, ... from 0 without gaps (the reason the sample is bad otherwise); () when it has none."""
    numbered = {}
    for ext, data in fields.items():
        match = NUMBERED_IMAGE.match(ext)
        if match:
            numbered[int(match.group(1))] = data
    single = [ext for ext in IMAGE_EXTENSIONS if ext in fields]
    if numbered:
        if single or sorted(numbered) != list(range(len(numbered))):
            return bad_samples.IMAGE_NUMBERING
        return tuple(numbered[i] for i in range(len(numbered)))
    return (fields[single[0]],) if single else ()


def parse_metadata(text: bytes | str, limits: TextLimits = TextLimits(), images: int = 1) -> tuple[int, list] | str:
    """(label, conversation) from a sample's JSON metadata, or the reason it cannot be used."""
    if len(text) > limits.max_metadata_bytes:
        return bad_samples.METADATA_TOO_LARGE
    try:
        meta = json.loads(text)
    except (ValueError, RecursionError):
        return bad_samples.BAD_METADATA
    reason = metadata_problem(meta, limits, images)
    return reason if reason else (int(meta.get("label", -1)), meta.get("conversations", []))


def metadata_problem(meta, limits: TextLimits = TextLimits(), images: int = 1) -> str | None:
    """Why parsed metadata cannot be used, or None. Shared by the reader and `data convert`, so a
    shard that convert writes is one the reader accepts."""
    if not isinstance(meta, dict):
        return bad_samples.BAD_METADATA
    label = meta.get("label", -1)
    if isinstance(label, bool) or not isinstance(label, (int, float)) or label != label:
        return bad_samples.BAD_METADATA  # not a number, or NaN
    if label in (float("inf"), float("-inf")) or int(label) != label or not -(2**63) <= int(label) < 2**63:
        return bad_samples.BAD_METADATA  # 1e400, 2**70, 2.5: no int64 class index
    return conversation_problem(meta.get("conversations", []), limits.max_turns, images)


def conversation_problem(conversation, max_turns: int = TextLimits.max_turns, images: int = 1) -> str | None:
    """Why a LLaVA conversation cannot be used (None when it can): it must be a list of turns, each
    a mapping with a known speaker (human, gpt, system, ...) and string text, and hold one <image>
    placeholder per image of the sample (or be empty)."""
    if not isinstance(conversation, list):
        return bad_samples.BAD_CONVERSATION
    if len(conversation) > max_turns:
        return bad_samples.TOO_MANY_TURNS
    placeholders = 0
    for turn in conversation:
        if not isinstance(turn, dict):
            return bad_samples.BAD_CONVERSATION
        speaker = turn.get("from", turn.get("role"))
        text = turn.get("value", turn.get("content"))
        if not isinstance(speaker, str) or speaker not in ROLES or not isinstance(text, str):
            return bad_samples.BAD_CONVERSATION
        placeholders += text.count(IMAGE_PLACEHOLDER)
    if conversation and placeholders != images:
        return bad_samples.IMAGE_PLACEHOLDERS
    return None
