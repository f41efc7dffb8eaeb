"""Per-rank memory of the SmolLM2-135M VLM (stage 2: projector + LM learn, the vision tower frozen)
under each strategy: bytes of parameters, gradients and AdamW state each rank holds, counted from
the tensors themselves (a sharded parameter counts its local shard), and the peak memory per rank
(CUDA: max_memory_allocated; CPU: the process's peak RSS, which includes Python and torch).

Ranks are local processes on gloo (CPU) or NCCL (GPUs), sharded by the trainer's own
training/engine/parallelize.py and stepped by its own loop. The LM has SmolLM2-135M's architecture
(134.5M parameters) with random weights: memory does not depend on the values.

    python -m benchmarks.memory --out benchmarks/results/memory_2core.json
    python -m benchmarks.memory --modes ddp:1 fsdp:2 --activation-checkpointing blocks
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from benchmarks.common import device_name, write_report

MODES = ["ddp:1", "ddp:2", "fsdp:2", "fsdp:4", "lora:1", "lora+fsdp:2", "stage1:1"]
GPU_BYTES = 80e9  # an 80 GB GPU
# Set aside per GPU, not measured here: activations (with activation checkpointing, each block's
# input), the all-gathered blocks FSDP holds in flight, CUDA context and allocator fragmentation.
RESERVE_BYTES = 10e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--modes",
        nargs="+",
        default=MODES,
        help="strategy:ranks; lora = LoRA rank 16 on the LM, stage1 = the LM frozen (only the projector learns)",
    )
    parser.add_argument("--vision-preset", default="synth", help="the frozen tower's shape (conf/clip/NAME.yaml)")
    parser.add_argument("--batch-size", type=int, default=4, help="samples per rank per step")
    parser.add_argument("--text-tokens", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--activation-checkpointing", default="none", choices=["none", "blocks"])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from benchmarks.vlm_throughput import random_tower_checkpoint
    from mmtrain.training.models.language_model import SMOLLM2_135M_SHAPE, make_tiny_lm

    scratch = Path(tempfile.mkdtemp(prefix="mmtrain-memory-"))
    lm = make_tiny_lm(scratch / "lm", ["a photo of a cat"] * 10, vocab_size=300, **SMOLLM2_135M_SHAPE)
    tower = random_tower_checkpoint(args.vision_preset)
    results = []
    for mode in args.modes:
        strategy, ranks = mode.split(":")
        out = scratch / f"{strategy}-{ranks}.json"
        mp.spawn(_rank, args=(int(ranks), strategy, str(lm), tower, args, str(out)), nprocs=int(ranks))
        result = json.loads(out.read_text())
        results.append(result)
        print(
            f"{mode:>12}: per rank params {_mb(result['param_bytes'])}, grads {_mb(result['grad_bytes'])}, "
            f"AdamW {_mb(result['optimizer_bytes'])}, state {_mb(result['state_bytes'])}; "
            f"peak {_mb(result['peak_bytes'])} (rank 0); checkpoint {_mb(result['checkpoint_bytes'])}",
            flush=True,
        )
    ddp = next((r for r in results if r["strategy"] == "ddp" and r["ranks"] == 1), None)
    for result in results:
        if ddp and result["strategy"] == "fsdp":
            ideal = ddp["state_bytes"] / result["ranks"]
            result["state_vs_ddp_over_ranks"] = result["state_bytes"] / ideal
    table = largest_lm_table(results)
    for row in table:
        print(
            f"largest LM per 80 GB GPU, {row['strategy']:>9}: "
            + ", ".join(
                f"{gpus} GPU{'s' if gpus > 1 else ''} {billions:.1f}B" for gpus, billions in row["billions"].items()
            )
        )
    report = {
        "benchmark": "memory",
        "device": device_name(_device(0)),
        "vision_preset": args.vision_preset,
        "lm": "SmolLM2-135M architecture, random weights",
        "batch_size_per_rank": args.batch_size,
        "activation_checkpointing": args.activation_checkpointing,
        "results": results,
        "largest_lm_per_80gb_gpu": table,
        "reserve_bytes_per_gpu": RESERVE_BYTES,
    }
    write_report(args.out or Path("benchmarks/results/memory.json"), report)


def largest_lm_table(results: list[dict], gpu_counts=(1, 8, 32)) -> list[dict]:
    """Arithmetic, not a run: the measured state bytes per LM parameter of each strategy (DDP's per
    rank; FSDP's and LoRA+FSDP's times their rank count, the whole run's) spread over 1, 8 and 32
    GPUs, against an 80 GB GPU less RESERVE_BYTES. FSDP on one GPU is no sharding: DDP's figure."""
    per_param = {}
    for result in results:
        whole_run = result["state_bytes"] * (result["ranks"] if "fsdp" in result["strategy"] else 1)
        per_param.setdefault(result["strategy"], whole_run / result["total_parameters"])
    budget = GPU_BYTES - RESERVE_BYTES
    table = []
    for strategy, sharded in (("ddp", False), ("fsdp", True), ("lora", False), ("lora+fsdp", True)):
        if strategy not in per_param:
            continue
        unsharded = per_param.get(strategy.replace("+fsdp", "").replace("fsdp", "ddp"), per_param[strategy])
        billions = {
            gpus: budget / ((per_param[strategy] / gpus) if sharded and gpus > 1 else unsharded) / 1e9
            for gpus in gpu_counts
        }
        table.append({"strategy": strategy, "state_bytes_per_parameter": per_param[strategy], "billions": billions})
    return table


def _rank(rank: int, ranks: int, strategy: str, lm: str, tower: str, args, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(29400 + ranks), RANK=str(rank), WORLD_SIZE=str(ranks))
    device = _device(rank)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=ranks)
    try:
        measured = _measure(strategy, lm, tower, args, device)
        if rank == 0:
            Path(out).write_text(json.dumps({"strategy": strategy, "ranks": ranks, **measured}))
    finally:
        dist.destroy_process_group()


def _measure(strategy: str, lm: str, tower: str, args, device: torch.device) -> dict:
    from mmtrain.training.checkpoint.store import save_checkpoint
    from mmtrain.training.config.io import from_dict
    from mmtrain.training.config.schema import VlmRunConfig
    from mmtrain.training.engine.loop import TrainState, train
    from mmtrain.training.engine.optim import build_optimizer, warmup_cosine
    from mmtrain.training.engine.parallelize import parallelize
    from mmtrain.training.tasks.vlm import VlmTask

    lora_rank = 16 if strategy.startswith("lora") else 0
    cfg = from_dict(
        VlmRunConfig,
        {
            "stage": "captions" if strategy == "stage1" else "conversations",
            "lrs": {"vision": 0.0, "projector": 2e-5, "lm": 0.0 if strategy == "stage1" else 2e-5},
            "model": {"vision": {"checkpoint": tower}, "lm": {"path": lm, "lora": {"rank": lora_rank}}},
        },
    )
    task = VlmTask(cfg)
    torch.manual_seed(0)
    model = task.build_model()  # on the host: parallelize moves it, block by block under FSDP
    total_parameters = sum(p.numel() for p in model.parameters())
    bf16 = device.type == "cuda"
    parallel = parallelize(model, "fsdp" if "fsdp" in strategy else "ddp", args.activation_checkpointing, device, bf16)
    optimizer = build_optimizer(task.param_groups(model), cfg.optim, fused=device.type == "cuda")
    grads = {}
    # Gradients are whole just before the optimizer steps (the loop frees them at the next step's start).
    optimizer.register_step_pre_hook(
        lambda *_: grads.update(bytes=sum(_local_bytes(p.grad) for p in model.parameters() if p.grad is not None))
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    batch = _batch(task, model, args, device)
    train(
        task,
        parallel.model,
        optimizer,
        warmup_cosine(optimizer, cfg.optim, args.steps),
        TrainState(),
        iter(lambda: batch, None),
        args.steps,
        device,
        lambda state, result: True,
        grad_clip_norm=cfg.optim.grad_clip_norm,
        autocast_dtype=torch.bfloat16 if bf16 else None,
        no_sync=parallel.no_sync,
    )
    params = sum(_local_bytes(p) for p in model.parameters())
    moments = sum(_local_bytes(v) for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v))
    peak = (
        torch.cuda.max_memory_allocated(device)
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    checkpoint = Path(tempfile.mkdtemp(prefix="mmtrain-memory-ckpt-"))  # every rank writes its shards here
    save_checkpoint(checkpoint, model, optimizer, TrainState(step=args.steps), {}, frozen_sources=task.frozen_sources())
    return {
        "total_parameters": total_parameters,
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),  # DTensors: global
        "param_bytes": params,
        "grad_bytes": grads["bytes"],
        "optimizer_bytes": moments,
        "state_bytes": params + grads["bytes"] + moments,
        "peak_bytes": peak,
        "peak_kind": "cuda max_memory_allocated"
        if device.type == "cuda"
        else "peak RSS (the whole model is built on the host before sharding)",
        # This rank's files: model weights it owns + its optimizer state (frozen weights referenced)
        "checkpoint_bytes": sum(path.stat().st_size for path in checkpoint.rglob("*") if path.is_file()),
    }


def _batch(task, model, args, device: torch.device) -> dict:
    from benchmarks.vlm_throughput import synthetic_vlm_batch

    image_tokens = task.tower.num_patches
    length = image_tokens + args.text_tokens
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.lm.config.vocab_size - 1, (args.batch_size, length), generator=generator)
    ids[ids == model.image_token_id] = 0
    ids[:, :image_tokens] = model.image_token_id
    labels = ids.clone()
    labels[:, :image_tokens] = -100
    return synthetic_vlm_batch(ids, labels, args.batch_size, task.tower.image_size, device)


def _local_bytes(tensor: torch.Tensor) -> int:
    """Bytes this rank holds for `tensor` (a DTensor's local shard)."""
    local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
    return local.numel() * local.element_size()


def _device(rank: int) -> torch.device:
    return torch.device("cuda", rank % torch.cuda.device_count()) if torch.cuda.is_available() else torch.device("cpu")


def _mb(count: int) -> str:
    return f"{count / 2**20:,.0f} MiB"


if __name__ == "__main__":
    main()
