"""CPU time per image of the train-time decode (JPEG -> random-resized-crop -> flip), with OpenCV
and with the PIL fallback, on the same images in alternating rounds, in one process (one core).
`--pre-resize N` adds both decoders on the same images shrunk to an N-pixel shorter side, as
`mmtrain data convert --resize N` stores them.

    python -m benchmarks.decode_throughput --shards /tmp/mmtrain-bench-shards --images 300 --rounds 5
    python -m benchmarks.decode_throughput --shards /tmp/bench-512 --source-size 512 --pre-resize 256
"""

from __future__ import annotations

import argparse
import tarfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import write_report
from benchmarks.data_throughput import make_shards
from mmtrain.pipelines import images
from mmtrain.pipelines.config import AugmentConfig
from mmtrain.pipelines.resize import shrink


def cpu_us_per_image(jpegs: list[bytes], cfg: AugmentConfig, decoder: str) -> float:
    saved = images.cv2
    if decoder == "pil":
        images.cv2 = None  # what a host without OpenCV runs
    try:
        rng = np.random.default_rng(0)  # the same crops for both decoders
        batch = np.empty((len(jpegs), cfg.image_size, cfg.image_size, 3), np.uint8)
        start = time.process_time()
        for row, data in zip(batch, jpegs):
            images.decode_train(data, cfg, 10**8, rng, out=row)
        return (time.process_time() - start) / len(jpegs) * 1e6
    finally:
        images.cv2 = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=Path, default=Path("/tmp/mmtrain-bench-shards"))
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--source-size", type=int, default=256, help="image size of shards made here")
    parser.add_argument(
        "--pre-resize",
        type=int,
        default=0,
        help="also time the images shrunk to this shorter side (as `data convert --resize`)",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/decode_throughput.json"))
    args = parser.parse_args()
    if images.DECODER != "opencv":
        raise SystemExit("OpenCV is not installed here: `pip install opencv-python-headless` to compare")

    shards = make_shards(args.shards, max(args.images, 1000), args.source_size)
    with tarfile.open(sorted(shards.glob("*.tar"))[0]) as tar:
        jpegs = [tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".jpg")][: args.images]
    image_sets = {"": jpegs}
    if args.pre_resize:
        image_sets[f"@{args.pre_resize}"] = [shrink(data, args.pre_resize, 95, 10**8) or data for data in jpegs]
    cfg = AugmentConfig(image_size=args.image_size, crop_scale=(0.08, 1.0))
    variants = [(decoder, suffix) for suffix in image_sets for decoder in ("opencv", "pil")]
    runs = {decoder + suffix: [] for decoder, suffix in variants}
    for decoder, suffix in variants:  # untimed: first calls pay for lazy initialisation
        cpu_us_per_image(image_sets[suffix][:20], cfg, decoder)
    for _ in range(args.rounds):  # alternate so drift hits all alike
        for decoder, suffix in variants:
            runs[decoder + suffix].append(cpu_us_per_image(image_sets[suffix], cfg, decoder))
    median = {name: float(np.median(values)) for name, values in runs.items()}
    speedups = {
        f"opencv{suffix} over pil{suffix}": median[f"pil{suffix}"] / median[f"opencv{suffix}"] for suffix in image_sets
    }
    for decoder in ("opencv", "pil") if args.pre_resize else ():
        resized = f"{decoder}@{args.pre_resize}"
        speedups[f"{resized} over {decoder}"] = median[decoder] / median[resized]
    print(f"per image (CPU, median of {args.rounds}), {args.source_size}px sources -> {args.image_size}px crops:")
    for name, value in median.items():
        print(f"  {name:<12} {value:6.0f} us ({1e6 / value:.0f} images/s per core)")
    for name, value in speedups.items():
        print(f"  {name}: {value:.2f}x")
    write_report(
        args.out,
        {
            "benchmark": "decode_throughput",
            "images": len(jpegs),
            "image_size": args.image_size,
            "source_size": args.source_size,
            "pre_resize": args.pre_resize,
            "mean_jpeg_bytes": {
                name or "original": float(np.mean([len(d) for d in data])) for name, data in image_sets.items()
            },
            "cpu_us_per_image": runs,
            "median_cpu_us_per_image": median,
            "speedup_opencv_over_pil": speedups["opencv over pil"],
            "speedups": speedups,
        },
    )


if __name__ == "__main__":
    main()
