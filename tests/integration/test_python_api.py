"""The Python API as the README shows it: load a config, override it, train, evaluate, export."""

import pytest

import mmtrain

pytestmark = pytest.mark.integration


def test_load_override_train_evaluate_export(ray_local, synth_dir, tmp_path):
    cfg = mmtrain.load_config(
        "clip",
        "clip/tiny",
        [
            f"data.train_shards=[{synth_dir}/train-*.tar]",
            "data.eval_shards=[]",
            f"run.output_dir={tmp_path}",
            "run.name=api",
            "loop.max_steps=3",
            "scaling.num_workers=1",
            "tracking.tracking_uri=none",
        ],
    )
    assert cfg.loop.max_steps == 3 and cfg.run.resume == "never"
    metrics = mmtrain.train(cfg)
    assert metrics["step"] == 3
    scores, samples = mmtrain.evaluate("clip", tmp_path / "api", [f"{synth_dir}/val-*.tar"])
    assert scores["eval_samples"] == 64 and 0 <= scores["image_to_text_R_at_5"] <= 1
    exported = mmtrain.export(tmp_path / "api", tmp_path / "hf")
    assert (exported / "model.safetensors").is_file() and (exported / "config.json").is_file()
