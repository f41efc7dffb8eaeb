"""What a resume costs: a run of the Fashion-MNIST recipe stops at 90% of its first epoch (a
checkpoint), then the same command with more steps resumes it. For each, the seconds from the
command's start to its first training step's log line, side by side: the resumed run must read
each shard again and seek past the 90% it has trained on. Writes JSON.

    python -m benchmarks.resume_cost --out benchmarks/results/resume_cost_2core.json
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import write_report

REPO = Path(__file__).resolve().parents[1]
PRESET = REPO / "conf/clip/fashion_mnist.yaml"
STEP_LINE = re.compile(r"\[mmtrain\] step (\d+):")


def time_to_first_step(run_dir: Path, max_steps: int) -> dict:
    """Run the command until it ends; seconds from its start to its first step line, and its total."""
    command = [
        sys.executable,
        "-m",
        "mmtrain",
        "train",
        "clip",
        "--config",
        str(PRESET),
        "--set",
        f"run.output_dir={run_dir}",
        "--set",
        "tracking.tracking_uri=none",
        "--set",
        f"loop.max_steps={max_steps}",
        "--set",
        "loop.log_every=1",
        "--set",
        f"loop.checkpoint_every={max_steps}",
        "--set",
        "data.eval_shards=[]",
        "--set",
        "run.resume=auto",  # the first command starts the run, the second continues it
    ]
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first_step, first_s, tail = None, None, []
    for line in proc.stdout:
        tail = (tail + [line])[-40:]
        match = STEP_LINE.search(line)
        if match and first_step is None:
            first_step, first_s = int(match.group(1)), time.perf_counter() - start
    if proc.wait():
        raise RuntimeError("".join(tail))
    return {"first_step": first_step, "to_first_step_s": first_s, "wall_s": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=Path("/tmp/mmtrain-resume-bench"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/resume_cost_2core.json"))
    args = parser.parse_args()
    shutil.rmtree(args.run_dir, ignore_errors=True)
    steps_at_90_percent = int(0.9 * 60_000 / 256)
    fresh = time_to_first_step(args.run_dir, steps_at_90_percent)
    resumed = time_to_first_step(args.run_dir, steps_at_90_percent + 10)
    assert resumed["first_step"] == steps_at_90_percent + 1, resumed
    report = {
        "benchmark": "resume_cost",
        "cpus": os.cpu_count(),
        "preset": str(PRESET.relative_to(REPO)),
        "resumed_at_step": steps_at_90_percent,
        "epoch_fraction_trained": steps_at_90_percent * 256 / 60_000,
        "fresh": fresh,
        "resumed": resumed,
        "ratio_resumed_over_fresh": resumed["to_first_step_s"] / fresh["to_first_step_s"],
    }
    write_report(args.out, report)
    print(
        f"to the first step: fresh {fresh['to_first_step_s']:.1f} s, resumed at {report['epoch_fraction_trained']:.0%} "
        f"of an epoch {resumed['to_first_step_s']:.1f} s, ratio {report['ratio_resumed_over_fresh']:.2f}"
    )


if __name__ == "__main__":
    main()
