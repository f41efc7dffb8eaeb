"""The `mmtrain` command."""

from __future__ import annotations

import argparse
import os
import sys

from jobs import config_cmd, data, dry_run, models, submit, sweep, train, use

# Notices from Ray's own processes that the driver would print (Ray's RAY_DEDUP_LOGS_SKIP_REGEX
# drops them there; they stay in the session logs): an error-level line from Ray's own actors
# (Train's PreemptionWatcher, Ray Data's map workers) about restarts mmtrain does not rely on, and
# the raylet's count of worker processes starting at once, which a small machine given more logical
# CPUs than cores (as mmtrain does) always exceeds.
RAY_NOTICES = "|".join(
    (
        r"core_worker\.cc:\d+: Actor with class name: '(PreemptionWatcher|MapWorker\(.*\))' .*has constructor "
        r"arguments in the object store",
        r"PYTHON worker processes have been started on node",
    )
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmtrain", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mmtrain {_version()}")
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="show Ray's own INFO logs and deprecation notices (otherwise in its session logs)",
    )
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


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mmtrain")
    except PackageNotFoundError:  # run from a clone that was never installed
        return "(not installed)"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.verbose:
        os.environ["MMTRAIN_VERBOSE"] = "1"  # training.ray_train.driver.VERBOSE
    # Ray Data's per-operator progress bars flood logs; mmtrain prints its own step progress. (Set
    # before ray.data is first imported: its defaults are read from the environment then.)
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not sys.stdout.isatty():  # Ray colours each worker line's prefix even when writing to a file
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # read by the driver as it prints each line
    if not args.verbose:  # transformers' "Loading weights" / "Writing model shards" bars
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("RAY_DEDUP_LOGS_SKIP_REGEX", RAY_NOTICES)  # read as ray is imported
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
