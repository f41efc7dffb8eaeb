"""A few training steps of both trainers with CUDA's sync debug mode set to "error": any host-device
synchronisation inside the step (an .item(), a nonzero, a host tensor built on the device, a
pageable copy) raises, naming the call. Run it on every GPU host:

    python -m benchmarks.sync_check                 # GPU: fails on the first sync in a step
    python -m benchmarks.sync_check --steps 2       # CPU: runs the same steps, checks nothing

Batches are made as Ray Train hands them over (collated on the host, pinned, copied to the device
before the step), so what is checked is the step itself. Two warm-up steps run unchecked first:
the optimizer and allocator initialise lazily.
"""

from __future__ import annotations

import argparse
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch

from benchmarks.trainer_throughput import CONF, synthetic_batches
from benchmarks.vlm_throughput import random_tower_checkpoint, synthetic_vlm_batch
from mmtrain.training.config.io import from_dict, load_config
from mmtrain.training.config.schema import ClipRunConfig, ModuleLearningRates, VlmRunConfig
from mmtrain.training.engine.loop import TrainState, train
from mmtrain.training.engine.optim import build_optimizer, warmup_cosine
from mmtrain.training.models.language_model import make_tiny_lm
from mmtrain.training.models.vision_encoder import tower_info
from mmtrain.training.tasks.clip import ClipTask
from mmtrain.training.tasks.vlm import VlmTask


@contextmanager
def syncs_are_errors(device: torch.device):
    if device.type != "cuda":
        yield
        return
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def run_checked(task, model, cfg, batches, steps: int, device: torch.device, grad_accum_steps: int = 1) -> None:
    optimizer = build_optimizer(task.param_groups(model), cfg.optim, fused=device.type == "cuda")
    scheduler = warmup_cosine(optimizer, cfg.optim, steps + 2)
    autocast = torch.bfloat16 if device.type == "cuda" else None
    step = dict(grad_accum_steps=grad_accum_steps, grad_clip_norm=cfg.optim.grad_clip_norm, autocast_dtype=autocast)
    state = train(task, model, optimizer, scheduler, TrainState(), batches, 2, device, lambda s, r: True, **step)
    with syncs_are_errors(device):
        train(task, model, optimizer, scheduler, state, batches, 2 + steps, device, lambda s, r: True, **step)


def check_clip(preset: str, batch_size: int, steps: int, device: torch.device) -> None:
    cfg = load_config(ClipRunConfig, CONF / f"{preset}.yaml", ["model.text.vocab_size=1000"])
    task = ClipTask(cfg)
    model = task.build_model().to(device)
    batches = synthetic_batches(cfg, batch_size, device)
    for accumulate in (1, 2):  # feature-cached accumulation has its own step
        run_checked(task, model, cfg, batches, steps, device, grad_accum_steps=accumulate)
        print(f"clip {preset}, accumulation {accumulate}: {steps} steps {_verdict(device)}", flush=True)


def check_vlm(preset: str, batch_size: int, steps: int, device: torch.device) -> None:
    lm = make_tiny_lm(Path(tempfile.mkdtemp(prefix="mmtrain-lm-")), ["a photo of a cat"] * 10, vocab_size=300)
    tower = tower_info(random_tower_checkpoint(preset))
    image_tokens = tower.num_patches
    cfg = from_dict(
        VlmRunConfig,
        {
            "stage": "conversations",
            "max_length": image_tokens + 16,
            "model": {"vision": {"checkpoint": tower.path}, "lm": {"path": str(lm)}},
        },
    )
    cfg = VlmRunConfig(**{**cfg.__dict__, "lrs": ModuleLearningRates(vision=0, projector=1e-3, lm=1e-3)})
    task = VlmTask(cfg)
    model = task.build_model().to(device)
    ids = torch.randint(0, model.image_token_id, (batch_size, image_tokens + 16))
    ids[:, :image_tokens] = model.image_token_id
    labels = ids.clone()
    labels[:, : image_tokens + 4] = -100  # an image and a prompt, then the supervised answer
    batch = synthetic_vlm_batch(ids, labels, batch_size, tower.image_size, device)
    run_checked(task, model, cfg, iter(lambda: batch, None), steps, device)
    print(f"vlm ({preset} tower, tiny LM): {steps} steps {_verdict(device)}", flush=True)


def _verdict(device: torch.device) -> str:
    return "without a host-device sync" if device.type == "cuda" else "ran (syncs not checked: no GPU)"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip-preset", default="tiny")
    parser.add_argument("--vision-preset", default="tiny", help="the VLM's vision tower")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda":
        print("no GPU: running the steps without checking for syncs", flush=True)
    check_clip(args.clip_preset, args.batch_size, args.steps, device)
    check_vlm(args.vision_preset, args.batch_size, args.steps, device)


if __name__ == "__main__":
    main()
