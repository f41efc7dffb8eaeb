"""Read shards directly (no Ray) for `mmtrain data inspect` and `mmtrain data tokenizer`."""

from __future__ import annotations

import json
from collections import Counter
from typing import Iterator

from mmtrain.pipelines import bad_samples
from mmtrain.pipelines.images import BadSample, open_image
from mmtrain.pipelines.sources import ShardList, resolve_shards
from mmtrain.pipelines.tar_samples import Bad, Record, TextLimits, iter_records


def iter_shard_records(shards: ShardList, path: str, limits: TextLimits = TextLimits()) -> Iterator[Record | str]:
    """Records of one shard, or reason strings for what could not be used (the pipeline's reader)."""
    try:
        stream = shards.filesystem.open_input_stream(path)
    except OSError:
        yield bad_samples.UNREADABLE_SHARD
        return
    with stream:
        for record in iter_records(stream, limits=limits):
            yield record.reason if isinstance(record, Bad) else record


def inspect_shards(
    specs: list[str],
    max_pixels: int = 64_000_000,
    s3_endpoint: str = "",
    progress=None,
    limits: TextLimits = TextLimits(),
) -> dict:
    """Per shard: samples, decodable images, bad samples by reason, labels seen."""
    shards = resolve_shards(specs, s3_endpoint)
    report = {"shards": [], "total": {"samples": 0, "good": 0, "bad": {}}}
    total_bad: Counter[str] = Counter()
    for path in shards.paths:
        good, bad, labels = 0, Counter(), Counter()
        for record in iter_shard_records(shards, path, limits):
            if isinstance(record, str):
                bad[record] += 1
                continue
            try:
                for image in record.images:  # several for a multi-image conversation, none for text-only
                    open_image(image, max_pixels).load()
                good += 1
                labels[record.label] += 1
            except BadSample as err:
                bad[err.reason] += 1
            except Exception:  # truncated pixel data only fails at load()
                bad[bad_samples.NOT_AN_IMAGE] += 1
        samples = good + sum(v for k, v in bad.items() if k not in bad_samples.SHARD_LEVEL)
        report["shards"].append(
            {
                "path": path,
                "samples": samples,
                "good": good,
                "bad": dict(bad),
                "labels": len([k for k in labels if k >= 0]),
            }
        )
        report["total"]["samples"] += samples
        report["total"]["good"] += good
        total_bad.update(bad)
        if progress:
            progress(1)
    report["total"]["bad"] = dict(total_bad)
    return report


def format_report(report: dict) -> str:
    lines = [f"{'shard':<48} {'samples':>8} {'good':>8}  bad"]
    for shard in report["shards"]:
        bad = ", ".join(f"{k}={v}" for k, v in sorted(shard["bad"].items())) or "-"
        lines.append(f"{shard['path'][-48:]:<48} {shard['samples']:>8} {shard['good']:>8}  {bad}")
    total = report["total"]
    bad = ", ".join(f"{k}={v}" for k, v in sorted(total["bad"].items())) or "none"
    lines.append(f"{'TOTAL':<48} {total['samples']:>8} {total['good']:>8}  {bad}")
    return "\n".join(lines)


def iter_captions(specs: list[str], s3_endpoint: str = "") -> Iterator[str]:
    """Captions and conversation turns, for training a tokenizer."""
    shards = resolve_shards(specs, s3_endpoint)
    for path in shards.paths:
        for record in iter_shard_records(shards, path):
            if isinstance(record, Record):
                yield record.caption
                for turn in json.loads(record.conversation):  # turns the reader checked: strings
                    yield turn.get("value", turn.get("content", ""))
