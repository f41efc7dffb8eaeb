"""Packed vs padded VLM training rows, side by side in one run: the trainer's own step on the same
model and the same token budget per step (rows x length), over samples whose lengths are skewed as
instruction-tuning mixes are. Reports real (not padding) tokens/s each way, their ratio, and the
padding fraction each way. "padded" rows are cut to their batch's longest sample at collation (as
LLaVA's and TRL's collators pad; a smaller, varying budget); "padded_to_max_length" rows are not
(mmtrain's unpacked rows before collation trimmed them), for reference.

    python -m benchmarks.vlm_packing                       # CPU: a small random LM, the synth tower
    python -m benchmarks.vlm_packing --lm smollm2-135m-shape --vision-preset vit_b16 --max-length 2048  # GPU

Lengths: each sample is one image block (the tower's patches; 6% of samples have none, as
LLaVA-665k's text-only ShareGPT share) plus text whose token count is log-normal with median 150 and
sigma 0.9, clipped to the row: a long right tail of multi-turn and text-only conversations beside
many short VQA answers. These parameters model LLaVA-665k's shape; they are not fitted to the file.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import device_name, write_report
from benchmarks.vlm_throughput import random_tower_checkpoint
from mmtrain.pipelines import contract
from mmtrain.pipelines.collate import VlmCollate
from mmtrain.pipelines.conversations import IGNORE_INDEX
from mmtrain.pipelines.packing import PackBudget, assemble, pack_rows
from mmtrain.training.config.io import from_dict
from mmtrain.training.config.schema import ModuleLearningRates, VlmRunConfig
from mmtrain.training.engine.loop import TrainState, train
from mmtrain.training.engine.optim import build_optimizer, warmup_cosine
from mmtrain.training.models.language_model import SMOLLM2_135M_SHAPE, make_tiny_lm
from mmtrain.training.models.vision_encoder import tower_info
from mmtrain.training.tasks.vlm import VlmTask

TEXT_MEDIAN, TEXT_SIGMA, TEXT_ONLY = 150, 0.9, 0.06


def skewed_samples(count: int, image_tokens: int, max_length: int, image_token_id: int, vocab: int, seed: int = 0):
    """(input_ids, labels, images) per sample: an image block (or none), then text whose last third
    is the supervised reply."""
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(count):
        images = int(rng.random() >= TEXT_ONLY)
        room = max_length - images * image_tokens
        text = int(np.clip(rng.lognormal(np.log(TEXT_MEDIAN), TEXT_SIGMA), 8, room))
        ids = [image_token_id] * (images * image_tokens) + rng.integers(0, image_token_id, text).tolist()
        labels = [IGNORE_INDEX] * (len(ids) - text // 3) + ids[len(ids) - text // 3 :]
        samples.append((ids, labels, images))
    return samples


def padded_batches(samples, rows: int, length: int, image: np.ndarray):
    """One sample per row, padded to `length`, as the data stage makes them (collation then trims
    them to the batch's longest sample, as LLaVA's and TRL's collators pad)."""
    for start in range(0, len(samples) - rows + 1, rows):
        chosen = samples[start : start + rows]
        ids = np.zeros((rows, length), np.int32)
        labels = np.full((rows, length), IGNORE_INDEX, np.int32)
        mask = np.zeros((rows, length), np.uint8)
        for row, (sample_ids, sample_labels, _) in enumerate(chosen):
            ids[row, : len(sample_ids)], labels[row, : len(sample_ids)] = sample_ids, sample_labels
            mask[row, : len(sample_ids)] = 1
        counts = np.array([images for _, _, images in chosen], np.int32)
        yield {
            contract.IMAGE: np.broadcast_to(image, (rows, 1, *image.shape)).copy(),
            contract.NUM_IMAGES: counts,
            contract.INPUT_IDS: ids,
            contract.LABELS: labels,
            contract.ATTENTION_MASK: mask,
        }


def packed_batches(samples, rows: int, budget: PackBudget, image: np.ndarray, block: int = 256):
    """Packed as the data stage packs: a block of samples at a time (a shard's rows, in the pipeline)."""
    pending: list[dict] = []
    for start in range(0, len(samples), block):
        chosen = samples[start : start + block]
        encoded = [(ids, labels) for ids, labels, _ in chosen]
        counts = np.array([images for _, _, images in chosen], np.int32)
        images = np.broadcast_to(image, (len(chosen), 1, *image.shape))
        members = pack_rows(encoded, counts, budget)
        packed = assemble(encoded, images, counts, np.arange(len(chosen)), members, budget, 0)
        packed.pop(contract.POSITION)
        pending += [{name: values[row] for name, values in packed.items()} for row in range(len(members))]
        while len(pending) >= rows:
            batch, pending = pending[:rows], pending[rows:]
            yield {name: np.stack([row[name] for row in batch]) for name in batch[0]}


def timed_tokens(task, model, cfg, batches, steps: int, warmup: int, device, trim: bool = True) -> dict:
    """Real tokens/s of the trainer's step over `steps` batches, after `warmup`."""
    collated = [VlmCollate(trim)(batch) for batch in batches]
    optimizer = build_optimizer(task.param_groups(model), cfg.optim)
    scheduler = warmup_cosine(optimizer, cfg.optim, steps + warmup)
    moved = [{name: value.to(device) for name, value in batch.items()} for batch in collated]
    state = train(
        task, model, optimizer, scheduler, TrainState(), iter(moved[:warmup]), warmup, device, lambda s, r: True
    )
    start = time.perf_counter()
    train(task, model, optimizer, scheduler, state, iter(moved[warmup:]), warmup + steps, device, lambda s, r: True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    measured = collated[warmup : warmup + steps]
    real = sum(int(batch[contract.TOKENS]) for batch in measured)
    slots = sum(batch[contract.INPUT_IDS].numel() for batch in measured)
    rows = sum(len(batch[contract.INPUT_IDS]) for batch in measured)
    return {"seconds": seconds, "tokens_per_s": real / seconds, "padding_fraction": 1 - real / slots, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lm", default="small", help="small (a random 4-layer LM), smollm2-135m-shape, or an HF dir")
    parser.add_argument("--vision-preset", default="synth")
    parser.add_argument("--max-length", type=int, default=1024, help="a padded row's length, and a packed row's")
    parser.add_argument("--rows", type=int, default=4, help="rows per step, both ways (the same token budget)")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="padded and packed alternate this many times")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/vlm_packing.json"))
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shape = SMOLLM2_135M_SHAPE if args.lm == "smollm2-135m-shape" else dict(hidden_size=256, layers=4, heads=4)
    lm = args.lm
    if args.lm in ("small", "smollm2-135m-shape"):
        lm = str(make_tiny_lm(Path(tempfile.mkdtemp(prefix="mmtrain-lm-")), ["a photo"] * 10, vocab_size=300, **shape))
    tower = random_tower_checkpoint(args.vision_preset)
    info = tower_info(tower)
    cfg = from_dict(
        VlmRunConfig,
        {
            "stage": "conversations",
            "max_length": args.max_length,
            "model": {"vision": {"checkpoint": tower}, "lm": {"path": lm}},
        },
    )
    cfg = VlmRunConfig(**{**cfg.__dict__, "lrs": ModuleLearningRates(vision=0, projector=1e-4, lm=1e-4)})
    task = VlmTask(cfg)
    torch.manual_seed(0)
    model = task.build_model().to(device)
    samples = skewed_samples(
        20_000, info.num_patches, args.max_length, model.image_token_id, model.lm.config.vocab_size
    )
    image = np.random.default_rng(0).integers(0, 255, (info.image_size, info.image_size, 3), dtype=np.uint8)
    budget = PackBudget(args.max_length, args.max_length // max(info.num_patches, 1), args.max_length // 16)
    needed = args.steps + args.warmup
    streams = {  # name: (batches, collation trims them)
        "padded_to_max_length": (lambda: padded_batches(samples, args.rows, args.max_length, image), False),
        "padded": (lambda: padded_batches(samples, args.rows, args.max_length, image), True),
        "packed": (lambda: packed_batches(samples, args.rows, budget, image), True),
    }
    runs = {name: [] for name in streams}
    for _ in range(args.rounds):
        for name, (stream, trim) in streams.items():
            batches = [batch for _, batch in zip(range(needed), stream())]
            runs[name].append(timed_tokens(task, model, cfg, batches, args.steps, args.warmup, device, trim))
    best = {name: max(results, key=lambda r: r["tokens_per_s"]) for name, results in runs.items()}
    lengths = np.array([len(ids) for ids, _, _ in samples])
    report = {
        "benchmark": "vlm_packing",
        "device": device_name(device),
        "lm": args.lm,
        "vision_preset": args.vision_preset,
        "image_tokens": info.num_patches,
        "max_length": args.max_length,
        "rows_per_step": args.rows,
        "lengths": {
            "text_median": TEXT_MEDIAN,
            "text_sigma": TEXT_SIGMA,
            "text_only_fraction": TEXT_ONLY,
            "sample_tokens_mean": float(lengths.mean()),
            "sample_tokens_p50_p90_p99": np.percentile(lengths, [50, 90, 99]).tolist(),
        },
        "runs": runs,
        **best,
        "tokens_per_s_ratio": best["packed"]["tokens_per_s"] / best["padded"]["tokens_per_s"],
        "tokens_per_s_ratio_vs_padded_to_max_length": best["packed"]["tokens_per_s"]
        / best["padded_to_max_length"]["tokens_per_s"],
    }
    for name, result in best.items():
        print(f"{name:>18}: {result['tokens_per_s']:8.0f} real tokens/s, padding {result['padding_fraction']:.1%}")
    print(
        f"packed / padded (to the batch's longest) {report['tokens_per_s_ratio']:.2f}x; "
        f"packed / padded to max_length {report['tokens_per_s_ratio_vs_padded_to_max_length']:.2f}x"
    )
    write_report(args.out, report)


if __name__ == "__main__":
    main()
