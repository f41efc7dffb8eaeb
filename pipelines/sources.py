"""Turn the user's shard specs into concrete tar paths on one pyarrow filesystem.

A spec is a directory, a glob (`shards/train-*.tar`), a brace pattern
(`shards/{00000..00099}.tar`) or a URI pyarrow understands (`s3://bucket/prefix/`).
"""

from __future__ import annotations

import fnmatch
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlparse

import braceexpand
import pyarrow.fs as pafs

from mmtrain.pipelines.config import SourceConfig
from mmtrain.pipelines.mixture import MixturePlan, plan_mixture, source_names
from mmtrain.pipelines.tar_samples import count_samples

GLOB_CHARS = set("*?[")
# What a directory's shards are named; pyarrow decompresses .gz, .bz2 and .zst as it reads.
SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.zst")


@dataclass(frozen=True)
class ShardList:
    paths: list[str]  # paths as `filesystem` understands them (no scheme)
    filesystem: pafs.FileSystem
    specs: tuple[str, ...] = ()  # what they were listed from (a tokenizer.json may sit beside the first)
    mix: MixturePlan | None = None  # a mixture's shard copies (pipelines/mixture.py); None: each shard once

    def __len__(self) -> int:
        return len(self.paths)


def make_filesystem(uri: str, s3_endpoint: str = "") -> tuple[pafs.FileSystem, str]:
    """The filesystem for `uri` and the path on it; an S3 endpoint override for local servers."""
    scheme = urlparse(uri).scheme
    if scheme == "s3":
        endpoint = s3_endpoint or os.environ.get("AWS_ENDPOINT_URL", "")
        kwargs = {"region": os.environ.get("AWS_DEFAULT_REGION", "us-east-1")}
        if os.environ.get("AWS_ACCESS_KEY_ID"):
            # Explicit keys travel with the pickled filesystem to Ray workers whose env lacks them.
            kwargs.update(
                access_key=os.environ["AWS_ACCESS_KEY_ID"], secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "")
            )
        if endpoint:
            parsed = urlparse(endpoint if "://" in endpoint else f"http://{endpoint}")
            kwargs.update(endpoint_override=parsed.netloc, scheme=parsed.scheme or "http")
        return pafs.S3FileSystem(**kwargs), uri[len("s3://") :]
    if scheme in ("", "file"):
        return pafs.LocalFileSystem(), os.path.abspath(uri[len("file://") :] if scheme else uri)
    return pafs.FileSystem.from_uri(uri)


def resolve_shards(specs: list[str] | str, s3_endpoint: str = "") -> ShardList:
    """Expand every spec to sorted shard paths (.tar, or compressed: SHARD_SUFFIXES); raise
    ValueError naming a spec that matches nothing."""
    if isinstance(specs, str):
        specs = [specs]
    if not specs:
        raise ValueError("no shards given: pass a directory, glob, brace pattern or s3:// URI")
    filesystem, paths = None, []
    for spec in specs:
        for expanded in braceexpand.braceexpand(spec):
            fs, path = make_filesystem(expanded, s3_endpoint)
            if filesystem is None:
                filesystem = fs
            elif type(fs) is not type(filesystem):
                raise ValueError(f"shard specs mix filesystems ({specs}); keep them on one")
            try:
                found = _expand_one(fs, path)
            except OSError as err:  # nothing listens at the endpoint, no such bucket, no credentials
                raise ValueError(
                    f"cannot list shards at {expanded!r}: {err}. Check the endpoint (data.s3_endpoint "
                    "or AWS_ENDPOINT_URL), the bucket and the credentials"
                ) from None
            if not found:
                raise ValueError(
                    f"shard spec {expanded!r} matched no shards ({', '.join(SHARD_SUFFIXES)}); check the path"
                )
            paths.extend(found)
    return ShardList(paths=list(dict.fromkeys(paths)), filesystem=filesystem, specs=tuple(specs))


def _expand_one(fs: pafs.FileSystem, path: str) -> list[str]:
    if GLOB_CHARS & set(path):
        base = path[: min(path.index(c) for c in GLOB_CHARS if c in path)].rsplit("/", 1)[0]
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        return sorted(i.path for i in infos if i.is_file and fnmatch.fnmatch(i.path, path))
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
        return sorted(i.path for i in infos if i.is_file and i.path.endswith(SHARD_SUFFIXES))
    if info.type == pafs.FileType.File:
        return [path]
    return []


def count_dataset_samples(shards: ShardList) -> int:
    """Samples an epoch reads (good or bad), from the shards' tar headers or a mixture's plan."""
    return shards.mix.epoch_samples if shards.mix is not None else sum(count_shard_samples(shards))


def count_shard_samples(shards: ShardList) -> list[int]:
    """Samples in each shard (good or bad), from their tar headers; the shards are scanned in
    parallel threads (reading is I/O, and a seekable file is read only at its headers)."""

    def count(path: str) -> int:
        try:
            with shards.filesystem.open_input_file(path) as stream:
                return count_samples(stream)
        except OSError:  # unreadable: the read tasks count it as bad
            return 0

    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(count, shards.paths))


def resolve_mixture(sources: list[SourceConfig], s3_endpoint: str = "") -> ShardList:
    """The run's shard list for a mixture: every shard copy of the plan, in plan order. The sources'
    shards are listed and counted (from their tar headers) once, here."""
    names = source_names(sources)
    listed = [resolve_shards(source.shards, s3_endpoint) for source in sources]
    filesystem = listed[0].filesystem
    if any(type(shards.filesystem) is not type(filesystem) for shards in listed):
        raise ValueError("data.sources mix filesystems (local and s3://): keep a mixture's shards on one")
    plan = plan_mixture([count_shard_samples(shards) for shards in listed], [s.weight for s in sources], names)
    paths = [path for shards in listed for path in shards.paths]
    return ShardList([paths[i] for i in plan.shard_of], filesystem, listed[0].specs, mix=plan)
