"""Fixtures the integration modules share: one synthetic dataset and one CLIP trained on it."""

import pytest

from tests.assets import make_synth
from tests.trained_models import train_tiny_clip


@pytest.fixture(scope="session")
def shapes(tmp_path_factory):
    """2,048 training and 128 held-out synthetic samples at 32 px, 256 per shard."""
    return make_synth(tmp_path_factory.mktemp("shapes"), train=2048, val=128, shard_samples=256)


@pytest.fixture(scope="session")
def clip_run(shapes, tmp_path_factory):
    return train_tiny_clip(shapes, tmp_path_factory.mktemp("clip-run"), steps=500)
