"""The real Fashion-MNIST from Debian's dataset-fashion-mnist converts in one command."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from mmtrain.jobs.cli import main

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def fashion_mnist_dir() -> Path:
    if shutil.which("dpkg") is None:
        pytest.fail("needs Debian's dataset-fashion-mnist package (apt-get install dataset-fashion-mnist)")
    files = subprocess.run(["dpkg", "-L", "dataset-fashion-mnist"], capture_output=True, text=True).stdout
    images = [line for line in files.splitlines() if line.endswith("train-images-idx3-ubyte.gz")]
    assert images, "apt-get install dataset-fashion-mnist (the README's setup does)"
    return Path(images[0]).parent


def test_convert_fashion_mnist(tmp_path):
    out = tmp_path / "fashion_mnist"
    assert (
        main(
            [
                "data",
                "convert",
                str(fashion_mnist_dir()),
                "--out",
                str(out),
                "--format",
                "idx",
                "--classes",
                str(REPO / "conf/datasets/fashion_mnist_classes.txt"),
            ]
        )
        == 0
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["splits"] == {"train": 60000, "test": 10000}
    assert sum(s["num_samples"] for s in manifest["shards"]) == 70000
    assert manifest["classes"][9] == "Ankle boot"
    report_counts = {s["split"]: s["num_samples"] for s in manifest["shards"] if s["split"] == "test"}
    assert report_counts == {"test": 10000}
