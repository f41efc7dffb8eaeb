"""The `mmtrain` command."""

from __future__ import annotations

import argparse
import os
import sys

from jobs import config_cmd, data, dry_run, models, submit, sweep, train, use


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmtrain", description=__doc__)
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
    # Ray Data's per-operator progress bars flood logs; mmtrain prints its own step progress.
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
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
