"""`mmtrain train NAME` and `mmtrain eval NAME`, one subcommand per trainer in the registry."""

from __future__ import annotations

import contextlib
import json
import shlex
import sys
from pathlib import Path

from mmtrain.jobs.examples import EXAMPLES
from mmtrain.jobs.options import (
    SHARDS_HELP,
    add_checkpoint,
    add_data,
    add_json,
    add_pool_options,
    add_ray_address,
    add_set,
    pool_options,
)
from mmtrain.training.tasks.kinds import load_run_config
from mmtrain.training.tasks.registry import TRAINERS


def add_parsers(subparsers) -> None:
    train = subparsers.add_parser("train", help="train a model on Ray Train")
    trainers = train.add_subparsers(dest="trainer", required=True)
    for spec in TRAINERS.values():
        parser = trainers.add_parser(spec.name, help=spec.summary)
        add_config(parser, spec.name)
        add_set(parser)
        parser.add_argument("--train-data", nargs="+", metavar="SHARDS", help="sets data.train_shards: " + SHARDS_HELP)
        parser.add_argument("--val-data", nargs="+", metavar="SHARDS", help="sets data.eval_shards: " + SHARDS_HELP)
        parser.add_argument(
            "--resume",
            action="store_true",
            help="continue the run (run.name) from its latest checkpoint; without it a run that has "
            "checkpoints is refused (run.resume=never)",
        )
        add_ray_address(parser)
        parser.set_defaults(handler=run_train, kind=spec.name)

    evaluate = subparsers.add_parser("eval", help="evaluate a checkpoint on eval shards")
    evaluators = evaluate.add_subparsers(dest="trainer", required=True)
    for spec in TRAINERS.values():
        parser = evaluators.add_parser(spec.name, help=spec.eval_summary)
        add_checkpoint(parser)
        add_data(parser, "eval shards (the run's own evaluation): " + SHARDS_HELP, required=False)
        add_benchmark_options(parser, spec.name)
        add_set(parser, "override a key of the run's config, e.g. --set eval.batch_size=64 (repeatable)")
        add_json(parser)
        parser.set_defaults(handler=run_eval, kind=spec.name)


def add_benchmark_options(parser, trainer: str) -> None:
    layouts = (
        "class folders (DIR/CLASS/*.jpg, DIR/test + DIR/train for a linear probe) or a folder with a Karpathy JSON"
        if trainer == "clip"
        else "a folder with questions.jsonl (VQA answers, multiple-choice options, or captions)"
    )
    parser.add_argument(
        "--benchmark",
        nargs="+",
        default=[],
        metavar="BENCHMARK",
        help=f"instead of --data: a built-in benchmark or suite (conf/eval/NAME.yaml), a benchmark.yaml, or {layouts}; "
        "metrics as the reference tools compute them, into a report and the run's MLflow table",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="PATH",
        help="where the benchmark report goes (default: RUN/benchmarks)",
    )
    parser.add_argument(
        "--compare",
        nargs="+",
        default=[],
        metavar="REPORT",
        help="put this report beside other runs': a run directory (its benchmarks/report.json) or a report",
    )
    if trainer == "clip":
        add_pool_options(parser)


def add_config(parser, trainer: str) -> None:
    parser.add_argument(
        "--config",
        required=True,
        metavar="PRESET",
        help=f"a YAML file, or a preset under conf/: {trainer}/NAME "
        f"(`mmtrain config show {trainer}/NAME` lists every key)",
    )


def command_overrides(args) -> list[str]:
    """The --set values, then what the shorthand options set (they win: they are the more specific)."""
    overrides = list(args.set)
    if args.train_data:
        overrides.append(f"data.train_shards=[{','.join(args.train_data)}]")
    if args.val_data:
        overrides.append(f"data.eval_shards=[{','.join(args.val_data)}]")
    if args.ray_address:
        overrides.append(f"run.ray_address={args.ray_address}")
    if args.resume:
        overrides.append("run.resume=must")
    return overrides


def run_train(args) -> int:
    from mmtrain.training.ray_train.driver import ResumeRefused, run_training

    cfg = load_run_config(args.kind, args.config, command_overrides(args))
    try:
        metrics = run_training(cfg)
    except ResumeRefused as refused:
        raise ValueError(f"{refused}\n{two_ways_on(args, refused.run_name)}") from None
    print_summary(metrics)
    print_mlflow_link(cfg, args.kind)
    return 0


def two_ways_on(args, run_name: str) -> str:
    """The commands that would work, as this one was typed but for the option that decides."""
    typed = ["mmtrain", "train", args.kind, "--config", str(args.config)]
    for item in args.set:
        typed += ["--set", item]
    for option, values in (("--train-data", args.train_data), ("--val-data", args.val_data)):
        typed += [option, *values] if values else []
    typed += ["--ray-address", args.ray_address] if args.ray_address else []
    command = shlex.join(typed)
    if args.resume:
        return f"  to start afresh:  {command} --set run.name={run_name}-2"
    return f"  to continue it:   {command} --resume\n  to start afresh:  {command} --set run.name={run_name}-2"


def run_eval(args) -> int:
    from mmtrain.training.ray_train.evaluate_checkpoint import evaluate_checkpoint

    if args.benchmark:
        return run_benchmark_eval(args)
    if args.compare or args.out:
        raise ValueError("--out and --compare go with --benchmark")
    if not args.data:
        raise ValueError(
            f"give --data SHARDS (the run's own evaluation) or --benchmark NAME|DIR: `{EXAMPLES['eval ' + args.kind]}`"
        )
    metrics, table = evaluate_checkpoint(args.kind, args.checkpoint, args.data, args.set)
    if args.json:
        print(json.dumps({"metrics": metrics, "samples": table}, indent=2))
        return 0
    for row in table[:10]:
        mark = "ok " if row["correct"] else "BAD"
        print(f"{mark} {row['question']!r:50} expected {row['expected']!r:12} got {row['generated']!r}")
    print("\n".join(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}" for k, v in metrics.items()))
    return 0


def run_benchmark_eval(args) -> int:
    from mmtrain.evaluation.report import load_report, markdown_table
    from mmtrain.inference.benchmarks import report_and_log, run_benchmarks
    from mmtrain.inference.pool import PoolOptions

    if args.data or args.set:
        raise ValueError("--benchmark takes its data and settings from the benchmark: drop --data and --set")
    others = [load_report(run) for run in args.compare]  # a mistyped run fails before the evaluation
    options = pool_options(args) if args.kind == "clip" else PoolOptions()
    # With --json, stdout holds the report alone: progress lines go to stderr.
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
        run, results = run_benchmarks(args.kind, args.checkpoint, args.benchmark, options)
        path, mlflow_run = report_and_log(run, results, args.out)
    report = load_report(path)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(markdown_table([report, *others]))
    print(f"\nreport: {path} and {path.with_suffix('.md')}" + (f"; MLflow run {mlflow_run}" if mlflow_run else ""))
    return 0


def print_mlflow_link(cfg, trainer: str) -> None:
    """Where the run is in the MLflow UI (a local store needs `mlflow ui` started first)."""
    from mmtrain.training.tracking.tracker import default_experiment, default_tracking_uri, experiment_link

    uri = default_tracking_uri(cfg.tracking.tracking_uri, cfg.run.output_dir)
    link = experiment_link(uri, default_experiment(cfg.tracking.experiment, trainer))
    if link and uri.startswith("sqlite:///"):
        print(f"MLflow: mlflow ui --backend-store-uri {uri} --port 5000, then open {link}")
    elif link:
        print(f"MLflow: {link}")


def print_summary(metrics: dict) -> None:
    print("\n== final metrics ==")
    for key in sorted(k for k in metrics if not k.startswith("overhead/")):  # python -m benchmarks.overhead
        value = metrics[key]
        print(f"  {key}: {value:.4f}" if isinstance(value, float) else f"  {key}: {value}")
