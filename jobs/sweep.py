"""`mmtrain sweep`: a Ray Tune sweep over config keys of the CLIP or VLM trainer."""

from __future__ import annotations

import dataclasses

from mmtrain.jobs.options import add_ray_address, add_set
from mmtrain.training.config.help import resolve_preset
from mmtrain.training.config.io import load_config
from mmtrain.training.config.schema import SweepConfig


def add_parsers(subparsers) -> None:
    sweep = subparsers.add_parser("sweep", help="a Ray Tune sweep (ASHA, one MLflow run per trial)")
    sweep.add_argument(
        "--config",
        required=True,
        metavar="PRESET",
        help="a YAML file, or a preset under conf/: sweep/NAME (`mmtrain config show sweep/NAME` lists every key)",
    )
    sweep.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted sweep: finished trials are kept, unfinished ones resume",
    )
    add_set(sweep, "override a sweep key, e.g. --set num_samples=8 (repeatable)")
    sweep.add_argument(
        "--trial-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key of every trial's config, e.g. --trial-set loop.max_steps=100 (repeatable)",
    )
    add_ray_address(sweep)
    sweep.set_defaults(handler=run)


def run(args) -> int:
    from mmtrain.training.ray_train.sweep import format_table, run_sweep

    overrides = [*args.set, *([f"ray_address={args.ray_address}"] if args.ray_address else [])]
    cfg = load_config(SweepConfig, resolve_preset(args.config), overrides)
    cfg = dataclasses.replace(cfg, overrides=[*cfg.overrides, *args.trial_set])
    summary = run_sweep(cfg, resume=args.resume)
    print(f"\n== sweep {summary['sweep']}: {len(summary['trials'])} trials ==")
    print(format_table(summary))
    best = summary["best"]
    if best:
        print(f"\nbest: {best['run_name']} {summary['metric']}={best['metric']:.4f} {best['params']}")
        print(f"  checkpoint:  {best['checkpoint']}")
        print(f"  config:      {summary['root']}/best_config.yaml")
    print(f"  table:       {summary['root']}/results.json")
    if summary["interrupted"]:
        print(f"interrupted: continue with `mmtrain sweep --config {args.config} --resume`")
        return 1
    return 0 if best else 1
