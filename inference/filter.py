"""`mmtrain data filter`: new shards holding only the samples whose image-caption CLIP score passes a
threshold (as DataComp filters a scraped pool), with a manifest of the threshold and every count.

Two passes: the CLIP run scores every sample in the actor pool, then each source shard is copied
member by member (the original bytes, no re-encoding) keeping the samples that passed. A sample is
either kept, below the threshold, or bad (counted by reason); nothing leaves silently.
"""

from __future__ import annotations

import hashlib
import shutil
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

import numpy as np
import pyarrow as pa
import ray

from mmtrain.inference.clip_stages import ClipEmbedder
from mmtrain.inference.pool import PoolOptions, run_summary, start_inference
from mmtrain.inference.progress import ProgressPrinter
from mmtrain.inference.trained import find_trained
from mmtrain.pipelines.image_folder import image_files
from mmtrain.pipelines.shard_writer import ShardInfo, _add_member, write_manifest
from mmtrain.pipelines.sources import SHARD_SUFFIXES, ShardList
from mmtrain.pipelines.tar_samples import iter_raw_samples
from mmtrain.training.tasks.resolve import manifest_near


def filter_shards(
    checkpoint: str | Path,
    specs: list[str],
    out_dir: Path,
    options: PoolOptions,
    min_score: float | None = None,
    keep_fraction: float | None = None,
) -> dict:
    if (min_score is None) == (keep_fraction is None):
        raise ValueError("give one of --min-score S or --keep-fraction F")
    if keep_fraction is not None and not 0 < keep_fraction <= 1:
        raise ValueError(f"--keep-fraction {keep_fraction}: must be in (0, 1]")
    out_dir = Path(out_dir)
    if any(out_dir.glob("*.tar")):
        raise ValueError(f"--out {out_dir} already holds shards: choose a new directory or remove it")
    run = find_trained(checkpoint, "clip", "data filter")
    if len(specs) == 1 and image_files(specs[0]):
        raise ValueError(
            f"--data {specs[0]} is a folder of images: `data filter` writes shards from shards; "
            "make shards first with `mmtrain data convert FOLDER --format folder --out SHARDS`"
        )
    inference = start_inference(run, specs, ClipEmbedder, {}, options)
    with ProgressPrinter(inference.counter, inference.total_samples, "score"):
        scored = ray.get(inference.dataset.select_columns(["shard", "key", "clip_score"]).to_arrow_refs())
    table = pa.concat_tables(scored) if scored else None
    scores = table.column("clip_score").to_numpy() if table is not None else np.zeros(0, np.float32)
    threshold = float(min_score) if min_score is not None else fraction_threshold(scores, keep_fraction)
    passed = scores >= threshold
    keep: dict[str, set[str]] = {path: set() for path in inference.shards.paths}
    if table is not None:
        for shard, key in zip(
            table.column("shard").to_numpy(zero_copy_only=False)[passed],
            table.column("key").to_numpy(zero_copy_only=False)[passed],
        ):
            keep[shard].add(key)
    copied = copy_kept(inference.shards, keep, out_dir)
    shards = [info for info, _ in copied]
    lost = sum(missing for _, missing in copied)
    summary = run_summary(inference, run, specs, int(passed.sum()))
    extra = {
        "filter": {
            "score": "cosine of the CLIP run's image and caption embeddings",
            "min_score": min_score,
            "keep_fraction": keep_fraction,
            "threshold": threshold,
            "scored": int(len(scores)),
            "kept": int(passed.sum()) - lost,
            "below_threshold": int((~passed).sum()),
            "lost_on_second_read": lost,
            **summary,
        }
    }
    if lost:
        print(
            f"mmtrain: warning: {lost} samples that passed the filter could not be read again (did a shard "
            "change, or fail mid-read?); the manifest counts them as lost_on_second_read"
        )
    extra.update(carry_over_data_files(specs, out_dir))
    return write_manifest(out_dir, shards, extra)


def fraction_threshold(scores: np.ndarray, keep_fraction: float) -> float:
    """The score of the last sample kept when the top `keep_fraction` are kept (ties keep more)."""
    if len(scores) == 0:
        return 0.0
    kept = max(1, int(round(keep_fraction * len(scores))))
    return float(np.sort(scores)[::-1][kept - 1])


def copy_kept(shards: ShardList, keep: dict[str, set[str]], out_dir: Path) -> list[tuple[ShardInfo, int]]:
    """One output shard per source shard (same name, as a plain .tar), in parallel threads; with
    each, how many of its passed samples were not found again."""
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [output_name(path) for path in shards.paths]
    if len(set(names)) != len(names):
        names = [f"{index:05d}-{name}" for index, name in enumerate(names)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(
            pool.map(
                lambda args: copy_shard(shards, *args),
                zip(shards.paths, names, [keep[p] for p in shards.paths], [out_dir] * len(names)),
            )
        )


def copy_shard(shards: ShardList, source: str, name: str, keys: set[str], out_dir: Path) -> tuple[ShardInfo, int]:
    """Copy the samples named in `keys`; a shard that fails mid-read keeps what was copied, and the
    samples not found again are counted, never a failure of the other shards."""
    written = set()
    path = out_dir / name
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        try:
            with shards.filesystem.open_input_file(source) as stream:
                for sample in iter_raw_samples(stream):
                    if sample.bad_reason is None and sample.key in keys and sample.key not in written:
                        for ext in sorted(sample.fields):
                            _add_member(tar, f"{sample.key}.{ext}", sample.fields[ext])
                        written.add(sample.key)
        except Exception as err:  # the containment boundary for one shard
            print(f"mmtrain: warning: {source}: reading stopped ({type(err).__name__}: {err})")
    data = path.read_bytes()
    info = ShardInfo(
        name,
        name.split("-")[0] if "-" in name else "filtered",
        len(written),
        len(data),
        hashlib.sha256(data).hexdigest(),
    )
    return info, len(keys - written)


def output_name(source: str) -> str:
    name = PurePosixPath(source).name
    for suffix in sorted(SHARD_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return name[: -len(suffix)] + ".tar"
    return name


def carry_over_data_files(specs: list[str], out_dir: Path) -> dict:
    """The source's class names and caption templates (for zero-shot eval) and its tokenizer.json
    (so the filtered shards train as they are)."""

    source = manifest_near(specs[0])
    first = Path(specs[0])
    tokenizer = (first if first.is_dir() else first.parent) / "tokenizer.json"
    if "://" not in specs[0] and tokenizer.is_file():
        shutil.copy(tokenizer, out_dir / "tokenizer.json")
    return {key: source[key] for key in ("classes", "templates") if key in source}
