"""Where a machine's CPU goes during a run, by kind of process: every `every` seconds, the CPU seconds
each group of processes used since the last sample (Ray names its workers `ray::<Actor>`; the data
pool's actors are `ray::MapWorker`, the trainers `ray::RayTrainWorker`). A run whose steps slow
down while something else runs shows it here: on a small machine every core the data pool takes is
one the trainers lose.

    with CpuSampler(every=5.0) as sampler:
        run_training(cfg)
    sampler.series  # [(seconds since start, {group: CPU seconds in the interval}), ...]
"""

from __future__ import annotations

import re
import threading
import time

import psutil

# Ray's own daemons and the driver, named by what their command line runs.
_NAMED = ("raylet", "gcs_server", "dashboard", "log_monitor", "monitor.py", "runtime_env", "benchmarks.")


def process_group(cmdline: str) -> str | None:
    """`ray::<Name>` for a Ray worker, a daemon's name, or None for a process outside the run."""
    match = re.search(r"ray::([A-Za-z_]+)", cmdline)
    if match:
        return f"ray::{match.group(1)}"
    return next((name for name in _NAMED if name in cmdline), None)


class CpuSampler:
    """Samples in a daemon thread; a process first seen mid-interval counts from that sample on."""

    def __init__(self, every: float = 5.0):
        self.every = every
        self.series: list[tuple[float, dict[str, float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="cpu-sampler")

    def __enter__(self) -> "CpuSampler":
        self._started = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        previous = self._cpu_by_process()
        while not self._stop.wait(self.every):
            current = self._cpu_by_process()
            used: dict[str, float] = {}
            for key, seconds in current.items():
                used[key[1]] = used.get(key[1], 0.0) + seconds - previous.get(key, seconds)
            self.series.append((round(time.perf_counter() - self._started, 1), _rounded(used)))
            previous = current

    @staticmethod
    def _cpu_by_process() -> dict[tuple[int, str], float]:
        cpu = {}
        for process in psutil.process_iter():
            try:  # a process can end between listing and reading
                group = process_group(" ".join(process.cmdline()))
                if group is not None:
                    times = process.cpu_times()
                    cpu[(process.pid, group)] = times.user + times.system
            except psutil.Error:
                continue
        return cpu

    def totals(self) -> dict[str, float]:
        """CPU seconds per group over the whole run, largest first."""
        total: dict[str, float] = {}
        for _, used in self.series:
            for group, seconds in used.items():
                total[group] = total.get(group, 0.0) + seconds
        return dict(sorted(_rounded(total).items(), key=lambda item: -item[1]))


def _rounded(used: dict[str, float]) -> dict[str, float]:
    return {group: round(seconds, 2) for group, seconds in used.items() if seconds >= 0.05}
