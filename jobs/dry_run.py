"""`mmtrain dry-run`: the whole pipeline, small, on this machine: synthetic shards -> CLIP on
2 Ray Train workers -> VLM stage 1 and stage 2 on that CLIP tower with a tiny LM -> a 2-trial
Ray Tune sweep, all tracked in an embedded MLflow store."""

from __future__ import annotations

import time
from pathlib import Path

from training.config_io import load_config

CONF = Path(__file__).resolve().parent.parent / "conf"


def add_parsers(subparsers) -> None:
    dry = subparsers.add_parser("dry-run", help="synthesise data, train and evaluate CLIP and a VLM, small and local")
    dry.add_argument("--out", type=Path, default=Path("out/dry-run"), help="where data, runs and MLflow go")
    dry.set_defaults(handler=run_dry_run)


def run_dry_run(args) -> int:
    from jobs.data import write_tokenizer
    from pipelines.inspection import iter_captions
    from pipelines.synth import write_synth
    from training.config import ClipRunConfig, SweepConfig, VlmRunConfig
    from training.models.language_model import make_tiny_lm
    from training.run import run_clip, run_vlm
    from training.sweep import format_table, run_sweep

    out = args.out.resolve()
    started = time.time()
    data_dir, runs = out / "data", out / "runs"
    # Two data actors per pipeline are plenty for 4 small shards on a laptop (each one starts a process).
    shards = [f"data.train_shards=[{data_dir}/train-*.tar]", f"data.eval_shards=[{data_dir}/val-*.tar]",
              f"run.output_dir={runs}", "data.workers=2"]

    _step(1, f"synthesising the shapes dataset in {data_dir}")
    write_synth(data_dir, num_train=1024, num_val=128, image_size=32, shard_size=256)
    write_tokenizer([str(data_dir)], data_dir / "tokenizer.json")

    _step(2, "training CLIP (tiny) with 2 Ray Train workers, then zero-shot + retrieval evaluation")
    clip = run_clip(load_config(ClipRunConfig, CONF / "clip/tiny.yaml",
                                shards + ["run.name=dry-run-clip", "loop.max_steps=24"]))

    _step(3, "VLM stage 1: projector on captions (CLIP tower and a tiny LM frozen)")
    lm_dir = make_tiny_lm(data_dir / "tiny-lm", iter_captions([str(data_dir)]), vocab_size=512, hidden_size=64)
    vlm = shards + [f"model.vision.checkpoint={runs / 'dry-run-clip'}", f"model.lm.path={lm_dir}",
                    "loop.max_steps=12", "loop.log_every=4", "loop.batch_size_per_worker=16", "scaling.num_workers=1",
                    "eval.max_generate_samples=8", "max_length=48"]
    stage1 = run_vlm(load_config(VlmRunConfig, CONF / "vlm/stage1.yaml", vlm + ["run.name=dry-run-vlm-stage1"]))

    _step(4, "VLM stage 2: projector + LM on conversations, from the stage-1 projector")
    stage2 = run_vlm(load_config(VlmRunConfig, CONF / "vlm/stage2.yaml", vlm + [
        "run.name=dry-run-vlm-stage2", f"init_from={runs / 'dry-run-vlm-stage1'}"]))

    _step(5, "a 2-trial Ray Tune sweep over the CLIP temperature (ASHA, one nested MLflow run per trial)")
    trial = shards + ["loop.max_steps=10", "loop.eval_every=5", "loop.checkpoint_every=5", "loop.log_every=5",
                      "scaling.num_workers=1"]
    sweep = run_sweep(load_config(SweepConfig, CONF / "sweep/clip_temperature.yaml", [
        "name=dry-run-sweep", "num_samples=2", "data_cpus_per_trial=0.5", "scheduler.grace_period=5",
        f"output_dir={runs}", f"overrides={trial!r}"]), resume=(runs / "sweeps/dry-run-sweep/tune").is_dir())
    print(format_table(sweep))

    print(f"\n== dry run finished in {time.time() - started:.0f} s ==")
    print(f"data:           {data_dir}")
    print(f"CLIP:           loss {clip['loss']:.3f}, zero-shot top-1 {clip.get('eval/zero_shot_top1', 0):.3f}, "
          f"image->text R@5 {clip.get('eval/image_to_text_R@5', 0):.3f}")
    print(f"VLM stage 1:    loss {stage1['loss']:.3f}, held-out perplexity {stage1.get('eval/perplexity', 0):.1f}")
    print(f"VLM stage 2:    loss {stage2['loss']:.3f}, exact match {stage2.get('eval/exact_match', 0):.3f} "
          "(a few steps only; see the README's recipe for a trained one)")
    best = sweep["best"] or {}
    print(f"sweep:          {len(sweep['trials'])} trials, best {best.get('run_name')} "
          f"zero-shot top-1 {best.get('metric') or 0:.3f}; table in {sweep['root']}/results.json")
    print(f"checkpoints:    {runs}/<run name>/checkpoint_*")
    print(f"MLflow UI:      mlflow ui --backend-store-uri sqlite:///{runs}/mlflow.db --port 5000")
    return 0


def _step(number: int, text: str) -> None:
    print(f"[dry-run] {number}/5 {text}", flush=True)
