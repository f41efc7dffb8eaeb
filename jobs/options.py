"""The command line's shared vocabulary: one name and one help text per concept, so every command
that reads shards says --data, every one that writes says --out, and so on; and the help format
that shows each option's default and ends each command with an example (jobs/examples.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

SHARDS_HELP = "shards: directories, globs, brace patterns or s3:// URIs"
SET_HELP = "override a config key, e.g. --set loop.max_steps=100 (repeatable)"


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Argparse's layout with each option's default appended (unless its help already says it), and
    the description and example kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        nothing = default is None or default is False or default in ([], "", argparse.SUPPRESS)  # 0 is shown
        if "default" in text or nothing or action.required:
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """Every (sub)command's parser: subparsers take the parser's class, so all of them get this."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def add_data(parser, help: str = SHARDS_HELP, required: bool = True) -> None:
    parser.add_argument("--data", nargs="+", required=required, metavar="SHARDS", help=help)


def add_out(parser, help: str, default: Path | None = None) -> None:
    parser.add_argument("--out", type=Path, required=default is None, default=default, metavar="PATH", help=help)


def add_checkpoint(parser, help: str = "a run directory (its newest intact checkpoint) or a checkpoint") -> None:
    parser.add_argument("--checkpoint", type=Path, required=True, metavar="RUN", help=help)


def add_ray_address(parser) -> None:
    parser.add_argument(
        "--ray-address",
        default="",
        metavar="ADDRESS",
        help='a Ray cluster to run on ("auto": the one `ray start` began here); default: $RAY_ADDRESS, '
        "else a new local instance",
    )


def add_set(parser, help: str = SET_HELP) -> None:
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=help)


def add_json(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON alone on stdout (messages go to stderr)")


def add_s3_endpoint(parser) -> None:
    parser.add_argument(
        "--s3-endpoint", default="", metavar="URL", help="an S3-compatible endpoint for s3:// shards (MinIO, R2, ...)"
    )


def add_pool_options(parser) -> None:
    """A Ray Data actor pool of model replicas (embed, classify, caption, data filter)."""
    parser.add_argument("--actors", type=int, default=2, help="model replicas in the Ray Data actor pool")
    parser.add_argument("--gpus-per-actor", type=float, default=0.0, help="GPUs per model replica (0: CPU)")
    parser.add_argument("--batch-size", type=int, default=128, help="rows per model call")
    add_ray_address(parser)


def pool_options(args):
    from mmtrain.inference.pool import PoolOptions

    if args.actors < 1 or args.batch_size < 1 or args.gpus_per_actor < 0:
        raise ValueError("--actors and --batch-size must be at least 1 and --gpus-per-actor at least 0")
    return PoolOptions(
        actors=args.actors, gpus_per_actor=args.gpus_per_actor, batch_size=args.batch_size, ray_address=args.ray_address
    )
