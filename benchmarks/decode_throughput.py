"""CPU time per image of the train-time decode (JPEG -> random-resized-crop -> flip), with OpenCV
and with the PIL fallback, on the same images in alternating rounds, in one process (one core).

    python -m benchmarks.decode_throughput --shards /tmp/mmtrain-bench-shards --images 300 --rounds 5
"""

from __future__ import annotations

import argparse
import tarfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import write_report
from benchmarks.data_throughput import make_shards
from pipelines import images
from pipelines.config import AugmentConfig


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
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/decode_throughput.json"))
    args = parser.parse_args()
    if images.DECODER != "opencv":
        raise SystemExit("OpenCV is not installed here: `pip install opencv-python-headless` to compare")

    shards = make_shards(args.shards, max(args.images, 1000), 256)
    with tarfile.open(sorted(shards.glob("*.tar"))[0]) as tar:
        jpegs = [tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".jpg")][:args.images]
    cfg = AugmentConfig(image_size=args.image_size, crop_scale=(0.08, 1.0))
    runs = {"opencv": [], "pil": []}
    for decoder in runs:  # untimed: first calls pay for lazy initialisation
        cpu_us_per_image(jpegs[:20], cfg, decoder)
    for _ in range(args.rounds):  # alternate so drift hits both alike
        for decoder in runs:
            runs[decoder].append(cpu_us_per_image(jpegs, cfg, decoder))
    median = {name: float(np.median(values)) for name, values in runs.items()}
    speedup = median["pil"] / median["opencv"]
    print(f"per image (CPU, median of {args.rounds}): OpenCV {median['opencv']:.0f} us "
          f"({1e6 / median['opencv']:.0f} images/s per core), PIL {median['pil']:.0f} us "
          f"({1e6 / median['pil']:.0f}/s): {speedup:.2f}x")
    write_report(args.out, {"benchmark": "decode_throughput", "images": len(jpegs), "image_size": args.image_size,
                            "cpu_us_per_image": runs, "median_cpu_us_per_image": median,
                            "speedup_opencv_over_pil": speedup})


if __name__ == "__main__":
    main()
