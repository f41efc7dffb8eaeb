"""`mmtrain train NAME` and `mmtrain eval NAME`, one subcommand per trainer in the registry."""

from __future__ import annotations

import json
from pathlib import Path

from training.tasks.kinds import load_run_config
from training.tasks.registry import TRAINERS


def add_parsers(subparsers) -> None:
    train = subparsers.add_parser("train", help="train a model on Ray Train")
    trainers = train.add_subparsers(dest="trainer", required=True)
    for spec in TRAINERS.values():
        parser = trainers.add_parser(spec.name, help=spec.summary)
        parser.add_argument(
            "--config",
            type=Path,
            required=True,
            help=f"a YAML file, or a preset under conf/{spec.name}/ (`mmtrain config show "
            f"{spec.name}/NAME` lists every key)",
        )
        parser.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config key, e.g. --set loop.max_steps=100 (repeatable)",
        )
        parser.set_defaults(handler=run_train, kind=spec.name)

    evaluate = subparsers.add_parser("eval", help="evaluate a checkpoint on eval shards")
    evaluators = evaluate.add_subparsers(dest="trainer", required=True)
    for spec in TRAINERS.values():
        parser = evaluators.add_parser(spec.name, help=spec.eval_summary)
        parser.add_argument("--checkpoint", type=Path, required=True, help="a checkpoint or run directory")
        parser.add_argument("--data", nargs="+", required=True, help="eval shards")
        parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
        parser.add_argument("--json", action="store_true")
        parser.set_defaults(handler=run_eval, kind=spec.name)


def run_train(args) -> int:
    from training.ray_train.driver import run_training

    cfg = load_run_config(args.kind, args.config, args.set)
    metrics = run_training(cfg)
    print_summary(metrics)
    print_mlflow_link(cfg, args.kind)
    return 0


def run_eval(args) -> int:
    from training.ray_train.evaluate_checkpoint import evaluate_checkpoint

    metrics, table = evaluate_checkpoint(args.kind, args.checkpoint, args.data, args.set)
    if args.json:
        print(json.dumps({"metrics": metrics, "samples": table}, indent=2))
        return 0
    for row in table[:10]:
        mark = "ok " if row["correct"] else "BAD"
        print(f"{mark} {row['question']!r:50} expected {row['expected']!r:12} got {row['generated']!r}")
    print("\n".join(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}" for k, v in metrics.items()))
    return 0


def print_mlflow_link(cfg, trainer: str) -> None:
    """Where the run is in the MLflow UI (a local store needs `mlflow ui` started first)."""
    from training.tracking.tracker import default_experiment, default_tracking_uri, experiment_link

    uri = default_tracking_uri(cfg.tracking.tracking_uri, cfg.run.output_dir)
    link = experiment_link(uri, default_experiment(cfg.tracking.experiment, trainer))
    if link and uri.startswith("sqlite:///"):
        print(f"MLflow: mlflow ui --backend-store-uri {uri} --port 5000, then open {link}")
    elif link:
        print(f"MLflow: {link}")


def print_summary(metrics: dict) -> None:
    print("\n== final metrics ==")
    for key in sorted(metrics):
        value = metrics[key]
        print(f"  {key}: {value:.4f}" if isinstance(value, float) else f"  {key}: {value}")
