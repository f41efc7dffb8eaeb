"""cluster.yaml validates against Ray's own cluster-launcher schema and matches the pinned Ray."""

from pathlib import Path

import pytest
import ray
import yaml

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cluster():
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def test_validates_against_rays_schema(cluster):
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(cluster))  # raises jsonschema.ValidationError on any bad key
    broken = yaml.safe_load((REPO / "cluster.yaml").read_text())
    broken["available_node_types"]["gpu_worker"]["min_worker"] = 1  # a typo the schema must catch
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))


def test_gpu_worker_type_cpu_head_and_matching_image(cluster):
    types = cluster["available_node_types"]
    head = types[cluster["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    workers = [t for name, t in types.items() if name != cluster["head_node_type"]]
    assert any(t["max_workers"] >= t["min_workers"] >= 0 and t["max_workers"] > 0 for t in workers)
    assert any(t["node_config"]["InstanceType"].startswith(("p4", "p5", "g5", "g6")) for t in workers)
    assert f":{ray.__version__}-" in cluster["docker"]["image"] and cluster["docker"]["image"].endswith("-gpu")
    pinned = next(line for line in (REPO / "pyproject.toml").read_text().splitlines() if '"ray[' in line)
    assert ray.__version__.rsplit(".", 1)[0] in pinned


def test_installs_mmtrain_and_mounts_the_presets(cluster):
    mounts = cluster["file_mounts"]
    assert any((REPO / source).resolve() == REPO for source in mounts.values())  # project, conf/ included
    target = next(t for t, source in mounts.items() if (REPO / source).resolve() == REPO)
    assert any("pip install" in command and target in command for command in cluster["setup_commands"])
    assert ".gitignore" in cluster["rsync_filter"]  # data, runs and .venv stay home


def test_every_node_starts_with_token_authentication(cluster):
    """Without RAY_AUTH_MODE=token, a head on --dashboard-host=0.0.0.0 runs anyone's code."""
    for commands in (cluster["head_start_ray_commands"], cluster["worker_start_ray_commands"]):
        starts = [command for command in commands if "ray start" in command]
        assert starts and all("RAY_AUTH_MODE=token ray start" in command for command in starts), starts
    assert cluster["file_mounts"].get("/home/ray/.ray/auth_token") == "~/.ray/auth_token"


def test_the_rsync_to_every_node_excludes_what_a_job_package_excludes(cluster):
    """file_mounts rsync untracked files too (.gitignore filters, but a .env need not be listed there)."""
    import fnmatch

    from mmtrain.jobs.package_excludes import SECRET_DIRECTORIES, SECRET_FILE_PATTERNS

    excluded = set(cluster["rsync_exclude"])
    mounted = {Path(source).name for source in cluster["file_mounts"].values()}
    assert {"auth_token"} == mounted - {"", "."}
    assert set(SECRET_FILE_PATTERNS) - excluded == {"auth_token"}  # sent on purpose by its own mount
    assert "auth_token" in (REPO / ".gitignore").read_text().split()  # so the project's own copy stays home
    assert {d + "/" for d in SECRET_DIRECTORIES if d != ".git"} <= excluded
    assert not [p for p in excluded for name in mounted if fnmatch.fnmatch(name, p)]
