"""Progress of a batch-inference run: the model actors count what they finish, the driver prints
`embed: 1,200/5,000 samples (24%), 310/s, ETA 12 s` every few seconds (one line each: fine in logs)."""

from __future__ import annotations

import threading
import time

import ray


@ray.remote(num_cpus=0)
class ProgressCounter:
    def __init__(self):
        self._done = 0

    def add(self, count: int) -> None:
        self._done += count

    def done(self) -> int:
        return self._done


class ProgressPrinter:
    """A context manager: a driver thread prints the counter against `total` every `every` seconds."""

    def __init__(self, counter, total: int, label: str, every: float = 5.0):
        self._counter, self._total, self._label, self._every = counter, total, label, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = 0.0

    def __enter__(self) -> "ProgressPrinter":
        self._started = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join()
        self._print(final=True)

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            self._print(final=False)

    def _print(self, final: bool) -> None:
        try:
            done = ray.get(self._counter.done.remote(), timeout=10)
        except Exception:  # the cluster is going away; progress is not worth an error
            return
        print(
            f"[mmtrain] {format_progress(self._label, done, self._total, time.perf_counter() - self._started, final)}",
            flush=True,
        )


def format_progress(label: str, done: int, total: int, seconds: float, final: bool = False) -> str:
    rate = done / seconds if seconds > 0 else 0.0
    line = f"{label}: {done:,}/{total:,} samples"
    if total:
        line += f" ({min(done / total, 1.0):.0%})"
    line += f", {rate:,.0f}/s"
    if final:
        return line + f", {seconds:.0f} s"
    if rate > 0 and total > done:
        line += f", ETA {(total - done) / rate:.0f} s"
    return line
