"""The CPU sampler the overhead benchmark uses to say which kind of process took the cores."""

import subprocess
import sys
import time

import pytest

from benchmarks.cpu_sampler import CpuSampler, process_group


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
    assert totals.get("ray::Spinner", 0.0) > 0.5  # most of its 1 s of CPU (it starts after the first sample)
    assert totals.get("ray::Sleeper", 0.0) < 0.3  # interpreter start-up only
    assert all(until > 0 for until, _ in sampler.series)
