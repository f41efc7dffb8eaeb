"""Write WebDataset tar shards: members sorted by key, size-capped, with a checksummed manifest.

Ray's reader needs a sample's members adjacent, so each shard is buffered and written sorted.
Fixed member metadata (mtime 0, no owner) makes the same input give byte-identical shards.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

MANIFEST = "manifest.json"


@dataclass
class ShardInfo:
    name: str
    split: str
    num_samples: int
    num_bytes: int
    sha256: str


@dataclass
class ShardWriter:
    """Collect samples ({'__key__': str, ext: bytes, ...}) into `OUT/{split}-{index:05d}.tar`."""

    out_dir: Path
    split: str
    max_samples: int = 10_000
    max_bytes: int = 256 * 1024 * 1024
    shards: list[ShardInfo] = field(default_factory=list)
    _pending: list[dict] = field(default_factory=list)
    _pending_bytes: int = 0

    def __post_init__(self):
        self.out_dir = Path(self.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.max_samples < 1 or self.max_bytes < 1:
            raise ValueError("shard size must be at least 1 sample and 1 byte")

    def write(self, sample: dict) -> None:
        size = sum(len(v) for k, v in sample.items() if k != "__key__")
        if self._pending and (len(self._pending) >= self.max_samples or self._pending_bytes + size > self.max_bytes):
            self._flush()
        self._pending.append(sample)
        self._pending_bytes += size

    def close(self) -> list[ShardInfo]:
        if self._pending:
            self._flush()
        return self.shards

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is None:
            self.close()

    def _flush(self) -> None:
        name = f"{self.split}-{len(self.shards):05d}.tar"
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for sample in sorted(self._pending, key=lambda s: s["__key__"]):
                for ext in sorted(k for k in sample if k != "__key__"):
                    _add_member(tar, f"{sample['__key__']}.{ext}", sample[ext])
        data = buffer.getvalue()
        (self.out_dir / name).write_bytes(data)
        self.shards.append(ShardInfo(name, self.split, len(self._pending), len(data), hashlib.sha256(data).hexdigest()))
        self._pending, self._pending_bytes = [], 0


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def write_manifest(out_dir: Path, shards: list[ShardInfo], extra: dict | None = None) -> dict:
    """manifest.json: per-shard counts and sha256, and sample totals per split."""
    splits: dict[str, int] = {}
    for shard in shards:
        splits[shard.split] = splits.get(shard.split, 0) + shard.num_samples
    manifest = {
        "splits": splits,
        "shards": [shard.__dict__ for shard in shards],
        **(extra or {}),
    }
    (Path(out_dir) / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def encode_text(text: str) -> bytes:
    return text.encode("utf-8")


def encode_json(value) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8")
