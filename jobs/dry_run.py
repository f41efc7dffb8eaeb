"""`mmtrain dry-run`: the whole pipeline, small, on this machine: synthetic shards -> CLIP on
2 Ray Train workers -> VLM stage 1 and stage 2 on that CLIP tower with a tiny LM, all tracked in
an embedded MLflow store; with --sweep, a 2-trial Ray Tune sweep alongside the VLM stages.

The sweep is not in the default run: it is two more Ray Train runs and a Tune driver (283 busy
CPU-seconds for the dry run with it against 157 without, one run each), which on 2 cores took
the dry run from under 2 minutes to nearly 3 (2026-12-02)."""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from mmtrain.training.config.io import load_config
from mmtrain.training.tasks.registry import TRAINERS
from mmtrain.training.tracking.tracker import default_experiment, experiment_link

CONF = Path(__file__).resolve().parent.parent / "conf"
_STARTED = time.monotonic()  # this module is imported as the command starts
CLIP_RUN, STAGE1_RUN, STAGE2_RUN, SWEEP = "dry-run-clip", "dry-run-vlm-stage1", "dry-run-vlm-stage2", "dry-run-sweep"
RUN_NAMES = (CLIP_RUN, STAGE1_RUN, STAGE2_RUN, f"sweeps/{SWEEP}")  # what a second dry run clears


def add_parsers(subparsers) -> None:
    dry = subparsers.add_parser("dry-run", help="synthesise data, train and evaluate CLIP and a VLM, small and local")
    dry.add_argument("--out", type=Path, default=Path("out/dry-run"), help="where data, runs and MLflow go")
    dry.add_argument(
        "--sweep",
        action="store_true",
        help="also run a 2-trial Ray Tune sweep alongside the VLM stages (about a minute more on 2 cores)",
    )
    dry.set_defaults(handler=run_dry_run)


def run_dry_run(args) -> int:
    import ray

    from mmtrain.jobs.data import write_tokenizer
    from mmtrain.pipelines.synth import write_synth
    from mmtrain.training.config.schema import ClipRunConfig
    from mmtrain.training.ray_train.driver import run_training

    out = args.out.resolve()
    data_dir, runs = out / "data", out / "runs"
    # One data actor per pipeline is plenty for 32-pixel images (each actor is a process of its own).
    shards = [
        f"data.train_shards=[{data_dir}/train-*.tar]",
        f"data.eval_shards=[{data_dir}/val-*.tar]",
        f"run.output_dir={runs}",
        "data.workers=1",
    ]

    _start_over(runs)
    steps = 5 if args.sweep else 4
    _step(1, steps, f"synthesising the shapes dataset in {data_dir}")
    write_synth(data_dir, num_train=1024, num_val=128, image_size=32, shard_size=256)
    write_tokenizer([str(data_dir)], data_dir / "tokenizer.json")

    _step(2, steps, "training CLIP (tiny) with 2 Ray Train workers, then zero-shot + retrieval evaluation")
    # 8 logical CPUs: the sweep's trials and the VLM stages share the local instance below.
    overrides = shards + [f"run.name={CLIP_RUN}", "loop.max_steps=24", "run.local_num_cpus=8"]
    clip = run_training(load_config(ClipRunConfig, CONF / "clip/tiny.yaml", overrides))

    # The summary's MLflow links need the MLflow client (about 2 s to import here): it loads while the
    # VLM trains, when this process only waits for Ray.
    threading.Thread(target=importlib.import_module, args=("mlflow.tracking",), daemon=True).start()
    sweep = None
    if args.sweep:
        _step(
            3,
            steps,
            "a 2-trial Ray Tune sweep over the CLIP temperature (ASHA, one nested MLflow run per trial), "
            f"in the background: log in {out / 'sweep.log'}",
        )
        sweep = _start_sweep(shards, runs, out / "sweep.log", ray.get_runtime_context().gcs_address)

    stage1, stage2 = _train_vlm(shards, data_dir, runs, steps)

    summary = None
    if sweep:
        print(f"[dry-run] at {time.monotonic() - _STARTED:.0f} s: waiting for the sweep to finish", flush=True)
        summary = _finish_sweep(sweep, runs / "sweeps" / SWEEP / "results.json", out / "sweep.log")
        from mmtrain.training.ray_train.sweep import format_table  # Ray Tune: only with --sweep

        print(format_table(summary))

    _print_summary(out, data_dir, runs, clip, stage1, stage2, summary)
    return 0


def _start_over(runs: Path) -> None:
    cleared = clear_previous_runs(runs)
    if cleared:
        print(
            f"[dry-run] starting over: removed the last dry run's {', '.join(cleared)} in {runs} "
            "(its MLflow runs stay in the store)",
            flush=True,
        )


def _train_vlm(shards: list[str], data_dir: Path, runs: Path, steps: int) -> tuple[dict, dict]:
    """VLM stage 1 and stage 2 on the dry run's CLIP tower with a tiny LM: (stage 1, stage 2) metrics."""
    from mmtrain.pipelines.inspection import iter_captions
    from mmtrain.training.config.schema import VlmRunConfig
    from mmtrain.training.models.language_model import make_tiny_lm
    from mmtrain.training.ray_train.driver import run_training

    _step(steps - 1, steps, "VLM stage 1: projector on captions (CLIP tower and a tiny LM frozen)")
    lm_dir = make_tiny_lm(data_dir / "tiny-lm", iter_captions([str(data_dir)]), vocab_size=512, hidden_size=64)
    vlm = shards + [
        f"model.vision.checkpoint={runs / CLIP_RUN}",
        f"model.lm.path={lm_dir}",
        "loop.max_steps=12",
        "loop.log_every=4",
        "loop.batch_size_per_worker=16",
        "scaling.num_workers=1",
        "eval.max_generate_samples=8",
        "max_length=48",
    ]
    # Stage 1 skips the held-out evaluation (an eval pipeline and greedy answers cost ~10 s here);
    # stage 2 evaluates and logs its table of generations.
    stage1 = run_training(
        load_config(VlmRunConfig, CONF / "vlm/stage1.yaml", vlm + [f"run.name={STAGE1_RUN}", "data.eval_shards=[]"])
    )

    _step(steps, steps, "VLM stage 2: projector, LM and tower on conversations, from the stage-1 projector")
    stage2 = run_training(
        load_config(
            VlmRunConfig, CONF / "vlm/stage2.yaml", vlm + [f"run.name={STAGE2_RUN}", f"init_from={runs / STAGE1_RUN}"]
        )
    )
    return stage1, stage2


def _print_summary(
    out: Path, data_dir: Path, runs: Path, clip: dict, stage1: dict, stage2: dict, summary: dict | None
) -> None:
    print(f"\n== dry run finished in {time.monotonic() - _STARTED:.0f} s (since the command started) ==")
    print(f"data:           {data_dir}")
    print(
        f"CLIP:           loss {clip['train/loss']:.3f}, zero-shot top-1 {clip['val/zero_shot_top1']:.3f}, "
        f"image->text R@5 {clip['val/image_to_text_R_at_5']:.3f}"
    )
    print(f"VLM stage 1:    caption loss {stage1['train/loss']:.3f} (projector only)")
    print(
        f"VLM stage 2:    loss {stage2['train/loss']:.3f}, exact match {stage2['val/exact_match']:.3f} "
        "(a few steps only; see the README's recipe for a trained one)"
    )
    if summary:
        best = summary["best"] or {}
        print(
            f"sweep:          {len(summary['trials'])} trials, best {best.get('run_name')} "
            f"zero-shot top-1 {best.get('metric') or 0:.3f}; table in {summary['root']}/results.json"
        )
    print(f"checkpoints:    {runs}/<run name>/checkpoint_*")
    print(f"MLflow UI:      mlflow ui --backend-store-uri sqlite:///{runs}/mlflow.db --port 5000, then open")
    for trainer, is_sweep in [(name, False) for name in TRAINERS] + ([("clip", True)] if summary else []):
        name = default_experiment("", trainer, is_sweep)
        print(f"                {experiment_link(f'sqlite:///{runs}/mlflow.db', name)}   ({name})")
    print(
        f"next:           mmtrain embed --checkpoint {runs}/{CLIP_RUN} --data '{data_dir}/val-*.tar' "
        f'--out {out}/embeddings && mmtrain search --index {out}/embeddings "a red circle"'
    )
    print(
        "                mmtrain data synth --out data/synth && mmtrain train clip --config clip/tiny"
        "   # the presets read data/synth"
    )


def clear_previous_runs(runs: Path) -> list[str]:
    """Remove an earlier dry run's checkpoints and sweep, so that a second dry run into the same
    --out trains again (resuming them would find every run already at its last step)."""
    cleared = []
    for name in RUN_NAMES:
        if (runs / name).exists():
            shutil.rmtree(runs / name)
            cleared.append(name)
    return cleared


def _start_sweep(shards: list[str], runs: Path, log_path: Path, ray_address: str) -> subprocess.Popen:
    """`mmtrain sweep` as a second driver on this Ray instance, so its trials overlap the VLM
    stages (on 2 cores most of each run is start-up latency, which overlaps well)."""
    trial = shards + [
        "loop.max_steps=8",
        "loop.eval_every=4",
        "loop.checkpoint_every=4",
        "loop.log_every=4",
        "scaling.num_workers=1",
        "tracking.log_figures=false",
    ]
    settings = [
        f"name={SWEEP}",
        "num_samples=2",
        "data_cpus_per_trial=0.5",
        "max_concurrent_trials=2",
        "scheduler.grace_period=4",
        f"output_dir={runs}",
        f"ray_address={ray_address}",
        f"overrides={trial!r}",
    ]
    args = [sys.executable, "-m", "mmtrain", "sweep", "--config", str(CONF / "sweep/clip_temperature.yaml")]
    args += [item for setting in settings for item in ("--set", setting)]
    with log_path.open("w") as log:
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)


def _finish_sweep(sweep: subprocess.Popen, results: Path, log_path: Path) -> dict:
    if sweep.wait() != 0 or not results.is_file():
        tail = log_path.read_text()[-3000:]
        raise RuntimeError(f"the dry run's sweep failed (exit {sweep.returncode}); end of {log_path}:\n{tail}")
    return json.loads(results.read_text())


def _step(number: int, steps: int, text: str) -> None:
    print(f"[dry-run] {number}/{steps} at {time.monotonic() - _STARTED:.0f} s: {text}", flush=True)
