"""`mmtrain dry-run`: the whole pipeline, small, on this machine."""

from __future__ import annotations

import time
from pathlib import Path

from training.config_io import load_config

CONF = Path(__file__).resolve().parent.parent / "conf"


def add_parsers(subparsers) -> None:
    dry = subparsers.add_parser("dry-run", help="synthesise data, train and evaluate, all small and local")
    dry.add_argument("--out", type=Path, default=Path("out/dry-run"), help="where data, runs and MLflow go")
    dry.set_defaults(handler=run_dry_run)


def run_dry_run(args) -> int:
    from pipelines.synth import write_synth
    from jobs.data import write_tokenizer
    from training.config import ClipRunConfig
    from training.run import run_clip

    out = args.out.resolve()
    started = time.time()
    data_dir = out / "data"
    print(f"[dry-run] 1/2 synthesising shapes dataset in {data_dir}", flush=True)
    write_synth(data_dir, num_train=1024, num_val=256, image_size=32, shard_size=256)
    write_tokenizer([str(data_dir)], data_dir / "tokenizer.json")

    print("[dry-run] 2/2 training CLIP (tiny) with 2 Ray Train workers, then evaluating", flush=True)
    runs = out / "runs"
    cfg = load_config(ClipRunConfig, CONF / "clip/tiny.yaml", [
        f"run.output_dir={runs}", "run.name=dry-run-clip",
        f"data.train_shards=[{data_dir}/train-*.tar]", f"data.eval_shards=[{data_dir}/val-*.tar]",
    ])
    metrics = run_clip(cfg)

    print(f"\n== dry run finished in {time.time() - started:.0f} s ==")
    print(f"data:        {data_dir}")
    print(f"checkpoint:  {metrics['checkpoint']}")
    print(f"CLIP:        loss {metrics['loss']:.3f}, zero-shot top-1 {metrics.get('eval/zero_shot_top1', 0):.3f}, "
          f"image->text R@5 {metrics.get('eval/image_to_text_R@5', 0):.3f}")
    print(f"MLflow UI:   mlflow ui --backend-store-uri sqlite:///{runs}/mlflow.db --port 5000")
    return 0
