"""Hugging Face ids where a model directory goes: resolved through huggingface_hub's cache (here a
pre-filled one standing in for the hub, offline), or refused with the command that fetches it."""

import json
import os
import subprocess
import sys

from tests.unit.test_hf_clip import save_hf_clip

RESOLVE = """
import sys
from mmtrain.training.tasks.kinds import load_run_config
from mmtrain.training.tasks.resolve import resolve_clip
cfg = load_run_config("clip", "clip/tiny", sys.argv[1:])
cfg, _ = resolve_clip(cfg)
print(cfg.init_from)
print(cfg.model.embed_dim)
"""


def offline(cache, *args):
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=300)


def test_init_from_a_hub_id_in_the_cache_and_a_missing_one_named_with_its_download(tmp_path, synth_dir):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "cache" / "models--tiny-org--tiny-clip"
    snapshot = save_hf_clip(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    data = [f"data.train_shards=[{synth_dir}/train-*.tar]", "data.eval_shards=[]"]

    found = offline(tmp_path / "cache", "-c", RESOLVE, "init_from=tiny-org/tiny-clip", *data)
    assert found.returncode == 0, found.stderr[-3000:]
    init_from, embed_dim = found.stdout.split()
    assert init_from == str(snapshot.resolve())
    assert int(embed_dim) == json.loads((snapshot / "config.json").read_text())["projection_dim"]

    missing = offline(tmp_path / "cache", "-c", RESOLVE, "init_from=tiny-org/not-here", *data)
    assert missing.returncode != 0
    assert "init_from=tiny-org/not-here is no directory here" in missing.stderr
    assert "`hf download tiny-org/not-here --include '*.json' '*.safetensors'" in missing.stderr
