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
    """Samples in a daemon thread, and once more on exit. A process started since the last sample
    is charged all its CPU; one that ended since then loses what it used after that sample (polling
    cannot see it), so keep `every` short against the phases you look at."""

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
        previous, alive = self._cpu_by_process()
        stopping = False
        while not stopping:
            stopping = self._stop.wait(self.every)
            current, now_alive = self._cpu_by_process()
            used: dict[str, float] = {}
            for pid, (group, seconds) in current.items():
                # Keyed by pid: a Ray worker renames itself when it becomes an actor (ray::IDLE ->
                # ray::MapWorker), and its CPU since the last sample is the new name's.
                before = previous[pid][1] if pid in previous else (seconds if pid in alive else 0.0)
                used[group] = used.get(group, 0.0) + seconds - before
            self.series.append((round(time.perf_counter() - self._started, 1), _rounded(used)))
            previous, alive = current, now_alive

    @staticmethod
    def _cpu_by_process() -> tuple[dict[int, tuple[str, float]], set[int]]:
        """(pid -> (group, CPU seconds so far) for the processes a run is made of, every live pid)."""
        cpu, alive = {}, set()
        for process in psutil.process_iter():
            alive.add(process.pid)
            try:  # a process can end between listing and reading
                group = process_group(" ".join(process.cmdline()))
                if group is not None:
                    times = process.cpu_times()
                    cpu[process.pid] = (group, times.user + times.system)
            except psutil.Error:
                continue
        return cpu, alive

    def totals(self) -> dict[str, float]:
        """CPU seconds per group over the whole run, largest first."""
        total: dict[str, float] = {}
        for _, used in self.series:
            for group, seconds in used.items():
                total[group] = total.get(group, 0.0) + seconds
        return dict(sorted(_rounded(total).items(), key=lambda item: -item[1]))


def _rounded(used: dict[str, float]) -> dict[str, float]:
    return {group: round(seconds, 2) for group, seconds in used.items() if seconds >= 0.05}


class MachineCpu:
    """Busy CPU seconds of the whole machine over a `with` block (every process, Ray's daemons too),
    from the kernel's per-CPU counters: what a side of a benchmark cost in cores, whatever processes
    it ran in. Two sides that each keep every core busy can differ in speed only by their CPU per
    sample, which `MachineCpu` measures and wall time cannot.

        with MachineCpu() as cpu:
            run()
        cpu.busy_s, cpu.wall_s, cpu.busy_cores
    """

    def __enter__(self) -> "MachineCpu":
        self._busy_before, self._started = _busy_seconds(), time.perf_counter()
        return self

    def __exit__(self, *_) -> None:
        self.busy_s = _busy_seconds() - self._busy_before
        self.wall_s = time.perf_counter() - self._started
        self.busy_cores = self.busy_s / max(self.wall_s, 1e-9)


def _busy_seconds() -> float:
    """CPU seconds all cores have spent running something since boot: user, nice, system and interrupt
    time (Linux's guest time is inside user and nice already; steal is the hypervisor's, not ours)."""
    times = psutil.cpu_times()
    return sum(getattr(times, field, 0.0) for field in ("user", "nice", "system", "irq", "softirq"))


def ceiling_ratio(reference_wall_s: float, busy_s: float, cores: int) -> float:
    """The most a side that spent `busy_s` CPU seconds could beat a reference run of
    `reference_wall_s`, had it kept all `cores` busy from start to end: a ratio above this needs
    less CPU per sample, not better overlap."""
    return reference_wall_s / (busy_s / cores)
