"""mmtrain's Ray Data pipeline against a plain webdataset + torch DataLoader doing the same work
(decode JPEG, random-resized-crop + flip to 224, tokenize the caption) on the same shards with
the same number of CPUs; both call the same `decode_train`, so the ratio measures the pipelines,
not the image library. After an untimed warm-up on two shards, runs alternate; prints a summary
and writes JSON.

With --epochs N each run is N epochs: mmtrain's one stream of N epochs (as a training run reads
it), against the DataLoader iterated N times with persistent_workers=True (its best multi-epoch
setting). mmtrain also shuffles within each shard (data.read_shuffle_buffer), the DataLoader not.

Each run also records the cores the machine kept busy and its busy CPU time per sample (every
process: Ray's, the loader's workers), and the report the ratio mmtrain would reach at its CPU per
sample had it kept every core busy: when both sides keep the cores busy, only less CPU per sample
makes one faster.

    python -m benchmarks.data_throughput --cpus 2 --samples 4000 --out benchmarks/results/data_throughput.json
    python -m benchmarks.data_throughput --cpus 2 --samples 8000 --epochs 5 --shards /tmp/mmtrain-bench-8k \
        --out benchmarks/results/data_throughput_2core_8k_5epochs.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import time
from functools import partial
from pathlib import Path

import numpy as np

from benchmarks.cpu_sampler import MachineCpu, ceiling_ratio


def make_shards(out: Path, samples: int, size: int, per_shard: int = 500) -> Path:
    """Photo-like JPEGs (smooth gradients + noise + shapes) with captions, made on every core."""
    from multiprocessing import Pool

    from mmtrain.pipelines.shard_writer import ShardWriter, write_manifest
    from mmtrain.pipelines.tokenizer import train_bpe_tokenizer

    if (out / "manifest.json").is_file():
        return out
    captions = []
    with ShardWriter(out, "train", max_samples=per_shard) as writer, Pool() as pool:
        for index, (jpeg, caption) in enumerate(
            pool.imap(partial(_photo_like_sample, size=size), range(samples), chunksize=64)
        ):
            captions.append(caption)
            writer.write({"__key__": f"{index:08d}", "jpg": jpeg, "txt": caption.encode()})
    write_manifest(out, writer.shards)
    train_bpe_tokenizer(captions, vocab_size=1000).save(str(out / "tokenizer.json"))
    return out


def _photo_like_sample(index: int, size: int) -> tuple[bytes, str]:
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(index)
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = np.stack([xx * rng.uniform(0, 255), yy * rng.uniform(0, 255), (xx + yy) * rng.uniform(0, 128)], -1)
    image = Image.fromarray(np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x, y, r = rng.integers(0, size, 2).tolist() + [int(rng.integers(8, 48))]
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(rng.integers(0, 255, 3).tolist()))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue(), f"a photo number {index} with {rng.integers(1, 9)} circles"


def shard_files(shards: Path, limit: int | None = None) -> list[str]:
    return sorted(str(p) for p in shards.glob("*.tar"))[:limit]


def run_mmtrain(
    shards: Path,
    batch_size: int,
    image_size: int,
    prefetch_batches: int,
    limit_shards: int | None = None,
    epochs: int = 1,
    execution_per_epoch: bool = False,
) -> dict:
    """`execution_per_epoch`: the pipeline as it was before one stream per run, a new Ray Data
    execution (and actor pool) for each epoch."""
    from mmtrain.pipelines import contract
    from mmtrain.pipelines.config import AugmentConfig, DataConfig
    from mmtrain.pipelines.dataset import build_dataset, limit_data_resources

    cfg = DataConfig(
        augment=AugmentConfig(image_size=image_size, crop_scale=(0.08, 1.0)),
        context_length=32,
        decode_batch_size=64,
        shuffle_buffer_size=0,
    )
    limit_data_resources(cfg, train_worker_cpus=0)
    dataset = build_dataset(
        cfg,
        shard_files(shards, limit_shards),
        train=True,
        columns=contract.TENSOR_COLUMNS,
        epochs=1 if execution_per_epoch else epochs,
    )
    if execution_per_epoch:
        return _time_batches(
            batch
            for _ in range(epochs)
            for batch in dataset.iter_batches(batch_size=batch_size, prefetch_batches=prefetch_batches)
        )
    return _time_batches(dataset.iter_batches(batch_size=batch_size, prefetch_batches=prefetch_batches))


def run_dataloader(
    shards: Path, batch_size: int, image_size: int, workers: int, limit_shards: int | None = None, epochs: int = 1
) -> dict:
    import torch
    import webdataset as wds

    from mmtrain.pipelines.config import AugmentConfig
    from mmtrain.pipelines.images import decode_train
    from mmtrain.pipelines.tokenizer import configure_fixed_length, load_tokenizer

    cfg = AugmentConfig(image_size=image_size, crop_scale=(0.08, 1.0))
    tokenizer = configure_fixed_length(load_tokenizer(shards / "tokenizer.json"), 32)
    rng = np.random.default_rng()

    def transform(sample):
        encoding = tokenizer.encode(sample["txt"].decode())
        return (
            torch.from_numpy(decode_train(sample["jpg"], cfg, 10**8, rng)),
            torch.tensor(encoding.ids, dtype=torch.int32),
            torch.tensor(encoding.attention_mask, dtype=torch.uint8),
        )

    dataset = wds.WebDataset(shard_files(shards, limit_shards), shardshuffle=False, empty_check=False).map(transform)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        persistent_workers=epochs > 1 and workers > 0,
        prefetch_factor=4 if workers else None,
    )
    return _time_batches(batch for _ in range(epochs) for batch in loader)


def _time_batches(batches) -> dict:
    """samples/s over the whole epoch (start-up included), the time to the first batch, and
    samples/s after the first batch. The last is no steady-state rate: it includes what was decoded
    while the first batch was awaited (benchmarks/RESULTS.md); compare whole epochs. Also the cores
    the machine kept busy meanwhile and its busy CPU time per sample."""
    start, samples, first, first_samples = time.perf_counter(), 0, None, 0
    with MachineCpu() as cpu:
        for batch in batches:
            images = batch["image"] if isinstance(batch, dict) else batch[0]
            samples += len(images)
            if first is None:
                first, first_samples = time.perf_counter(), samples
    end = time.perf_counter()
    return {
        "samples_per_s": samples / (end - start),
        "seconds": end - start,
        "first_batch_s": first - start,
        "steady_samples_per_s": (samples - first_samples) / max(end - first, 1e-9),
        "samples": samples,
        # the whole machine's, every process of the side included (Ray's daemons, the loader's workers)
        "busy_cpu_s": cpu.busy_s,
        "busy_cores": cpu.busy_cores,
        "cpu_ms_per_sample": 1000 * cpu.busy_s / max(samples, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpus", type=int, default=os.cpu_count())
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--source-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1, help="epochs per run (mmtrain: one stream)")
    parser.add_argument(
        "--prefetch-batches",
        type=int,
        default=4,
        help="mmtrain's iter_batches prefetch (Ray hands over the first batch once this many batches have arrived)",
    )
    parser.add_argument("--shards", type=Path, default=Path("/tmp/mmtrain-bench-shards"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/data_throughput.json"))
    args = parser.parse_args()

    import ray

    from mmtrain.pipelines.images import DECODER

    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    shards = make_shards(args.shards, args.samples, args.source_size)
    # Ray gets `cpus` logical CPUs for its data tasks, as the DataLoader gets `cpus` worker processes.
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    # Untimed warm-up on two shards: the first Ray Data execution in a Ray session also starts
    # Ray Data's cluster-wide helper actors (stats, autoscaling coordinator; ~2 s of CPU here),
    # a once-per-job cost that would otherwise land on mmtrain's first round only.
    run_mmtrain(shards, args.batch_size, args.image_size, args.prefetch_batches, limit_shards=2)
    run_dataloader(shards, args.batch_size, args.image_size, args.cpus, limit_shards=2)
    results = {"mmtrain": [], "dataloader": []}
    if args.epochs > 1:
        results["mmtrain_execution_per_epoch"] = []
    for round_index in range(args.rounds):  # alternate so drift hits both sides alike
        results["mmtrain"].append(
            run_mmtrain(shards, args.batch_size, args.image_size, args.prefetch_batches, epochs=args.epochs)
        )
        results["dataloader"].append(
            run_dataloader(shards, args.batch_size, args.image_size, args.cpus, epochs=args.epochs)
        )
        if args.epochs > 1:
            results["mmtrain_execution_per_epoch"].append(
                run_mmtrain(
                    shards,
                    args.batch_size,
                    args.image_size,
                    args.prefetch_batches,
                    epochs=args.epochs,
                    execution_per_epoch=True,
                )
            )
        print(
            f"round {round_index + 1}: "
            + ", ".join(
                f"{name} {runs[-1]['samples_per_s']:.0f} samples/s (first batch {runs[-1]['first_batch_s']:.2f} s, "
                f"then {runs[-1]['steady_samples_per_s']:.0f}/s; {runs[-1]['busy_cores']:.2f} cores busy, "
                f"{runs[-1]['cpu_ms_per_sample']:.2f} ms CPU per sample)"
                for name, runs in results.items()
            ),
            flush=True,
        )
    ray.shutdown()
    cores = os.cpu_count()
    summary = {name: float(np.median([r["samples_per_s"] for r in runs])) for name, runs in results.items()}
    steady = {name: float(np.median([r["steady_samples_per_s"] for r in runs])) for name, runs in results.items()}
    report = {
        "benchmark": "data_throughput",
        "date": time.strftime("%Y-%m-%d"),
        "machine": platform.node(),
        "cpus": args.cpus,
        "decoder": DECODER,
        "samples": args.samples,
        "epochs": args.epochs,
        "source_size": args.source_size,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "prefetch_batches": args.prefetch_batches,
        "runs": results,
        "median_samples_per_s": summary,
        "ratio_mmtrain_over_dataloader": summary["mmtrain"] / summary["dataloader"],
        **(
            {
                "ratio_execution_per_epoch_over_dataloader": summary["mmtrain_execution_per_epoch"]
                / summary["dataloader"]
            }
            if args.epochs > 1
            else {}
        ),
        "median_steady_samples_per_s": steady,
        "steady_ratio_mmtrain_over_dataloader": steady["mmtrain"] / steady["dataloader"],
        "median_busy_cores": {
            name: float(np.median([r["busy_cores"] for r in runs])) for name, runs in results.items()
        },
        "median_cpu_ms_per_sample": {
            name: float(np.median([r["cpu_ms_per_sample"] for r in runs])) for name, runs in results.items()
        },
        # Per round: the ratio mmtrain would reach at its measured CPU per sample with every core busy.
        "ceiling_ratio_mmtrain_over_dataloader": float(
            np.median(
                [
                    ceiling_ratio(loader["seconds"], ours["busy_cpu_s"], cores)
                    for ours, loader in zip(results["mmtrain"], results["dataloader"])
                ]
            )
        ),
        "machine_cores": cores,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"decoder {DECODER}; median: mmtrain {summary['mmtrain']:.0f} samples/s, "
        f"DataLoader {summary['dataloader']:.0f} samples/s, "
        f"ratio {report['ratio_mmtrain_over_dataloader']:.2f} (after the first batch: "
        f"{report['steady_ratio_mmtrain_over_dataloader']:.2f}); CPU per sample "
        + ", ".join(f"{name} {ms:.2f} ms" for name, ms in report["median_cpu_ms_per_sample"].items())
        + f"; mmtrain's ceiling at that CPU on {cores} cores: {report['ceiling_ratio_mmtrain_over_dataloader']:.2f}"
        + f" -> {args.out}"
    )


if __name__ == "__main__":
    main()
