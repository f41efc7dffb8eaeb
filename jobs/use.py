"""`mmtrain embed | search | classify | ask | caption`: put a trained model to use."""

from __future__ import annotations

import json
from pathlib import Path

POOL_HELP = "model replicas in the Ray Data actor pool (default 2)"


def add_parsers(subparsers) -> None:
    embed = subparsers.add_parser("embed", help="CLIP image and caption embeddings of shards -> Parquet + index")
    _pool_arguments(embed, "CLIP_RUN")
    embed.set_defaults(handler=run_embed)

    search = subparsers.add_parser("search", help="text-to-image or image-to-image search over `mmtrain embed` output")
    search.add_argument("--index", type=Path, required=True, help="a directory `mmtrain embed` wrote")
    search.add_argument("query", nargs="?", default="", help='text, e.g. "a red circle on the left"')
    search.add_argument("--image", type=Path, help="search with an image file instead of text")
    search.add_argument("-k", type=int, default=10, help="results (default 10)")
    search.add_argument("--sheet", type=Path, default=Path("search.png"), help="contact sheet PNG (default search.png)")
    search.add_argument("--checkpoint", help="the CLIP run that built the index (default: the one its manifest names)")
    search.add_argument("--json", action="store_true")
    search.set_defaults(handler=run_search)

    classify = subparsers.add_parser("classify", help="zero-shot classification of shards -> Parquet")
    _pool_arguments(classify, "CLIP_RUN")
    classify.add_argument("--classes", required=True, help='a file with one class per line, or "cat,dog,bird"')
    classify.add_argument(
        "--template",
        action="append",
        dest="templates",
        default=[],
        help="prompt with {} for the class name; repeatable (default: the templates in the "
        'shards\' manifest.json, else "a photo of a {}.")',
    )
    classify.set_defaults(handler=run_classify)

    ask = subparsers.add_parser("ask", help="ask a trained VLM about an image (or several)")
    ask.add_argument("--checkpoint", required=True, metavar="VLM_RUN", help="a VLM run directory or checkpoint")
    ask.add_argument(
        "--image",
        type=Path,
        required=True,
        action="append",
        help="an image file; repeat for several, shown in order (place them with <image> in the question)",
    )
    ask.add_argument("question", help='e.g. "How many shapes are there?"')
    ask.add_argument("--max-new-tokens", type=int, default=0, help="default: the run's eval.max_new_tokens")
    ask.set_defaults(handler=run_ask)

    caption = subparsers.add_parser("caption", help="a trained VLM's answer to one prompt for every image of shards")
    _pool_arguments(caption, "VLM_RUN")
    caption.add_argument(
        "--prompt", default="", help="the instruction (default: the image alone, as stage 1 trained captions)"
    )
    caption.add_argument("--max-new-tokens", type=int, default=0, help="default: the run's eval.max_new_tokens")
    caption.set_defaults(handler=run_caption)


def _pool_arguments(parser, run_kind: str) -> None:
    parser.add_argument("--checkpoint", required=True, metavar=run_kind, help="a run directory or checkpoint")
    parser.add_argument("--data", nargs="+", required=True, help="shards: dirs, globs, brace patterns or s3:// URIs")
    parser.add_argument("--out", type=Path, required=True, help="output directory (Parquet files + manifest.json)")
    parser.add_argument("--actors", type=int, default=2, help=POOL_HELP)
    parser.add_argument("--gpus-per-actor", type=float, default=0.0, help="GPUs per model replica (default 0: CPU)")
    parser.add_argument("--batch-size", type=int, default=128, help="rows per model call (default 128)")
    parser.add_argument(
        "--ray-address",
        default="",
        help='a Ray cluster ("auto" for the local `ray start` one); default: $RAY_ADDRESS, else a local instance',
    )


def pool_options(args):
    from inference.pool import PoolOptions

    if args.actors < 1 or args.batch_size < 1 or args.gpus_per_actor < 0:
        raise ValueError("--actors and --batch-size must be at least 1 and --gpus-per-actor at least 0")
    return PoolOptions(
        actors=args.actors, gpus_per_actor=args.gpus_per_actor, batch_size=args.batch_size, ray_address=args.ray_address
    )


def print_counts(manifest: dict, out: Path) -> None:
    from inference.pool import MANIFEST

    bad = ", ".join(f"{reason}={count}" for reason, count in sorted(manifest["bad_samples"].items()))
    print(
        f"wrote {manifest['rows_written']:,} rows to {out} in {manifest['seconds']} s "
        f"({manifest['samples_in_shards']:,} samples in {manifest['shards']} shards; "
        f"bad: {bad or 'none'}); manifest: {out / MANIFEST}"
    )


def run_embed(args) -> int:
    from inference.embed import embed

    manifest = embed(args.checkpoint, args.data, args.out, pool_options(args))
    print_counts(manifest, args.out)
    print(
        f"index: {args.out / manifest['index']['file']} ({manifest['index']['type']}); "
        f'search it with: mmtrain search --index {args.out} "a red circle"'
    )
    return 0


def run_search(args) -> int:
    from inference.search import contact_sheet, format_hits, read_images, read_manifest, search_index

    hits = search_index(args.index, args.query, args.image, args.k, args.checkpoint)
    if args.json:
        print(json.dumps([hit.__dict__ for hit in hits], indent=2))
    else:
        print(format_hits(hits))
    title = f"image: {args.image}" if args.image else f'"{args.query}"'
    images = read_images(hits, read_manifest(args.index)["data"])
    print(f"contact sheet: {contact_sheet(hits, images, title, args.sheet)}")
    return 0


def run_classify(args) -> int:
    from inference.classify import CONFUSION_FIGURE, classify

    manifest = classify(args.checkpoint, args.data, args.classes, args.templates, args.out, pool_options(args))
    print_counts(manifest, args.out)
    templates = len(manifest["templates"])
    print(
        f"{len(manifest['classes'])} classes in {templates} prompt template{'s' if templates > 1 else ''} "
        f"({manifest['templates'][0]!r}{', ...' if len(manifest['templates']) > 1 else ''})"
    )
    if "accuracy" in manifest:
        print(
            f"accuracy: {manifest['accuracy']:.4f} on {manifest['labelled_samples']:,} labelled samples; "
            f"confusion matrix: {args.out / CONFUSION_FIGURE}"
        )
    return 0


def run_ask(args) -> int:
    from inference.trained import find_trained
    from inference.vlm_stages import Answerer

    run = find_trained(args.checkpoint, "vlm", "ask")
    answer = Answerer(run, args.question, args.max_new_tokens, len(args.image)).answer_files(args.image)
    print(answer or "(the model answered with an end of turn at once: an empty answer)")
    return 0


def run_caption(args) -> int:
    from inference.vlm_stages import caption
    from pipelines.conversations import CAPTION_PROMPT

    manifest = caption(
        args.checkpoint, args.data, args.out, pool_options(args), args.prompt or CAPTION_PROMPT, args.max_new_tokens
    )
    print_counts(manifest, args.out)
    return 0
