"""What planning a run's reads costs in the driver: the read tasks of N shards x E epochs (a
synthetic shard list; nothing is read), their count, seconds and the memory they hold. Writes JSON.

    python -m benchmarks.read_planning --shards 100000 --epochs 10 --out benchmarks/results/read_planning_2core.json
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from pathlib import Path

import pyarrow.fs as pafs
import ray

from benchmarks.common import write_report
from mmtrain.pipelines.datasource import EpochShardDatasource


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=100_000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/read_planning.json"))
    args = parser.parse_args()
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    paths = [f"s3://bucket/shards/train-{i:06d}.tar" for i in range(args.shards)]
    tracemalloc.start()
    started = time.perf_counter()
    source = EpochShardDatasource(paths, pafs.LocalFileSystem(), epochs=args.epochs, seed=0, shuffle_buffer=1000)
    tasks = source.get_read_tasks(1)
    seconds = time.perf_counter() - started
    held, peak = tracemalloc.get_traced_memory()
    report = {
        "shards": args.shards,
        "epochs": args.epochs,
        "reads": args.shards * args.epochs,
        "read_tasks": len(tasks),
        "reads_per_task": source.reads_per_task(),
        "seconds": round(seconds, 2),
        "held_mib": round(held / 2**20, 1),
        "peak_mib": round(peak / 2**20, 1),
    }
    print(report)
    write_report(args.out, report)


if __name__ == "__main__":
    main()
