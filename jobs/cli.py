"""The `mmtrain` command."""

from __future__ import annotations

import argparse
import os
import sys

from jobs import config_cmd, data, dry_run, models, submit, sweep, train, use


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmtrain", description=__doc__)
    parser.add_argument("--verbose", action="store_true",
                        help="show Ray's own INFO logs and deprecation notices (otherwise in its session logs)")
    subparsers = parser.add_subparsers(dest="command", required=True)
    data.add_parsers(subparsers)
    train.add_parsers(subparsers)
    models.add_parsers(subparsers)
    use.add_parsers(subparsers)
    sweep.add_parsers(subparsers)
    submit.add_parsers(subparsers)
    dry_run.add_parsers(subparsers)
    config_cmd.add_parsers(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.verbose:
        os.environ["MMTRAIN_VERBOSE"] = "1"  # training.run.VERBOSE
    # Ray Data's per-operator progress bars flood logs; mmtrain prints its own step progress. (Set
    # before ray.data is first imported: its defaults are read from the environment then.)
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not args.verbose:  # transformers' "Loading weights" / "Writing model shards" bars
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        return args.handler(args)
    except ValueError as err:  # user errors say what to change; no traceback needed
        print(f"mmtrain: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `mmtrain config show clip/tiny | head`: the reader has what it wanted
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
