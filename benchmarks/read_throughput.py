"""CPU time per sample to read WebDataset shards: mmtrain's tar reader (pipelines/tar_samples.py)
against Python's tarfile in stream mode doing the same (every member's bytes, grouped by key),
alternating rounds, one process.

    python -m benchmarks.read_throughput --shards /tmp/mmtrain-bench-shards --num-shards 10 --rounds 5
"""

from __future__ import annotations

import argparse
import tarfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import write_report
from benchmarks.data_throughput import make_shards
from mmtrain.pipelines.tar_samples import iter_raw_samples, split_key


def read_ours(path: str) -> int:
    with open(path, "rb") as stream:
        return sum(1 for _ in iter_raw_samples(stream))


def read_tarfile(path: str) -> int:
    keys = set()
    with open(path, "rb") as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        for info in tar:
            if info.isfile():
                tar.extractfile(info).read()
                keys.add(split_key(info.name)[0])
    return len(keys)


def cpu_us_per_sample(read, paths: list[str]) -> float:
    start, samples = time.process_time(), 0
    for path in paths:
        samples += read(path)
    return (time.process_time() - start) / samples * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=Path, default=Path("/tmp/mmtrain-bench-shards"))
    parser.add_argument("--num-shards", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/read_throughput.json"))
    args = parser.parse_args()

    make_shards(args.shards, 4000, 256)
    paths = sorted(str(p) for p in args.shards.glob("*.tar"))[: args.num_shards]
    runs = {"mmtrain": [], "tarfile": []}
    for _ in range(args.rounds):  # alternate so drift hits both alike
        runs["mmtrain"].append(cpu_us_per_sample(read_ours, paths))
        runs["tarfile"].append(cpu_us_per_sample(read_tarfile, paths))
    median = {name: float(np.median(values)) for name, values in runs.items()}
    speedup = median["tarfile"] / median["mmtrain"]
    print(
        f"read per sample (CPU, median of {args.rounds}, {len(paths)} shards): mmtrain {median['mmtrain']:.0f} us, "
        f"tarfile {median['tarfile']:.0f} us: {speedup:.2f}x"
    )
    write_report(
        args.out,
        {
            "benchmark": "read_throughput",
            "shards": len(paths),
            "cpu_us_per_sample": runs,
            "median_cpu_us_per_sample": median,
            "speedup_over_tarfile": speedup,
        },
    )


if __name__ == "__main__":
    main()
