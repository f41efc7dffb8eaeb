"""Config sections owned by the data layer."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Optional

from mmtrain.pipelines.tar_samples import TextLimits


class InvalidValue(ValueError):
    """A config value of the right type that cannot work; the message starts with the key's name,
    and the config loader puts the section's path in front of it."""


@dataclass(frozen=True)
class Range:
    """The values a numeric key may take (each item of a tuple key, too)."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False  # low itself is excluded
    high_open: bool = False

    def contains(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def __str__(self) -> str:
        if self.high == math.inf:
            return f"{'more than' if self.low_open else 'at least'} {self.low:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


def at_least(low: float) -> Range:
    return Range(low)


def above(low: float) -> Range:
    return Range(low, low_open=True)


def within(low: float, high: float, low_open: bool = False, high_open: bool = False) -> Range:
    return Range(low, high, low_open, high_open)


ANY_FINITE = Range()


class Checked:
    """A config section whose numbers are finite and each within its declared range. Every numeric
    key names its range in RANGES (a test enforces it), so a value that cannot work is refused when
    the config loads, not inside a worker: NaN passes every `<` check, so finiteness is its own rule."""

    RANGES: ClassVar[dict[str, Range]] = {}

    def __post_init__(self):
        check_ranges(self)


def check_ranges(section) -> None:
    for name, allowed in section.RANGES.items():
        value = getattr(section, name)
        items = value if isinstance(value, (tuple, list)) else (value,)
        for item in items:
            if item is None:
                continue
            if not math.isfinite(item):
                raise InvalidValue(f"{name}={value!r}: must be a finite number")
            if not allowed.contains(item):
                raise InvalidValue(f"{name}={value!r}: must be {allowed}")


def ordered_pair(section, name: str) -> None:
    """A (low, high) key must not run backwards."""
    low, high = getattr(section, name)
    if low > high:
        raise InvalidValue(f"{name}={list(getattr(section, name))!r}: the first value must not exceed the second")


@dataclass(frozen=True)
class AugmentConfig(Checked):
    """Train: random resized crop + horizontal flip. Eval: resize shorter side + centre crop."""

    RANGES = {
        "image_size": at_least(1),
        "crop_scale": within(0, 1, low_open=True),
        "crop_ratio": above(0),
        "eval_resize_ratio": within(0, 1, low_open=True),
    }

    image_size: int = 64
    crop_scale: tuple[float, float] = (0.5, 1.0)  # area fraction range of the random crop
    crop_ratio: tuple[float, float] = (0.75, 1.3333)  # aspect ratio range of the random crop
    hflip: bool = True
    eval_resize_ratio: float = 1.0  # eval resizes the shorter side to image_size / ratio, then crops
    # Eval: false resizes the whole image to image_size x image_size instead (SigLIP's preprocessing);
    # the VLM sets it from its vision tower's preprocessor config.
    eval_center_crop: bool = True

    def __post_init__(self):
        super().__post_init__()
        ordered_pair(self, "crop_scale")
        ordered_pair(self, "crop_ratio")


@dataclass(frozen=True)
class SourceConfig(Checked):
    """One dataset of a mixture: its shards and its share of each epoch."""

    RANGES = {"weight": above(0)}

    shards: list[str] = field(default_factory=list)  # dirs, globs, brace patterns, s3:// URIs
    weight: float = 1.0  # relative: the weights of a mixture need not sum to 1
    name: str = ""  # in metrics (train_data/source/NAME/...); "" = source0, source1, ...

    def __post_init__(self):
        super().__post_init__()
        if not self.shards:
            raise InvalidValue("shards is empty: list the source's shards (dir, glob, brace pattern or s3://)")


@dataclass(frozen=True)
class PackingConfig(Checked):
    """VLM training rows that hold several samples (pipelines/packing.py); max_tokens 0 = one sample per row."""

    RANGES = {"max_tokens": at_least(0), "max_images": at_least(0), "max_samples": at_least(0)}

    max_tokens: int = 0  # a packed row's length; at least the VLM's max_length
    max_images: int = 0  # images per packed row; 0 = as many as max_tokens holds
    # Samples per packed row; 0 = max_tokens / 16. A run of loop.max_steps (not loop.epochs) plans its
    # stream for rows this full, and the pipeline reads ahead through the plan: near max_tokens / the
    # mean sample's tokens saves reading samples that are never trained on.
    max_samples: int = 0

    @property
    def enabled(self) -> bool:
        return self.max_tokens > 0

    @property
    def samples_per_row(self) -> int:
        """The most samples one training row holds (1 unpacked)."""
        return (self.max_samples or max(1, self.max_tokens // 16)) if self.enabled else 1


@dataclass(frozen=True)
class DataConfig(Checked):
    RANGES = {
        "context_length": at_least(1),
        "max_image_pixels": at_least(1),
        "max_caption_bytes": at_least(1),
        "max_metadata_bytes": at_least(1),
        "max_conversation_turns": at_least(1),
        "max_images_per_sample": at_least(1),
        "max_bad_fraction": within(0, 1),
        "min_samples_for_bad_check": at_least(0),
        "shuffle_seed": at_least(0),
        "read_shuffle_buffer": at_least(0),
        "shuffle_buffer_size": at_least(0),
        "decode_batch_size": at_least(1),
        "tokenize_batch_size": at_least(0),
        "workers": at_least(0),
        "cpus_per_worker": above(0),
        "tokenize_actors": at_least(0),
        "data_cpu_limit": at_least(0),
    }

    train_shards: list[str] = field(default_factory=list)  # dirs, globs, brace patterns, s3:// URIs
    # or a mixture by weight (pipelines/mixture.py): [{shards: [...], weight: 2.0, name: vqa}, ...]
    sources: list[SourceConfig] = field(default_factory=list)
    eval_shards: list[str] = field(default_factory=list)
    tokenizer: str = ""  # tokenizer.json or an HF model directory; "" = <first shard dir>/tokenizer.json
    context_length: int = 32
    # VLM data: carry the LLaVA conversation column, and each row's images in image slots
    with_conversations: bool = False
    max_images_per_sample: int = 1  # VLM: a sample with more images is skipped and counted
    packing: PackingConfig = field(default_factory=PackingConfig)  # VLM training only
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    max_image_pixels: int = 64_000_000  # read from the image header before decoding
    # Bounds on a sample's text, checked before parsing or tokenizing; a sample over one is skipped and counted.
    max_caption_bytes: int = TextLimits.max_caption_bytes
    max_metadata_bytes: int = TextLimits.max_metadata_bytes  # the .json member (label, conversation)
    max_conversation_turns: int = TextLimits.max_turns
    max_bad_fraction: float = 0.05  # fail the run when more samples than this are bad
    min_samples_for_bad_check: int = 200  # don't judge the fraction on the first few samples
    # shard order, in-shard order, local buffer and augmentation; None = not reproducible
    shuffle_seed: Optional[int] = 0
    # samples each read task holds to shuffle within its shard, per (seed, epoch); 0 = file order
    read_shuffle_buffer: int = 512
    shuffle_buffer_size: int = 1024  # rows in the consumer's local shuffle buffer (mixes shards); 0 = off
    # Rows per block the reader yields. Ray then coalesces a read task's blocks up to its target block
    # size (128 MiB), so the stages see up to a whole shard per call, whatever this is.
    decode_batch_size: int = 64
    tokenize_batch_size: int = 0  # unused since the stages were fused; still read from saved configs
    # Read, decode and tokenize run fused in one pool of actors (see pipelines/dataset.py).
    workers: int = 0  # actors in the pool; 0 = as many as data_cpu_limit / cpus_per_worker, at most one per shard
    cpus_per_worker: float = 1.0
    tokenize_actors: int = 0  # unused since the stages were fused; still read from saved configs
    data_cpu_limit: float = 0.0  # CPUs Ray Data may use at once; 0 = leave one CPU per train worker
    s3_endpoint: str = ""  # e.g. http://127.0.0.1:9000 for an S3-compatible server; "" = AWS

    def __post_init__(self):
        super().__post_init__()
        if self.sources and self.train_shards:
            raise InvalidValue("train_shards and sources are both set: train on one list of shards, or a mixture")

    @property
    def train_specs(self) -> list[str]:
        """The training shards' specs (a mixture's first source's): where a tokenizer.json may sit."""
        return self.train_shards or (self.sources[0].shards if self.sources else [])

    @property
    def text_limits(self) -> TextLimits:
        return TextLimits(self.max_caption_bytes, self.max_metadata_bytes, self.max_conversation_turns)
