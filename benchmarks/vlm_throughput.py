"""The VLM train step (stage 2: projector + LM learn, vision tower frozen) on synthetic in-memory
batches: tokens/s and MFU. Full size: SmolLM2-135M with the vit_b16 tower on a GPU.

    python -m benchmarks.vlm_throughput --lm models/smollm2-135m --vision-preset vit_b16 --batch-size 32   # GPU
    python -m benchmarks.vlm_throughput --lm smollm2-135m-shape --vision-preset vit_b16   # random weights, same size
    python -m benchmarks.vlm_throughput --lm data/synth/tiny-lm --vision-preset synth --batch-size 8       # CPU
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import H100_BF16_PEAK_FLOPS, device_name, forward_flops, write_report
from benchmarks.step_profile import format_profile, profile_steps
from mmtrain.pipelines import contract
from mmtrain.pipelines.collate import VlmCollate
from mmtrain.training.checkpoint.store import save_checkpoint
from mmtrain.training.config.io import from_dict, load_config, to_dict
from mmtrain.training.config.schema import ClipRunConfig, ModuleLearningRates, VlmRunConfig
from mmtrain.training.engine.loop import TrainState, train
from mmtrain.training.engine.optim import build_optimizer, warmup_cosine
from mmtrain.training.models.clip import ClipModel
from mmtrain.training.models.language_model import SMOLLM2_135M_SHAPE, make_tiny_lm
from mmtrain.training.models.vision_encoder import tower_info
from mmtrain.training.tasks.vlm import VlmTask

CONF = Path(__file__).resolve().parent.parent / "conf" / "clip"


def random_tower_checkpoint(preset: str) -> str:
    """A vision tower of the preset's shape with random weights (throughput does not need trained ones)."""
    cfg = load_config(ClipRunConfig, CONF / f"{preset}.yaml", ["model.text.vocab_size=1000"])
    directory = Path(tempfile.mkdtemp(prefix="mmtrain-tower-"))
    save_checkpoint(
        directory, ClipModel(cfg.model, cfg.data.context_length, cfg.loss), None, TrainState(), to_dict(cfg)
    )
    return str(directory)


def synthetic_vlm_batch(ids, labels, batch_size: int, image_size: int, device: torch.device) -> dict:
    """A batch as Ray delivers one to a training worker: collated on the host (VlmCollate finds the
    supervised positions there), then copied to the device."""
    host = {
        contract.IMAGE: torch.randint(0, 255, (batch_size, 1, image_size, image_size, 3), dtype=torch.uint8),
        contract.NUM_IMAGES: torch.ones(batch_size, dtype=torch.int32),
        contract.INPUT_IDS: ids.cpu(),
        contract.ATTENTION_MASK: torch.ones_like(ids).cpu(),
        contract.LABELS: labels.cpu(),
    }
    collated = VlmCollate()({name: value.numpy() for name, value in host.items()})
    return {name: value.to(device) for name, value in collated.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--lm",
        required=True,
        help="an HF causal-LM directory, or smollm2-135m-shape: a random "
        "model of SmolLM2-135M's size (throughput does not depend on the weights)",
    )
    parser.add_argument("--vision-preset", default="vit_b16")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--text-tokens", type=int, default=64, help="text tokens per sample beside the image's")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--profile-steps",
        type=int,
        default=0,
        help="after timing, profile this many steps and report time by kernel family",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model, as loop.compile=true does in training (where the number "
        "of supervised positions varies by batch: one recompile makes that shape dynamic)",
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    lm_path = args.lm
    if args.lm == "smollm2-135m-shape":
        lm_path = str(
            make_tiny_lm(
                Path(tempfile.mkdtemp(prefix="mmtrain-lm-")),
                ["a photo of a cat"] * 10,
                vocab_size=300,
                **SMOLLM2_135M_SHAPE,
            )
        )
    tower = random_tower_checkpoint(args.vision_preset)
    info = tower_info(tower)
    image_tokens = info.num_patches
    length = image_tokens + args.text_tokens
    cfg = from_dict(
        VlmRunConfig,
        {
            "stage": "conversations",
            "max_length": length,
            "model": {"vision": {"checkpoint": tower}, "lm": {"path": lm_path}},
        },
    )
    cfg = VlmRunConfig(**{**cfg.__dict__, "lrs": ModuleLearningRates(vision=0, projector=2e-5, lm=2e-5)})
    task = VlmTask(cfg)
    model = task.build_model().to(device)
    vocab = model.lm.config.vocab_size
    size = info.image_size
    ids = torch.randint(0, vocab - 1, (args.batch_size, length), device=device)
    ids[ids == model.image_token_id] = 0  # random text must not contain extra image tokens
    ids[:, :image_tokens] = model.image_token_id
    labels = ids.clone()
    labels[:, :image_tokens] = -100
    batch = synthetic_vlm_batch(ids, labels, args.batch_size, size, device)

    prepared = task.prepare_batch(batch, device)
    with torch.no_grad():
        total = forward_flops(
            lambda: model(
                prepared[contract.IMAGE],
                prepared[contract.INPUT_IDS],
                prepared[contract.LABELS],
                prepared[contract.PREDICTING],
            )
        )
        vision = forward_flops(lambda: model.image_features(prepared[contract.IMAGE]))
    # The frozen tower runs forward only; the projector and LM run forward and backward (~3x).
    flops_per_step = vision + 3 * (total - vision)
    optimizer = build_optimizer(task.param_groups(model), cfg.optim, fused=device.type == "cuda")
    scheduler = warmup_cosine(optimizer, cfg.optim, args.steps + args.warmup + args.profile_steps)
    autocast = torch.bfloat16 if device.type == "cuda" else None
    stepped = torch.compile(model) if args.compile else model
    batches = iter(lambda: batch, None)  # the same batch forever
    step = dict(grad_clip_norm=cfg.optim.grad_clip_norm, autocast_dtype=autocast)  # the trainer's own step
    state = train(
        task, stepped, optimizer, scheduler, TrainState(), batches, args.warmup, device, lambda s, r: True, **step
    )
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    train(
        task, stepped, optimizer, scheduler, state, batches, args.warmup + args.steps, device, lambda s, r: True, **step
    )
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / args.steps

    def run_steps(count: int) -> None:
        train(
            task, stepped, optimizer, scheduler, state, batches, state.step + count, device, lambda s, r: True, **step
        )

    profiled = profile_steps(run_steps, args.profile_steps, seconds, device) if args.profile_steps else None
    report = {
        "benchmark": "vlm_throughput",
        "device": device_name(device),
        "lm": args.lm,
        "vision_preset": args.vision_preset,
        "batch_size": args.batch_size,
        "tokens_per_sample": length,
        "compiled": args.compile,
        "tokens_per_s": args.batch_size * length / seconds,
        "samples_per_s": args.batch_size / seconds,
        "mfu_vs_h100_bf16": flops_per_step / seconds / H100_BF16_PEAK_FLOPS,
        "profile": profiled,
    }
    print(
        f"{report['tokens_per_s']:.0f} tokens/s ({report['samples_per_s']:.1f} samples/s), "
        f"MFU {report['mfu_vs_h100_bf16']:.2%} of an H100's bf16 peak"
    )
    if profiled:
        print(format_profile(profiled))
    write_report(args.out or Path("benchmarks/results/vlm_throughput.json"), report)


if __name__ == "__main__":
    main()
