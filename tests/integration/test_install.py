"""mmtrain as a user installs it: a wheel built from what git tracks, installed (not editable) in a
fresh virtualenv, run from an empty directory: one top-level package, presets as package data, the
Python API, and the README's first command, `mmtrain dry-run`."""

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from mmtrain.jobs.package import build_package

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def fresh_venv_with_the_wheel(tmp_path: Path) -> Path:
    """A virtualenv holding the wheel and nothing else of mmtrain. Its dependencies come from this
    test's environment through a path file: the packages are the same, installing them again would
    take minutes, and a path file processes no editable-install hooks (no top-level `training`)."""
    package = build_package(REPO)
    try:
        wheels = tmp_path / "wheels"
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", ".", "-w", str(wheels)],
            cwd=package.directory,
            check=True,
            capture_output=True,
            timeout=300,
        )
    finally:
        shutil.rmtree(package.directory)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    (site / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    (wheel,) = wheels.glob("mmtrain-*.whl")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin/python"), "install", "-q", "--no-deps", str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return venv


def test_the_wheel_installs_one_package_with_its_presets_and_runs_the_dry_run(tmp_path):
    venv = fresh_venv_with_the_wheel(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    python = str(venv / "bin/python")

    def run(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(args, cwd=empty, capture_output=True, text=True, timeout=timeout)

    (dist_info,) = (Path(p) for p in venv.glob("lib/python*/site-packages/mmtrain-*.dist-info"))
    assert (dist_info / "top_level.txt").read_text().split() == ["mmtrain"]
    generic = run([python, "-c", "import training"])
    assert generic.returncode != 0 and "No module named 'training'" in generic.stderr
    api = run(
        [
            python,
            "-c",
            "import mmtrain; cfg = mmtrain.load_config('clip', 'clip/tiny', ['loop.max_steps=3']); "
            "print(mmtrain.__version__, cfg.loop.max_steps, mmtrain.training.__file__)",
        ]
    )
    version, steps, where = api.stdout.split()
    assert steps == "3" and where.startswith(str(venv)), api.stderr[-2000:]

    dry = run([str(venv / "bin/mmtrain"), "dry-run"], timeout=500)
    assert dry.returncode == 0, dry.stdout[-3000:] + dry.stderr[-3000:]
    assert "== dry run finished" in dry.stdout
    runs = empty / "out/dry-run/runs"
    assert {"dry-run-clip", "dry-run-vlm-stage1", "dry-run-vlm-stage2"} <= {p.name for p in runs.iterdir()}
    assert sorted((runs / "dry-run-clip").glob("checkpoint_000024_*"))
