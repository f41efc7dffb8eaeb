"""`mmtrain embed | search | classify | ask | caption`: put a trained model to use."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mmtrain.jobs.options import add_checkpoint, add_data, add_json, add_out, add_pool_options, pool_options


def add_parsers(subparsers) -> None:
    embed = subparsers.add_parser("embed", help="CLIP image and caption embeddings of shards -> Parquet + index")
    _pool_arguments(embed, "CLIP")
    embed.set_defaults(handler=run_embed)

    search = subparsers.add_parser("search", help="text-to-image or image-to-image search over `mmtrain embed` output")
    search.add_argument("--index", type=Path, required=True, help="a directory `mmtrain embed` wrote")
    search.add_argument("query", nargs="?", default="", help='text, e.g. "a red circle on the left"')
    search.add_argument("--image", type=Path, help="search with an image file instead of text")
    search.add_argument("-k", type=int, default=10, help="results")
    add_out(search, "the contact sheet PNG of the results", default=Path("search.png"))
    search.add_argument(
        "--checkpoint", metavar="RUN", help="the CLIP run that built the index (default: the one its manifest names)"
    )
    add_json(search)
    search.set_defaults(handler=run_search)

    classify = subparsers.add_parser("classify", help="zero-shot classification of shards -> Parquet")
    _pool_arguments(classify, "CLIP")
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
    add_checkpoint(ask, "a VLM run directory or checkpoint")
    ask.add_argument(
        "--image",
        type=Path,
        required=True,
        action="append",
        help="an image file; repeat for several, shown in order (place them with <image> in the question)",
    )
    ask.add_argument("question", help='e.g. "How many shapes are there?"')
    ask.add_argument(
        "--max-new-tokens", type=int, default=0, help="answer length at most (default: the run's eval.max_new_tokens)"
    )
    ask.set_defaults(handler=run_ask)

    caption = subparsers.add_parser("caption", help="a trained VLM's answer to one prompt for every image of shards")
    _pool_arguments(caption, "VLM")
    caption.add_argument(
        "--prompt", default="", help="the instruction (default: the image alone, as stage 1 trained captions)"
    )
    caption.add_argument(
        "--max-new-tokens", type=int, default=0, help="answer length at most (default: the run's eval.max_new_tokens)"
    )
    caption.set_defaults(handler=run_caption)


def _pool_arguments(parser, run_kind: str) -> None:
    add_checkpoint(parser, f"a {run_kind} run directory or checkpoint")
    add_data(parser)
    add_out(parser, "output directory (Parquet files + manifest.json)")
    add_pool_options(parser)


def print_counts(manifest: dict, out: Path) -> None:
    from mmtrain.inference.pool import MANIFEST

    bad = ", ".join(f"{reason}={count}" for reason, count in sorted(manifest["bad_samples"].items()))
    print(
        f"wrote {manifest['rows_written']:,} rows to {out} in {manifest['seconds']} s "
        f"({manifest['samples_in_shards']:,} samples in {manifest['shards']} shards; "
        f"bad: {bad or 'none'}); manifest: {out / MANIFEST}"
    )


def run_embed(args) -> int:
    from mmtrain.inference.embed import embed

    manifest = embed(args.checkpoint, args.data, args.out, pool_options(args))
    print_counts(manifest, args.out)
    print(
        f"index: {args.out / manifest['index']['file']} ({manifest['index']['type']}); "
        f'search it with: mmtrain search --index {args.out} "a red circle"'
    )
    return 0


def run_search(args) -> int:
    from mmtrain.inference.search import contact_sheet, format_hits, read_images, read_manifest, search_index

    hits = search_index(args.index, args.query, args.image, args.k, args.checkpoint)
    if args.json:
        print(json.dumps([hit.__dict__ for hit in hits], indent=2))
    else:
        print(format_hits(hits))
    title = f"image: {args.image}" if args.image else f'"{args.query}"'
    images = read_images(hits, read_manifest(args.index)["data"])
    sheet = contact_sheet(hits, images, title, args.out)
    print(f"contact sheet: {sheet}", file=sys.stderr if args.json else sys.stdout)
    return 0


def run_classify(args) -> int:
    from mmtrain.inference.classify import CONFUSION_FIGURE, classify

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
    from mmtrain.inference.trained import find_trained
    from mmtrain.inference.vlm_stages import Answerer

    run = find_trained(args.checkpoint, "vlm", "ask")
    answer = Answerer(run, args.question, args.max_new_tokens, len(args.image)).answer_files(args.image)
    print(answer or "(the model answered with an end of turn at once: an empty answer)")
    return 0


def run_caption(args) -> int:
    from mmtrain.inference.vlm_stages import caption
    from mmtrain.pipelines.conversations import CAPTION_PROMPT

    manifest = caption(
        args.checkpoint, args.data, args.out, pool_options(args), args.prompt or CAPTION_PROMPT, args.max_new_tokens
    )
    print_counts(manifest, args.out)
    return 0
