"""The CPU sampler the overhead benchmark uses to say which kind of process took the cores."""

import subprocess
import sys
import time

import psutil
import pytest

from benchmarks.cpu_sampler import CpuSampler, MachineCpu, ceiling_ratio, process_group


@pytest.mark.parametrize(
    "cmdline, expected",
    [
        ("ray::RayTrainWorker", "ray::RayTrainWorker"),
        ("ray::MapWorker(ReadReadShards->MapBatches(decode_and_augment)->MapBatches(Tokenize))", "ray::MapWorker"),
        ("/venv/bin/python -u /venv/lib/ray/dashboard/dashboard.py --host=127.0.0.1", "dashboard"),
        ("/venv/lib/ray/core/src/ray/raylet/raylet --raylet_socket_name=/tmp/ray/s", "raylet"),
        ("/usr/bin/python3 -m http.server", None),
    ],
)
def test_processes_are_grouped_by_what_ray_names_them(cmdline, expected):
    assert process_group(cmdline) == expected


def test_a_busy_process_is_charged_with_its_cpu_and_an_idle_one_is_not():
    spin = "import time\nwhile time.process_time() < 1.0: pass  # ray::Spinner"
    idle = "import time; time.sleep(1.5)  # ray::Sleeper"
    with CpuSampler(every=0.25) as sampler:
        children = [subprocess.Popen([sys.executable, "-c", code]) for code in (spin, idle)]
        for child in children:
            child.wait()
        time.sleep(0.3)
    totals = sampler.totals()
    assert totals.get("ray::Spinner", 0.0) > 0.5  # most of its 1 s of CPU (its last moments fall between samples)
    assert totals.get("ray::Sleeper", 0.0) < 0.3  # interpreter start-up only
    assert all(until > 0 for until, _ in sampler.series)


def test_a_process_started_between_samples_is_charged_from_its_start():
    """Its CPU before the sampler first saw it counts too (a data pool's actors start mid-interval);
    the sample taken on exit counts what it used since the last one."""
    spin = "import time\nwhile time.process_time() < 1.0: pass\ntime.sleep(30)  # ray::Starter"
    child = None
    try:
        with CpuSampler(every=10.0) as sampler:  # no sample between the process's start and the exit
            time.sleep(0.2)
            child = subprocess.Popen([sys.executable, "-c", spin])
            deadline = time.monotonic() + 30
            while sum(psutil.Process(child.pid).cpu_times()[:2]) < 0.95 and time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        if child is not None:
            child.kill()
            child.wait()
    assert sampler.totals().get("ray::Starter", 0.0) >= 0.95
    assert len(sampler.series) == 1  # the exit's sample alone


def test_the_machine_meter_counts_a_child_process_cpu():
    """Machine-wide busy time covers every process: at least what a spinning child used."""
    spin = "import time\nwhile time.process_time() < 0.5: pass"
    with MachineCpu() as cpu:
        child = subprocess.Popen([sys.executable, "-c", spin])
        child.wait()
    assert cpu.busy_s >= 0.45, cpu.busy_s  # the child spun 0.5 CPU s
    assert cpu.wall_s > 0
    assert cpu.busy_cores <= psutil.cpu_count() * 1.05


def test_the_ceiling_is_the_reference_wall_over_the_cpu_spread_across_the_cores():
    # 30 CPU s on 2 cores takes at least 15 s: against a 16.5-s reference, at most 1.1x.
    assert ceiling_ratio(16.5, 30.0, 2) == pytest.approx(1.1)
    assert ceiling_ratio(10.0, 10.0, 1) == pytest.approx(1.0)
