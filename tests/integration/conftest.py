"""Fixtures the integration modules share: one synthetic dataset and one CLIP trained on it."""

import pytest

from mmtrain.jobs.cli import main
from tests.trained_models import train_tiny_clip


@pytest.fixture(scope="session")
def shapes(tmp_path_factory):
    """2,048 training and 128 held-out synthetic samples at 32 px, 256 per shard."""
    out = tmp_path_factory.mktemp("shapes")
    assert (
        main(
            [
                "data",
                "synth",
                "--out",
                str(out),
                "--train",
                "2048",
                "--val",
                "128",
                "--shard-samples",
                "256",
                "--image-size",
                "32",
            ]
        )
        == 0
    )
    return out


@pytest.fixture(scope="session")
def clip_run(shapes, tmp_path_factory):
    return train_tiny_clip(shapes, tmp_path_factory.mktemp("clip-run"), steps=500)
