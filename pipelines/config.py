"""Config sections owned by the data layer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from pipelines.tar_samples import TextLimits


class InvalidValue(ValueError):
    """A config value of the right type that cannot work; the message starts with the key's name,
    and the config loader puts the section's path in front of it."""


def at_least(section, minimum: float, *names: str) -> None:
    """Refuse a value of `section.name` below `minimum` (at load time, not inside a worker)."""
    for name in names:
        value = getattr(section, name)
        if value < minimum:
            raise InvalidValue(f"{name}={value!r}: must be at least {minimum}")


@dataclass(frozen=True)
class AugmentConfig:
    """Train: random resized crop + horizontal flip. Eval: resize shorter side + centre crop."""

    image_size: int = 64
    crop_scale: tuple[float, float] = (0.5, 1.0)  # area fraction range of the random crop
    crop_ratio: tuple[float, float] = (0.75, 1.3333)  # aspect ratio range of the random crop
    hflip: bool = True
    eval_resize_ratio: float = 1.0  # eval resizes the shorter side to image_size / ratio, then crops
    # Eval: false resizes the whole image to image_size x image_size instead (SigLIP's preprocessing);
    # the VLM sets it from its vision tower's preprocessor config.
    eval_center_crop: bool = True

    def __post_init__(self):
        at_least(self, 1, "image_size")


@dataclass(frozen=True)
class DataConfig:
    train_shards: list[str] = field(default_factory=list)  # dirs, globs, brace patterns, s3:// URIs
    eval_shards: list[str] = field(default_factory=list)
    tokenizer: str = ""  # tokenizer.json or an HF model directory; "" = <first shard dir>/tokenizer.json
    context_length: int = 32
    with_conversations: bool = False  # carry the LLaVA conversation column (VLM data)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    max_image_pixels: int = 64_000_000  # read from the image header before decoding
    # Bounds on a sample's text, checked before parsing or tokenizing; a sample over one is skipped and counted.
    max_caption_bytes: int = TextLimits.max_caption_bytes
    max_metadata_bytes: int = TextLimits.max_metadata_bytes  # the .json member (label, conversation)
    max_conversation_turns: int = TextLimits.max_turns
    max_bad_fraction: float = 0.05  # fail the run when more samples than this are bad
    min_samples_for_bad_check: int = 200  # don't judge the fraction on the first few samples
    shuffle_seed: Optional[int] = 0  # shard order, in-shard order, local buffer and augmentation; None = not reproducible
    read_shuffle_buffer: int = 512  # samples each read task holds to shuffle within its shard, per (seed, epoch); 0 = file order
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
        at_least(self, 1, "context_length", "decode_batch_size")
        at_least(self, 0, "workers", "shuffle_buffer_size", "read_shuffle_buffer", "max_bad_fraction", "data_cpu_limit")
        if self.cpus_per_worker <= 0:
            raise InvalidValue(f"cpus_per_worker={self.cpus_per_worker!r}: must be more than 0")

    @property
    def text_limits(self) -> TextLimits:
        return TextLimits(self.max_caption_bytes, self.max_metadata_bytes, self.max_conversation_turns)
