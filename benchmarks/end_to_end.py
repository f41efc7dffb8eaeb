"""Ray Data -> Ray Train on one worker: samples/s against the same step on synthetic in-memory
batches (pipeline efficiency), the fraction of step time spent waiting for input, and the time
to the first step.

    python -m benchmarks.end_to_end --preset vit_b16 --batch-size 256 --shards 'shards/train-*.tar'   # GPU host
    python -m benchmarks.end_to_end --preset tiny --batch-size 64 --shards 'data/synth/train-*.tar'   # CPU

`--baseline trainer_throughput.json` takes the synthetic figure from a trainer_throughput run of the
same preset, batch size and device made just before (gpu_suite.sh does this), instead of compiling
the model a second time here: on an H100 that second compile is a minute of scarce device time.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch

from benchmarks.common import device_name, write_report
from benchmarks.trainer_throughput import measure
from mmtrain.training.config.io import load_config
from mmtrain.training.config.schema import ClipRunConfig

CONF = Path(__file__).resolve().parent.parent / "conf" / "clip"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="vit_b16")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--shards", required=True, help="training shards (with tokenizer.json beside them)")
    parser.add_argument(
        "--data-cpus",
        type=float,
        default=0,
        help="CPUs for the Ray Data pool (0 = all but the training worker's); Ray gets one per core",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="trainer_throughput JSON of the same preset/batch/device to take the synthetic figure from",
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from mmtrain.training.ray_train.driver import run_training

    use_gpu = torch.cuda.is_available()
    out_dir = tempfile.mkdtemp(prefix="mmtrain-e2e-")
    cfg = load_config(
        ClipRunConfig,
        CONF / f"{args.preset}.yaml",
        [
            f"data.train_shards=[{args.shards}]",
            "data.eval_shards=[]",
            f"run.output_dir={out_dir}",
            "run.name=e2e",
            f"loop.max_steps={args.steps}",
            f"loop.batch_size_per_worker={args.batch_size}",
            f"loop.log_every={max(args.steps // 4, 1)}",
            f"loop.checkpoint_every={10 * args.steps}",
            "scaling.num_workers=1",
            f"scaling.use_gpu={str(use_gpu).lower()}",
            "eval.zero_shot=false",
            "eval.retrieval=false",
            "tracking.tracking_uri=none",
            "tracking.log_figures=false",
            # One logical CPU per core: the default oversubscription (made for 2-core laptops) would put
            # three decode processes on each core beside the process that feeds the GPU.
            f"run.local_num_cpus={os.cpu_count()}",
            f"data.data_cpu_limit={args.data_cpus}",
        ],
    )
    device = torch.device("cuda" if use_gpu else "cpu")
    synthetic, synthetic_from = None, "measured in this run"
    if args.baseline and args.baseline.is_file():  # checked before the long run, not after it
        synthetic = baseline_from(args.baseline, args.preset, args.batch_size, device, cfg.loop.compile)
        synthetic_from = str(args.baseline)
    elif args.baseline:
        print(
            f"{args.baseline} does not exist (did trainer_throughput fail?): measuring the synthetic figure here",
            flush=True,
        )
    metrics = run_training(cfg)
    if synthetic is None:  # the same model and batch on synthetic in-memory data, for the ratio
        from mmtrain.training.tasks.resolve import resolve_clip

        resolved, _ = resolve_clip(cfg)
        synthetic = measure(
            resolved,
            args.batch_size,
            steps=max(args.steps // 4, 5),
            warmup=3,
            compile_model=resolved.loop.compile,
            device=device,
        )
    report = {
        "benchmark": "end_to_end",
        "device": device_name(device),
        "preset": args.preset,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "pipeline_samples_per_s": metrics["train/samples_per_s"],  # the last logging window: steady state
        "synthetic_samples_per_s": synthetic["samples_per_s"],
        "synthetic_from": synthetic_from,
        "pipeline_efficiency": metrics["train/samples_per_s"] / synthetic["samples_per_s"],
        "data_wait_fraction": metrics["train/data_wait_fraction"],
        "time_to_first_step_s": metrics.get("train/time_to_first_step_s"),
    }
    print(
        f"pipeline {report['pipeline_samples_per_s']:.0f} samples/s vs synthetic "
        f"{report['synthetic_samples_per_s']:.0f}: efficiency {report['pipeline_efficiency']:.2f}, "
        f"waiting for input {report['data_wait_fraction']:.0%}"
    )
    write_report(args.out or Path(f"benchmarks/results/end_to_end_{args.preset}.json"), report)


def baseline_from(path: Path, preset: str, batch_size: int, device: torch.device, compiled: bool) -> dict:
    """The synthetic-data result in a trainer_throughput report, refusing one of another setup."""
    report = json.loads(path.read_text())
    wanted = {"preset": preset, "batch_size": batch_size, "device": device_name(device)}
    found = {key: report.get(key) for key in wanted}
    if found != wanted:
        raise SystemExit(
            f"{path} measured {found}, not {wanted}: rerun trainer_throughput to match, "
            "or drop --baseline to measure here"
        )
    for result in report["results"]:
        # The trainer compiles with torch.compile's default mode, so only that result compares.
        if result["compiled"] == compiled and result.get("compile_mode") in (None, "default"):
            return result
    mode = "compiled" if compiled else "eager"
    raise SystemExit(
        f"{path} has no {mode} result in torch.compile's default mode; run trainer_throughput "
        f"with --modes {mode} and no --compile-mode"
    )


if __name__ == "__main__":
    main()
