"""Where a training run's wall time goes outside the training step: the driver's part (config and
shard listing, Ray's start, building the datasets and counting samples, Ray Train's run, publishing
the final model) and rank 0's part (start-up to its first step, the steps, and each phase outside
them: data waits, evaluations, checkpoint saves, Ray Train reports, the data-position hand-over,
MLflow logging); the samples the pipeline decoded against those trained on; and the CPU seconds
each kind of process used, sampled every --cpu-every seconds (benchmarks/cpu_sampler.py). The worker
measures its phases itself (training/ray_train/step_hooks.py PhaseClock, reported as `overhead/*`
and kept as MLflow run tags); this prints them as one breakdown.

    python -m benchmarks.overhead --out benchmarks/results/overhead_tiny_2core.json
    python -m benchmarks.overhead --config clip/fashion_mnist --set loop.max_steps=300 --out ...

Without --config it makes synthetic shards and runs conf/clip/tiny.yaml on them.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from benchmarks.common import write_report
from benchmarks.cpu_sampler import CpuSampler

DRIVER_PHASES = (
    ("driver_config_and_shards_s", "driver: config, shard listing"),
    ("driver_ray_start_s", "driver: Ray start"),
    ("driver_datasets_s", "driver: datasets, sample count"),
    ("ray_train_fit_s", "Ray Train fit (the workers' run, below)"),
    ("driver_publish_final_model_s", "driver: final weights to MLflow"),
)
WORKER_PHASES = (
    ("startup_to_first_step_s", "rank 0: start-up to its first step done"),
    ("train_step_s", "rank 0: training steps (compute)"),
    ("data_wait_s", "rank 0: waiting for data after the first step"),
    ("evaluation_s", "rank 0: evaluations"),
    ("checkpoint_save_s", "rank 0: checkpoint saves"),
    ("report_s", "rank 0: ray.train.report (barrier, persisting)"),
    ("data_position_s", "rank 0: data position hand-over (ledger)"),
    ("logging_s", "rank 0: MLflow logging and console"),
    ("final_tracking_s", "rank 0: final checkpoint into MLflow"),
)


def synthetic_overrides(out: Path) -> list[str]:
    from mmtrain.jobs.cli import main

    data = out / "synth"
    assert main(["data", "synth", "--out", str(data), "--train", "4096", "--val", "256", "--image-size", "32"]) == 0
    return [f"data.train_shards=[{data}/train-*.tar]", f"data.eval_shards=[{data}/val-*.tar]", "loop.max_steps=120"]


def breakdown(metrics: dict, wall_s: float) -> dict:
    """Seconds and share of the command's wall time, per phase, in the order a run meets them."""
    rows = {}
    for key, label in DRIVER_PHASES + WORKER_PHASES:
        seconds = metrics.get(f"overhead/{key}")
        if seconds is not None:
            rows[key] = {"what": label, "seconds": seconds, "share_of_wall": round(seconds / wall_s, 4)}
    fit = metrics.get("overhead/ray_train_fit_s", 0.0)
    inside = sum(metrics.get(f"overhead/{key}", 0.0) for key, _ in WORKER_PHASES)
    rows["ray_train_start_and_end_s"] = {
        "what": "Ray Train: worker group start, process group, teardown (fit less rank 0's account)",
        "seconds": round(fit - inside, 3),
        "share_of_wall": round((fit - inside) / wall_s, 4),
    }
    return rows


def read_ahead(metrics: dict) -> tuple[int, int]:
    """(good samples the pipeline decoded, samples the steps trained on): decoding that no step uses
    is CPU the training workers lose on a small machine."""
    return int(metrics.get("train_data/good_samples", 0)), int(metrics.get("train/samples_seen", 0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="", help="a CLIP preset (default: clip/tiny on synthetic shards)")
    parser.add_argument("--set", action="append", default=[], help="config overrides, as `mmtrain train --set`")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/overhead.json"))
    parser.add_argument("--cpu-every", type=float, default=5.0, help="seconds between CPU samples per process kind")
    args = parser.parse_args()
    started = time.perf_counter()
    from mmtrain.training.ray_train.driver import run_training
    from mmtrain.training.tasks.kinds import load_run_config

    with tempfile.TemporaryDirectory(prefix="mmtrain-overhead-") as scratch:
        scratch = Path(scratch)
        overrides = [] if args.config else synthetic_overrides(scratch)
        overrides += [f"run.output_dir={scratch / 'runs'}", "run.name=overhead", *args.set]
        cfg = load_run_config("clip", args.config or "clip/tiny", overrides)
        imports_s = time.perf_counter() - started
        run_started = time.perf_counter()
        with CpuSampler(every=args.cpu_every) as cpu:
            metrics = run_training(cfg)
        run_s = time.perf_counter() - run_started
    rows = breakdown(metrics, run_s)
    print(
        f"\nrun_training wall: {run_s:.1f} s ({cfg.loop.max_steps} steps; imports and data before it {imports_s:.1f} s)"
    )
    for key, row in rows.items():
        print(f"  {row['seconds']:8.2f} s  {row['share_of_wall']:6.1%}  {row['what']}")
    decoded, trained = read_ahead(metrics)
    print(f"  samples read and decoded {decoded:,}, trained on {trained:,}: {decoded / max(trained, 1):.2f}x")
    print("CPU seconds by kind of process (the JSON has them per interval):")
    for group, seconds in list(cpu.totals().items())[:8]:
        print(f"  {seconds:8.1f} s  {group}")
    write_report(
        args.out,
        {
            "config": args.config or "clip/tiny (synthetic shards)",
            "overrides": overrides,
            "steps": cfg.loop.max_steps,
            "workers": cfg.scaling.num_workers,
            "run_training_wall_s": round(run_s, 2),
            "breakdown": rows,
            "samples_decoded": decoded,
            "samples_trained_on": trained,
            "final_metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
            "cpu_seconds_by_process": cpu.totals(),
            "cpu_seconds_per_interval": [{"until_s": at, **used} for at, used in cpu.series],
        },
    )


if __name__ == "__main__":
    main()
