"""`mmtrain train clip` and `mmtrain eval clip`."""

from __future__ import annotations

import json
from pathlib import Path

from training.config.kinds import load_run_config


def add_parsers(subparsers) -> None:
    train = subparsers.add_parser("train", help="train a model on Ray Train")
    trainers = train.add_subparsers(dest="trainer", required=True)
    clip = trainers.add_parser("clip", help="CLIP-style contrastive dual encoder")
    clip.add_argument("--config", type=Path, required=True, help="a YAML file, or a preset: clip/tiny, clip/synth, ... "
                      "(`mmtrain config show clip/tiny` lists every key)")
    clip.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="override a config key, e.g. --set loop.max_steps=100 (repeatable)")
    clip.set_defaults(handler=run_train_clip)
    vlm = trainers.add_parser("vlm", help="LLaVA-style VLM: frozen CLIP tower -> projector -> causal LM")
    vlm.add_argument("--config", type=Path, required=True, help="conf/vlm/stage1.yaml or stage2.yaml")
    vlm.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    vlm.set_defaults(handler=run_train_vlm)

    evaluate = subparsers.add_parser("eval", help="evaluate a checkpoint on eval shards")
    evaluators = evaluate.add_subparsers(dest="trainer", required=True)
    for kind, summary in (("clip", "zero-shot accuracy and retrieval recall"),
                          ("vlm", "held-out loss, perplexity and exact match of greedy answers")):
        parser = evaluators.add_parser(kind, help=summary)
        parser.add_argument("--checkpoint", type=Path, required=True, help="a checkpoint or run directory")
        parser.add_argument("--data", nargs="+", required=True, help="eval shards")
        parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
        parser.add_argument("--json", action="store_true")
        parser.set_defaults(handler=run_eval, kind=kind)


def run_train_clip(args) -> int:
    from training.ray_train.driver import run_clip

    cfg = load_run_config("clip", args.config, args.set)
    metrics = run_clip(cfg)
    print_summary(metrics)
    print_mlflow_link(cfg, "clip")
    return 0


def run_train_vlm(args) -> int:
    from training.ray_train.driver import run_vlm

    cfg = load_run_config("vlm", args.config, args.set)
    metrics = run_vlm(cfg)
    print_summary(metrics)
    print_mlflow_link(cfg, "vlm")
    return 0


def run_eval(args) -> int:
    from training.tasks.checkpoint_eval import evaluate_checkpoint

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
