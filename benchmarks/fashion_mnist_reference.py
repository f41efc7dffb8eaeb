"""The Fashion-MNIST recipe with and without Ray, side by side: the reference trains the same model,
steps and global batch on the same shards in one process with a plain torch DataLoader (the same
reader, decode, augmentation and tokenizer as the pipeline), then evaluates zero-shot on the test
shards; then `mmtrain train clip --config conf/clip/fashion_mnist.yaml` runs as a user runs it.
Both wall times cover the whole command (start-up, data, training, final evaluation). Writes JSON.

    python -m benchmarks.fashion_mnist_reference --out benchmarks/results/fashion_mnist_2core.json
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import write_report

REPO = Path(__file__).resolve().parents[1]
PRESET = REPO / "conf/clip/fashion_mnist.yaml"


class ShardSamples(torch.utils.data.IterableDataset):
    """Decoded, augmented, tokenized samples of the shards, each DataLoader worker reading its share
    of them in a new order each epoch: a plain PyTorch pipeline over the same stages as mmtrain's."""

    def __init__(self, cfg, paths: list[str], train: bool, tokenizer: str, epochs: int = 1):
        self.cfg, self.paths, self.train, self.tokenizer, self.epochs = cfg, paths, train, tokenizer, epochs

    def __iter__(self):
        from mmtrain.pipelines.stages import Tokenize, decode_and_augment
        from mmtrain.pipelines.tar_samples import Record, iter_records

        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        tokenize = Tokenize(self.tokenizer, self.cfg.data.context_length)
        for epoch in range(self.epochs):
            order = (
                np.random.default_rng([0, epoch]).permutation(len(self.paths)) if self.train else range(len(self.paths))
            )
            for shard in [self.paths[i] for i in order][worker::workers]:
                with open(shard, "rb") as stream:
                    records = [r for r in iter_records(stream) if isinstance(r, Record)]
                if self.train:
                    np.random.default_rng([1, epoch]).shuffle(records)
                for start in range(0, len(records), 256):
                    chunk = records[start : start + 256]
                    batch = decode_and_augment(
                        _raw_columns(chunk, epoch),
                        augment=self.cfg.data.augment,
                        train=self.train,
                        max_pixels=self.cfg.data.max_image_pixels,
                        keep_conversation=False,
                    )
                    batch = tokenize(batch)
                    for row in range(len(batch["image"])):
                        yield {name: batch[name][row] for name in ("image", "input_ids", "attention_mask", "label")}


def _raw_columns(records, epoch: int) -> dict:
    return {
        "key": [r.key for r in records],
        "image_bytes": [r.image_bytes for r in records],
        "caption": [r.caption for r in records],
        "label": [r.label for r in records],
        "bad_reason": [""] * len(records),
        "augment_seed": [epoch * 10**7 + r.index for r in records],
        "epoch": [epoch] * len(records),
        "shard": [0] * len(records),
        "index": [r.index for r in records],
        "offset": [r.offset for r in records],
    }


def run_reference(workers: int, overrides: list[str] = ()) -> dict:
    """Train and evaluate without Ray; the wall time of the whole function."""
    from mmtrain.training.config.io import load_config
    from mmtrain.training.config.schema import ClipRunConfig
    from mmtrain.training.engine.loop import TrainState, train
    from mmtrain.training.engine.optim import build_optimizer, warmup_cosine
    from mmtrain.training.tasks.clip import ClipTask
    from mmtrain.training.tasks.resolve import resolve_clip

    start = time.perf_counter()
    cfg = load_config(ClipRunConfig, PRESET, ["tracking.tracking_uri=none", *overrides])
    cfg, assets = resolve_clip(cfg)
    global_batch = cfg.loop.batch_size_per_worker * cfg.scaling.num_workers
    task = ClipTask(cfg)
    torch.manual_seed(cfg.loop.seed)
    model = task.build_model()
    optimizer = build_optimizer(task.param_groups(model), cfg.optim)
    scheduler = warmup_cosine(optimizer, cfg.optim, cfg.loop.max_steps)
    train_paths = sorted(p for spec in cfg.data.train_shards for p in glob.glob(spec))
    epochs = -(-cfg.loop.max_steps * global_batch // 60_000) + 1
    loader = torch.utils.data.DataLoader(
        ShardSamples(cfg, train_paths, True, cfg.data.tokenizer, epochs),
        batch_size=global_batch,
        num_workers=workers,
        persistent_workers=True,
        prefetch_factor=4,
    )
    state = train(
        task,
        model,
        optimizer,
        scheduler,
        TrainState(),
        iter(loader),
        cfg.loop.max_steps,
        torch.device("cpu"),
        lambda s, r: True,
        grad_clip_norm=cfg.optim.grad_clip_norm,
    )
    eval_paths = sorted(p for spec in cfg.data.eval_shards for p in glob.glob(spec))
    eval_loader = torch.utils.data.DataLoader(
        ShardSamples(cfg, eval_paths, False, cfg.data.tokenizer), batch_size=cfg.eval.batch_size, num_workers=workers
    )
    model.eval()
    with torch.no_grad():
        batches = ({name: value.numpy() for name, value in batch.items()} for batch in eval_loader)
        metrics = task.evaluate(model, batches, torch.device("cpu"), assets).metrics
    return {"steps": state.step, "zero_shot_top1": metrics["zero_shot_top1"], "wall_s": time.perf_counter() - start}


def run_mmtrain(run_dir: Path, overrides: list[str] = ()) -> dict:
    """The user's command, in a subprocess; its final metrics parsed from the summary it prints."""
    start = time.perf_counter()
    command = [
        sys.executable,
        "-m",
        "mmtrain",
        "train",
        "clip",
        "--config",
        str(PRESET),
        "--set",
        f"run.output_dir={run_dir}",
        "--set",
        "tracking.tracking_uri=none",
    ]
    for override in overrides:
        command += ["--set", override]
    out = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - start
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "command.log").write_text(out.stdout + out.stderr)  # step lines, time to first step
    if out.returncode:
        raise RuntimeError(out.stdout[-3000:] + out.stderr[-3000:])
    summary = out.stdout[out.stdout.rindex("== final metrics ==") :]

    def value(name: str) -> float:
        return float(re.search(rf"^\s*{re.escape(name)}: (\S+)", summary, re.M).group(1))

    return {
        "steps": int(value("step")),
        "zero_shot_top1": value("val/zero_shot_top1"),
        "wall_s": wall,
        "samples_per_s_last_window": value("train/samples_per_s"),
        "time_to_first_step_s": value("train/time_to_first_step_s"),
        # Samples the pipeline read and decoded: those trained on, and what it read ahead
        "samples_decoded": int(value("train_data/good_samples")),
        "log": str(run_dir / "command.log"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="reference DataLoader workers (2 cores: 1 decodes, the main process trains)",
    )
    parser.add_argument("--run-dir", type=Path, default=Path("/tmp/mmtrain-fmnist-bench"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="a config override for both runs")
    parser.add_argument("--only", choices=("reference", "mmtrain"), help="run one side (for tuning, not a ratio)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/fashion_mnist_2core.json"))
    args = parser.parse_args()
    os.chdir(REPO)  # the preset's data paths are relative to the project
    if args.only != "mmtrain":
        reference = run_reference(args.workers, args.overrides)
        print(f"reference: {reference}", flush=True)
    if args.only != "reference":
        mmtrain = run_mmtrain(args.run_dir / time.strftime("%Y%m%d-%H%M%S"), args.overrides)
        print(f"mmtrain: {mmtrain}", flush=True)
    if args.only:
        return
    report = {
        "benchmark": "fashion_mnist_reference",
        "cpus": os.cpu_count(),
        "preset": str(PRESET.relative_to(REPO)),
        "overrides": args.overrides,
        "reference": reference,
        "mmtrain": mmtrain,
        "wall_ratio_mmtrain_over_reference": mmtrain["wall_s"] / reference["wall_s"],
    }
    write_report(args.out, report)
    print(
        f"zero-shot top-1: mmtrain {mmtrain['zero_shot_top1']:.4f}, reference {reference['zero_shot_top1']:.4f}; "
        f"wall: mmtrain {mmtrain['wall_s']:.0f} s, reference {reference['wall_s']:.0f} s, ratio "
        f"{report['wall_ratio_mmtrain_over_reference']:.2f}"
    )


if __name__ == "__main__":
    main()
