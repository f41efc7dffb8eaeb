import os

import pytest

os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory):
    """A small synthetic dataset (train + val shards, manifest, tokenizer), made once."""
    from jobs.cli import main

    out = tmp_path_factory.mktemp("synth")
    assert main(["data", "synth", str(out), "--train", "256", "--val", "64", "--shard-samples", "64",
                 "--image-size", "32"]) == 0
    return out


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance for all integration tests. More logical CPUs than cores so that
    Ray Data and Train workers can share a 2-core machine (see RAY_NOTES.md)."""
    import ray

    ray.init(num_cpus=6, log_to_driver=False,
             runtime_env={"env_vars": {"RAY_DATA_DISABLE_PROGRESS_BARS": "1"}})
    yield ray
    ray.shutdown()
