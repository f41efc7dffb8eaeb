"""Every preset loads; the ViT-B presets match open_clip's parameter counts within 1%."""

from pathlib import Path

import pytest

from mmtrain.training.config.io import load_config
from mmtrain.training.config.schema import ClipRunConfig
from mmtrain.training.models.clip import ClipModel

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
    from mmtrain.training.config.schema import VlmRunConfig

    cfg = load_config(VlmRunConfig, path)
    assert cfg.stage in ("captions", "conversations")
    assert (cfg.stage == "conversations") == bool(cfg.init_from)


def test_the_llava15_presets_carry_the_papers_recipe():
    """LLaVA-1.5 (Liu et al. 2023, table 9): global batch 256 / 128, lr 1e-3 / 2e-5, no weight decay,
    3% warmup of one epoch, the tower frozen; on FSDP with bf16 and activation checkpointing."""
    from mmtrain.training.config.schema import VlmRunConfig

    stage1, stage2 = (load_config(VlmRunConfig, CONF / "vlm" / f"llava15_stage{n}.yaml") for n in (1, 2))
    for cfg, batch, lrs, samples in ((stage1, 256, (0, 1e-3, 0), 558_128), (stage2, 128, (0, 2e-5, 2e-5), 665_298)):
        assert cfg.loop.batch_size_per_worker * cfg.scaling.num_workers * cfg.optim.grad_accum_steps == batch
        assert (cfg.lrs.vision, cfg.lrs.projector, cfg.lrs.lm) == lrs and cfg.optim.weight_decay == 0
        assert cfg.loop.epochs == 1 and cfg.loop.max_steps == -(-samples // batch)
        assert abs(cfg.optim.warmup_steps - 0.03 * cfg.loop.max_steps) <= 1
        assert cfg.scaling.strategy == "fsdp" and cfg.loop.precision == "bf16"
        assert cfg.loop.activation_checkpointing == "blocks" and cfg.model.projector.type == "mlp2x_gelu"
    assert [source.name for source in stage2.data.sources] == ["llava665k"]
