"""Every preset loads; the ViT-B presets match open_clip's parameter counts within 1%."""

from pathlib import Path

import pytest

from training.config.io import load_config
from training.config.schema import ClipRunConfig
from training.models.clip import ClipModel

CONF = Path(__file__).resolve().parents[2] / "conf"
OPEN_CLIP_PARAMS = {"vit_b32": 151_277_313, "vit_b16": 149_620_737}  # open_clip model_profile


@pytest.mark.parametrize("path", sorted((CONF / "clip").glob("*.yaml")), ids=lambda p: p.stem)
def test_clip_presets_load(path):
    cfg = load_config(ClipRunConfig, path)
    assert cfg.model.vision.image_size == cfg.data.augment.image_size


@pytest.mark.parametrize("name", sorted(OPEN_CLIP_PARAMS))
def test_vit_b_parameter_counts_match_open_clip(name):
    cfg = load_config(ClipRunConfig, CONF / "clip" / f"{name}.yaml")
    model = ClipModel(cfg.model, cfg.data.context_length, cfg.loss)
    count = sum(p.numel() for n, p in model.named_parameters() if n != "logit_bias")
    assert abs(count - OPEN_CLIP_PARAMS[name]) / OPEN_CLIP_PARAMS[name] < 0.01, count


@pytest.mark.parametrize("path", sorted((CONF / "vlm").glob("*.yaml")), ids=lambda p: p.stem)
def test_vlm_presets_load(path):
    from training.config.schema import VlmRunConfig

    cfg = load_config(VlmRunConfig, path)
    assert cfg.stage in ("captions", "conversations")
    assert (cfg.stage == "conversations") == bool(cfg.init_from)
