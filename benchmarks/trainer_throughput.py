"""The CLIP train step on synthetic in-memory batches: samples/s, MFU and peak memory, eager and
compiled. Full size on a GPU; `--preset tiny --batch-size 64` runs on a CPU.

    python -m benchmarks.trainer_throughput --preset vit_b32 --batch-size 512            # H100
    python -m benchmarks.trainer_throughput --preset tiny --batch-size 64 --steps 10     # CPU

`--profile-steps N` adds where the step's time goes (benchmarks/step_profile.py) for each mode;
`--compile-mode` passes torch.compile's mode (max-autotune, reduce-overhead = CUDA graphs, ...).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from benchmarks.common import H100_BF16_PEAK_FLOPS, device_name, forward_flops, write_report
from benchmarks.step_profile import format_profile, profile_steps
from mmtrain.pipelines import contract
from mmtrain.training.config.io import load_config
from mmtrain.training.config.schema import ClipRunConfig
from mmtrain.training.engine.loop import TrainState, train
from mmtrain.training.engine.optim import build_optimizer, warmup_cosine
from mmtrain.training.tasks.clip import ClipTask

CONF = Path(__file__).resolve().parent.parent / "conf" / "clip"


def synthetic_batches(cfg: ClipRunConfig, batch_size: int, device: torch.device):
    size, length = cfg.model.vision.image_size, cfg.data.context_length
    batch = {
        contract.IMAGE: torch.randint(0, 255, (batch_size, size, size, 3), dtype=torch.uint8, device=device),
        contract.INPUT_IDS: torch.randint(0, cfg.model.text.vocab_size, (batch_size, length), device=device),
        contract.ATTENTION_MASK: torch.ones(batch_size, length, dtype=torch.uint8, device=device),
    }
    while True:
        yield batch


def measure(
    cfg: ClipRunConfig,
    batch_size: int,
    steps: int,
    warmup: int,
    compile_model: bool,
    device: torch.device,
    compile_mode: str = "default",
    profile: int = 0,
) -> dict:
    task = ClipTask(cfg)
    model = task.build_model().to(device)
    optimizer = build_optimizer(task.param_groups(model), cfg.optim, fused=device.type == "cuda")
    scheduler = warmup_cosine(optimizer, cfg.optim, steps + warmup + profile)
    stepped = model if not compile_model else torch.compile(model, mode=compile_mode)
    autocast = torch.bfloat16 if device.type == "cuda" else None
    batches = synthetic_batches(cfg, batch_size, device)
    sample = task.prepare_batch(next(batches), device)
    flops_per_sample = (
        3
        * forward_flops(
            lambda: model(sample[contract.IMAGE], sample[contract.INPUT_IDS], sample[contract.ATTENTION_MASK])
        )
        / batch_size
    )
    # The trainer's own step: gradient clipping as configured, bf16 autocast on a GPU.
    step = dict(grad_clip_norm=cfg.optim.grad_clip_norm, autocast_dtype=autocast)
    state = train(task, stepped, optimizer, scheduler, TrainState(), batches, warmup, device, lambda s, r: True, **step)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    train(task, stepped, optimizer, scheduler, state, batches, warmup + steps, device, lambda s, r: True, **step)
    if device.type == "cuda":
        torch.cuda.synchronize()
    step_s = (time.perf_counter() - start) / steps
    samples_per_s = batch_size / step_s

    def run_steps(count: int) -> None:
        train(
            task, stepped, optimizer, scheduler, state, batches, state.step + count, device, lambda s, r: True, **step
        )

    profiled = profile_steps(run_steps, profile, step_s, device) if profile else None
    return {
        "compiled": compile_model,
        "compile_mode": compile_mode if compile_model else None,
        "samples_per_s": samples_per_s,
        "profile": profiled,
        "flops_per_sample": flops_per_sample,
        "mfu_vs_h100_bf16": samples_per_s * flops_per_sample / H100_BF16_PEAK_FLOPS,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="vit_b32", help="a conf/clip/ preset name")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--modes", default="eager,compiled")
    parser.add_argument(
        "--compile-mode",
        default="default",
        help="torch.compile mode for the compiled run: default, max-autotune, reduce-overhead, ...",
    )
    parser.add_argument(
        "--profile-steps",
        type=int,
        default=0,
        help="after timing, profile this many steps and report time by kernel family",
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = True
    cfg = load_config(ClipRunConfig, CONF / f"{args.preset}.yaml")
    if cfg.model.text.vocab_size == 0:
        cfg = load_config(ClipRunConfig, CONF / f"{args.preset}.yaml", ["model.text.vocab_size=4096"])
    results = []
    for mode in args.modes.split(","):
        result = measure(
            cfg,
            args.batch_size,
            args.steps,
            args.warmup,
            mode == "compiled",
            device,
            args.compile_mode,
            args.profile_steps,
        )
        results.append(result)
        print(
            f"{args.preset} batch {args.batch_size} {mode}: {result['samples_per_s']:.1f} samples/s, "
            f"MFU {result['mfu_vs_h100_bf16']:.1%} of an H100's bf16 peak",
            flush=True,
        )
        if result["profile"]:
            print(format_profile(result["profile"]), flush=True)
    write_report(
        args.out or Path(f"benchmarks/results/trainer_throughput_{args.preset}.json"),
        {
            "benchmark": "trainer_throughput",
            "device": device_name(device),
            "preset": args.preset,
            "batch_size": args.batch_size,
            "steps": args.steps,
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
