"""`mmtrain embed` (Ray Data: read/decode/tokenize pool -> a pool of model replicas -> Parquet)
against a plain PyTorch loop doing the same work on the same CPUs: a DataLoader whose workers read
the same shards with the same reader and eval decode and tokenize the captions, the same model in the
main process, the embeddings written to one Parquet file. Runs alternate after an untimed warm-up;
images/s counts from the command's start (Ray's start-up timed apart), so the pool's start-up is
part of mmtrain's figure.
Each run also records the cores the machine kept busy and its busy CPU time per image, and the
report the ratio mmtrain would reach at its CPU per image with every core busy.

    python -m benchmarks.embed_throughput --samples 8000 --out benchmarks/results/embed_throughput_2core.json

On the GPU host: --preset vit_b16 --gpus-per-actor 1 --image-size 224, which also measures the
model alone on synthetic input (bf16) for the images/s ceiling.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import write_report
from benchmarks.cpu_sampler import MachineCpu, ceiling_ratio
from benchmarks.data_throughput import make_shards


def make_checkpoint(shards: Path, preset: str, out: Path) -> Path:
    """A randomly initialised CLIP of a preset's shape, saved as a run saves a checkpoint."""
    from mmtrain.training.checkpoint.store import save_checkpoint
    from mmtrain.training.config.io import load_config, to_dict
    from mmtrain.training.config.schema import ClipRunConfig
    from mmtrain.training.engine.loop import TrainState
    from mmtrain.training.tasks.clip import ClipTask
    from mmtrain.training.tasks.resolve import resolve_clip

    cfg = load_config(
        ClipRunConfig,
        Path(f"conf/clip/{preset}.yaml"),
        [f"data.train_shards=[{shards}]", "data.eval_shards=[]", "tracking.tracking_uri=none"],
    )
    cfg, _ = resolve_clip(cfg)
    torch.manual_seed(0)
    return save_checkpoint(out / "checkpoint_000000", ClipTask(cfg).build_model(), None, TrainState(), to_dict(cfg))


class ShardSamples(torch.utils.data.IterableDataset):
    """The reference's dataset: each DataLoader worker reads its share of the shards with mmtrain's
    reader, decodes for eval and tokenizes, as the Ray pipeline's stages do."""

    def __init__(self, paths: list[str], cfg):
        self.paths, self.cfg = paths, cfg

    def __iter__(self):
        from mmtrain.pipelines.images import BadSample, decode_eval
        from mmtrain.pipelines.tar_samples import Record, iter_records
        from mmtrain.pipelines.tokenizer import configure_fixed_length, load_tokenizer

        info = torch.utils.data.get_worker_info()
        mine = self.paths[info.id :: info.num_workers] if info else self.paths
        tokenizer = configure_fixed_length(load_tokenizer(self.cfg.data.tokenizer), self.cfg.data.context_length)
        for path in mine:
            with open(path, "rb") as stream:
                for record in iter_records(stream):
                    if not isinstance(record, Record):
                        continue
                    try:
                        image = decode_eval(record.image_bytes, self.cfg.data.augment, self.cfg.data.max_image_pixels)
                    except BadSample:
                        continue
                    encoding = tokenizer.encode(record.caption)
                    yield (image, np.asarray(encoding.ids), np.asarray(encoding.attention_mask), record.key)


def run_reference(checkpoint: Path, shards: Path, out: Path, batch_size: int, workers: int) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mmtrain.inference.trained import find_trained, load_trained_model

    started = time.perf_counter()
    run = find_trained(checkpoint, "clip", "embed")
    task, model = load_trained_model(run, torch.device("cpu"))
    paths = sorted(str(p) for p in shards.glob("*.tar"))
    loader = torch.utils.data.DataLoader(ShardSamples(paths, run.cfg), batch_size=batch_size, num_workers=workers)
    keys, images, texts = [], [], []
    with torch.inference_mode():
        for image, ids, mask, key in loader:
            images.append(model.encode_image(task.normalize(image, torch.device("cpu"))).numpy())
            texts.append(model.encode_text(ids.long(), mask.long()).numpy())
            keys += list(key)
    image_NE, text_NE = np.concatenate(images), np.concatenate(texts)
    out.mkdir(parents=True, exist_ok=True)
    dim = image_NE.shape[1]
    pq.write_table(
        pa.table(
            {
                "key": keys,
                "image_embedding": pa.FixedSizeListArray.from_arrays(image_NE.ravel(), dim),
                "text_embedding": pa.FixedSizeListArray.from_arrays(text_NE.ravel(), dim),
            }
        ),
        out / "part-0.parquet",
    )
    seconds = time.perf_counter() - started
    return {"images": len(keys), "seconds": seconds, "images_per_s": len(keys) / seconds}


def run_mmtrain(
    checkpoint: Path, shards: Path, out: Path, batch_size: int, actors: int, gpus: float, data_workers: int
) -> dict:
    from mmtrain.inference.embed import embed
    from mmtrain.inference.pool import PoolOptions

    started = time.perf_counter()
    manifest = embed(
        checkpoint,
        [str(shards)],
        out,
        PoolOptions(actors=actors, gpus_per_actor=gpus, batch_size=batch_size, data_workers=data_workers),
    )
    seconds = time.perf_counter() - started
    return {"images": manifest["rows_written"], "seconds": seconds, "images_per_s": manifest["rows_written"] / seconds}


def model_only_rate(checkpoint: Path, batch_size: int, steps: int = 20) -> dict:
    """The model alone on synthetic uint8 images (bf16 on a GPU): the ceiling for images/s."""
    from mmtrain.inference.trained import autocast, find_trained, inference_device, load_trained_model

    device = inference_device()
    run = find_trained(checkpoint, "clip", "embed")
    task, model = load_trained_model(run, device)
    size = run.cfg.data.augment.image_size
    images = torch.randint(0, 255, (batch_size, size, size, 3), dtype=torch.uint8, device=device)
    with torch.inference_mode(), autocast(device):
        for _ in range(3):
            model.encode_image(task.normalize(images, device))
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(steps):
            model.encode_image(task.normalize(images, device))
        if device.type == "cuda":
            torch.cuda.synchronize()
    return {"images_per_s": steps * batch_size / (time.perf_counter() - started), "batch_size": batch_size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=8000)
    parser.add_argument("--source-size", type=int, default=256, help="stored image side (photo-like JPEGs)")
    parser.add_argument("--preset", default="tiny", help="conf/clip/PRESET.yaml gives the model's shape")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--gpus-per-actor", type=float, default=0.0)
    parser.add_argument("--data-workers", type=int, default=0, help="mmtrain's read/decode actors (0: auto)")
    parser.add_argument("--loader-workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--shards", type=Path, default=Path("/tmp/mmtrain-embed-bench"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/embed_throughput.json"))
    args = parser.parse_args()

    from mmtrain.training.ray_train.driver import ensure_ray

    shards = make_shards(args.shards / "shards", args.samples, args.source_size)
    checkpoint = make_checkpoint(shards, args.preset, args.shards / "run")
    ray_started = time.perf_counter()
    ensure_ray("", 0)
    ray_start_s = time.perf_counter() - ray_started
    work = args.shards / "outputs"
    sides = {
        "mmtrain_embed": lambda out: run_mmtrain(
            checkpoint, shards, out, args.batch_size, args.actors, args.gpus_per_actor, args.data_workers
        ),
        "pytorch_dataloader": lambda out: run_reference(checkpoint, shards, out, args.batch_size, args.loader_workers),
    }
    results = {name: [] for name in sides}
    for round_index in range(args.rounds + 1):  # round 0 warms caches and imports, untimed
        for name, side in sides.items():
            shutil.rmtree(work, ignore_errors=True)
            with MachineCpu() as cpu:
                result = side(work / name)
            result |= {
                "busy_cpu_s": cpu.busy_s,
                "busy_cores": cpu.busy_cores,
                "cpu_s_per_image": cpu.busy_s / max(result["images"], 1),
            }
            if round_index:
                results[name].append(result)
                print(f"round {round_index} {name}: {result['images_per_s']:.0f} images/s", flush=True)
    rate = {name: statistics.median(r["images_per_s"] for r in runs) for name, runs in results.items()}
    report = {
        "benchmark": "embed_throughput",
        "samples": args.samples,
        "preset": args.preset,
        "actors": args.actors,
        "data_workers": args.data_workers,
        "gpus_per_actor": args.gpus_per_actor,
        "loader_workers": args.loader_workers,
        "cpus": os.cpu_count(),
        "ray_start_s": ray_start_s,
        "runs": results,
        "median_images_per_s": rate,
        "ratio_mmtrain_to_dataloader": rate["mmtrain_embed"] / rate["pytorch_dataloader"],
        "per_round_ratio": [
            a["images_per_s"] / b["images_per_s"]
            for a, b in zip(results["mmtrain_embed"], results["pytorch_dataloader"])
        ],
        "median_busy_cores": {name: statistics.median(r["busy_cores"] for r in runs) for name, runs in results.items()},
        "median_cpu_s_per_image": {
            name: statistics.median(r["cpu_s_per_image"] for r in runs) for name, runs in results.items()
        },
        # Per round: the ratio mmtrain would reach at its measured CPU per image with every core busy.
        "ceiling_ratio_mmtrain_to_dataloader": statistics.median(
            ceiling_ratio(b["seconds"], a["busy_cpu_s"], os.cpu_count())
            for a, b in zip(results["mmtrain_embed"], results["pytorch_dataloader"])
        ),
        "model_only": model_only_rate(checkpoint, args.batch_size),
    }
    print(
        f"mmtrain embed {rate['mmtrain_embed']:.0f} images/s vs DataLoader {rate['pytorch_dataloader']:.0f}: "
        f"{report['ratio_mmtrain_to_dataloader']:.2f}x (Ray start-up {ray_start_s:.1f} s, not counted); CPU per image "
        + ", ".join(f"{name} {cpu:.3f} s" for name, cpu in report["median_cpu_s_per_image"].items())
        + f"; mmtrain's ceiling at that CPU: {report['ceiling_ratio_mmtrain_to_dataloader']:.2f}x"
    )
    write_report(args.out, report)


if __name__ == "__main__":
    main()
