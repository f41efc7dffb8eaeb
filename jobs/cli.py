"""mmtrain: multimodal (CLIP and LLaVA-style) training on Ray. `mmtrain COMMAND --help` shows a
command's options, their defaults and an example; --verbose goes anywhere on the line."""

from __future__ import annotations

import argparse
import os
import sys

from mmtrain.jobs import config_cmd, data, dry_run, models, submit, sweep, train, use
from mmtrain.jobs.examples import EXAMPLES
from mmtrain.jobs.options import Parser
from mmtrain.version import __version__

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


GLOBAL_FLAGS = ("--verbose",)  # accepted anywhere on the line (before a `--`), not only before the command


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="mmtrain", description=__doc__, epilog="example:\n  mmtrain dry-run")
    parser.add_argument("--version", action="version", version=f"mmtrain {__version__}")
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
    for words, command in commands(parser):
        command.epilog = f"example:\n  {EXAMPLES[words]}"
    return parser


def commands(parser: argparse.ArgumentParser, words: str = ""):
    """(words after `mmtrain`, parser) for every command that runs something."""
    groups = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    if not groups:
        yield words, parser
    for group in groups:
        for name, sub in group.choices.items():
            yield from commands(sub, f"{words} {name}".strip())


def hoist_global_flags(argv: list[str]) -> list[str]:
    """`mmtrain train clip ... --verbose` means `mmtrain --verbose train clip ...`; after `--` (the
    command `submit` sends to the cluster) nothing moves."""
    end = argv.index("--") if "--" in argv else len(argv)
    flags = [arg for arg in argv[:end] if arg in GLOBAL_FLAGS]
    return flags + [arg for arg in argv[:end] if arg not in GLOBAL_FLAGS] + argv[end:]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(hoist_global_flags(sys.argv[1:] if argv is None else argv))
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
