"""`mmtrain data ...`: make, convert, inspect shards and train a caption tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

from tqdm import tqdm

from mmtrain.jobs.options import (
    add_checkpoint,
    add_data,
    add_json,
    add_out,
    add_pool_options,
    add_s3_endpoint,
    pool_options,
)
from mmtrain.pipelines.convert import DEFAULT_TEMPLATES, FORMATS, ConvertOptions, convert
from mmtrain.pipelines.inspection import format_report, inspect_shards, iter_captions
from mmtrain.pipelines.synth import write_synth
from mmtrain.pipelines.tokenizer import train_bpe_tokenizer


def add_parsers(subparsers) -> None:
    data = subparsers.add_parser("data", help="make, convert and inspect WebDataset shards")
    commands = data.add_subparsers(dest="data_command", required=True)
    _add_synth(commands)
    _add_convert(commands)
    _add_inspect_and_tokenizer(commands)
    add_filter_parser(commands)


def _add_synth(commands) -> None:
    synth = commands.add_parser("synth", help="write the synthetic shapes dataset")
    add_out(synth, "directory for the shards, manifest.json and tokenizer.json")
    synth.add_argument("--train", type=int, default=4000, help="training samples")
    synth.add_argument("--val", type=int, default=500, help="held-out samples")
    synth.add_argument("--image-size", type=int, default=64, help="image side in pixels")
    synth.add_argument("--seed", type=int, default=0, help="the random seed: the same seed writes the same shards")
    synth.add_argument("--shard-samples", type=int, default=1000, help="samples per shard at most")
    synth.set_defaults(handler=run_synth)


def _add_convert(commands) -> None:
    conv = commands.add_parser("convert", help="convert images + captions into shards")
    conv.add_argument(
        "src", type=Path, help="a folder, a .csv/.jsonl/.parquet file, a LLaVA .json/.jsonl, or a folder of IDX files"
    )
    add_out(conv, "directory for the shards, manifest.json and tokenizer.json")
    conv.add_argument("--format", required=True, choices=FORMATS, help="what SRC is: " + ", ".join(FORMATS))
    conv.add_argument("--split", default="train", help="split name for folder/table sources")
    conv.add_argument(
        "--val-fraction",
        type=float,
        default=0.0,
        metavar="F",
        help="hold out this fraction of the samples as the `val` split (chosen by a hash of each sample's key, "
        "so a re-run holds out the same ones); 0 = none",
    )
    conv.add_argument("--classes", type=Path, help="class names, one per line (idx format)")
    conv.add_argument(
        "--template",
        action="append",
        dest="templates",
        help="caption template with {} for the class name; repeatable "
        f"(default: {len(DEFAULT_TEMPLATES)} CLIP-style templates)",
    )
    conv.add_argument("--image-column", default="", help="a table's image column (default: found by name)")
    conv.add_argument("--caption-column", default="", help="a table's caption column (default: found by name)")
    conv.add_argument("--label-column", default="", help="a table's class-label column (default: found by name)")
    conv.add_argument(
        "--image-root",
        type=Path,
        default=None,
        help="where a table's image paths may point (default: the table's directory); paths "
        "and links leading elsewhere are skipped and counted as outside_source",
    )
    conv.add_argument("--shard-samples", type=int, default=10_000, help="samples per shard at most")
    conv.add_argument("--shard-mb", type=float, default=256, help="MiB per shard at most")
    conv.add_argument("--seed", type=int, default=0, help="the seed of the shuffle that spreads samples over shards")
    conv.add_argument(
        "--resize",
        type=int,
        default=0,
        metavar="PIXELS",
        help="scale images down to this shorter side and store them as JPEG, so training "
        "decodes fewer pixels (e.g. 256 for 224px training); default: keep the bytes",
    )
    conv.add_argument("--quality", type=int, default=95, help="JPEG quality of resized images")
    conv.add_argument("--workers", type=int, default=0, help="processes that resize (default: one per core)")
    conv.set_defaults(handler=run_convert)


def _add_inspect_and_tokenizer(commands) -> None:
    insp = commands.add_parser("inspect", help="count samples and bad samples by reason")
    add_data(insp)
    add_json(insp)
    insp.add_argument(
        "--max-pixels", type=int, default=64_000_000, help="an image above this is counted bad (decompression bombs)"
    )
    add_s3_endpoint(insp)
    insp.set_defaults(handler=run_inspect)

    tok = commands.add_parser("tokenizer", help="train a BPE tokenizer on the shards' captions")
    add_data(tok)
    add_out(tok, "the tokenizer.json to write")
    tok.add_argument("--vocab-size", type=int, default=4096, help="BPE vocabulary size")
    add_s3_endpoint(tok)
    tok.set_defaults(handler=run_tokenizer)


def run_synth(args) -> int:
    with tqdm(total=args.train + args.val, desc="synth", unit="sample") as bar:
        splits = write_synth(
            args.out, args.train, args.val, args.image_size, args.seed, args.shard_samples, progress=bar.update
        )
    write_tokenizer([str(args.out)], args.out / "tokenizer.json")
    print(f"wrote {splits} samples to {args.out} (+ manifest.json, tokenizer.json)")
    return 0


class FirstUpdateBar:
    """A tqdm bar that appears with the first sample: a source refused before any is read prints
    its error alone, not after an empty bar."""

    def __init__(self, **tqdm_args):
        self._args, self._bar = tqdm_args, None

    def update(self, count: int = 1) -> None:
        if self._bar is None:
            self._bar = tqdm(**self._args)
        self._bar.update(count)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def run_convert(args) -> int:
    options = ConvertOptions(
        format=args.format,
        split=args.split,
        val_fraction=args.val_fraction,
        classes_file=args.classes,
        templates=tuple(args.templates) if args.templates else DEFAULT_TEMPLATES,
        image_column=args.image_column,
        caption_column=args.caption_column,
        label_column=args.label_column,
        shard_samples=args.shard_samples,
        shard_bytes=int(args.shard_mb * 1024 * 1024),
        seed=args.seed,
        resize=args.resize,
        quality=args.quality,
        workers=args.workers,
        image_root=args.image_root,
    )
    bar = FirstUpdateBar(desc="convert", unit="sample")
    try:
        manifest = convert(args.src, args.out, options, progress=bar.update)
    finally:
        bar.close()
    write_tokenizer([str(args.out)], args.out / "tokenizer.json")
    skipped = manifest.get("skipped") or {}
    resized = manifest.get("resize", {}).get("resized")
    print(
        f"wrote {manifest['splits']} samples in {len(manifest['shards'])} shards to {args.out}"
        f"{f' ({resized} resized to a {args.resize}px shorter side)' if resized is not None else ''}"
        f"{f'; skipped {skipped}' if skipped else ''} (+ manifest.json, tokenizer.json)"
    )
    return 0


def run_inspect(args) -> int:
    report = inspect_shards(args.data, args.max_pixels, args.s3_endpoint)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def run_tokenizer(args) -> int:
    vocab = write_tokenizer(args.data, args.out, args.vocab_size, args.s3_endpoint)
    print(f"wrote {args.out} ({vocab} tokens)")
    return 0


def write_tokenizer(shards: list[str], out: Path, vocab_size: int = 4096, s3_endpoint: str = "") -> int:
    tokenizer = train_bpe_tokenizer(iter_captions(shards, s3_endpoint), vocab_size)
    out.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out))
    return tokenizer.get_vocab_size()


def add_filter_parser(commands) -> None:
    filt = commands.add_parser("filter", help="keep only samples whose image-caption CLIP score passes")
    add_checkpoint(filt, "a CLIP run directory or checkpoint")
    add_data(filt)
    add_out(filt, "directory for the filtered shards and manifest.json")
    threshold = filt.add_mutually_exclusive_group(required=True)
    threshold.add_argument("--min-score", type=float, help="keep samples whose CLIP score (cosine) is at least S")
    threshold.add_argument("--keep-fraction", type=float, help="keep the best-scoring fraction F of the samples")
    add_pool_options(filt)
    filt.set_defaults(handler=run_filter)


def run_filter(args) -> int:
    from mmtrain.inference.filter import filter_shards

    manifest = filter_shards(
        args.checkpoint, args.data, args.out, pool_options(args), args.min_score, args.keep_fraction
    )
    record = manifest["filter"]
    bad = ", ".join(f"{k}={v}" for k, v in sorted(record["bad_samples"].items())) or "none"
    print(
        f"kept {record['kept']:,} of {record['scored']:,} scored samples (threshold {record['threshold']:.4f}; "
        f"{record['below_threshold']:,} below it; bad: {bad}) in {len(manifest['shards'])} shards at {args.out}"
    )
    return 0
