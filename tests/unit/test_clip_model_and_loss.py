"""CLIP model, losses and optimizer groups without Ray. The distributed check runs 2 real
processes with a gloo process group."""

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from mmtrain.training.config.schema import ClipModelConfig, LossConfig, OptimConfig, TextConfig, VisionConfig
from mmtrain.training.engine.optim import exempt_from_weight_decay, param_groups, warmup_cosine
from mmtrain.training.models.clip import ClipModel
from tests.unit import distributed_loss_check as check

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("kind", ["infonce", "siglip"])
def test_two_workers_equal_one_worker_on_the_concatenated_batch(tmp_path, kind):
    out = tmp_path / "two.pt"
    subprocess.run(
        [sys.executable, "-m", "tests.unit.distributed_loss_check", kind, str(out)], cwd=REPO, check=True, timeout=180
    )
    two = torch.load(out, weights_only=True)

    image_enc, text_enc = check.encoders()
    images, texts = check.data()
    loss = check.loss_of(kind, image_enc, text_enc, images, texts)
    loss.backward()
    assert torch.allclose(two["loss"], loss.detach(), atol=1e-5)
    # DDP averages gradients over ranks: the mean of local losses equals the global mean.
    assert torch.allclose(two["image_grad"], image_enc.weight.grad, atol=1e-5)
    assert torch.allclose(two["text_grad"], text_enc.weight.grad, atol=1e-5)


def _tiny_model(**loss_kw):
    cfg = ClipModelConfig(
        embed_dim=16,
        vision=VisionConfig(image_size=16, patch_size=8, width=32, layers=1, heads=2),
        text=TextConfig(vocab_size=50, width=32, layers=1, heads=2),
    )
    return ClipModel(cfg, context_length=8, loss=LossConfig(**loss_kw))


def test_forward_shapes_and_normalised():
    model = _tiny_model()
    image, text = model(torch.randn(3, 3, 16, 16), torch.randint(0, 50, (3, 8)), torch.ones(3, 8, dtype=torch.long))
    assert image.shape == text.shape == (3, 16)
    assert torch.allclose(image.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert math.isclose(float(model.logit_scale.exp()), 1 / 0.07, rel_tol=1e-5)


def test_text_pools_at_last_real_token():
    model = _tiny_model()
    ids = torch.randint(0, 50, (1, 8))
    mask = torch.tensor([[1, 1, 1, 0, 0, 0, 0, 0]])
    changed = ids.clone()
    changed[0, 5] = (ids[0, 5] + 1) % 50  # a padding position: must not change the embedding
    assert torch.allclose(model.encode_text(ids, mask), model.encode_text(changed, mask))


def test_temperature_clamp_after_step():
    model = _tiny_model(init_temperature=0.001)  # logit scale 1000, over the cap
    model.clamp_logit_scale(100.0)
    assert math.isclose(float(model.logit_scale.exp()), 100.0, rel_tol=1e-5)
    fixed = _tiny_model(learnable_temperature=False)
    assert not fixed.logit_scale.requires_grad


def decayed_names(model, groups) -> set[str]:
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    return {name for name, p in model.named_parameters() if id(p) in decayed}


def test_weight_decay_groups_by_dimension_with_declared_exceptions():
    model = _tiny_model()
    groups = param_groups(model, 0.1, 1e-3, exempt_from_weight_decay(model))
    decayed = decayed_names(model, groups)
    assert "visual.transformer.blocks.0.attn.qkv.weight" in decayed and "visual.patch_proj.weight" in decayed
    for no_decay in (
        "visual.transformer.blocks.0.attn.qkv.bias",
        "visual.ln_pre.weight",
        "logit_scale",
        "text.token_embedding.weight",
        "text.positional_embedding",
        "visual.class_embedding",
        "visual.positional_embedding",
    ):
        assert no_decay not in decayed, no_decay
    assert {p.ndim for name, p in model.named_parameters() if name in decayed} == {2, 4}
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in model.parameters())


def test_warmup_cosine_schedule():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = warmup_cosine(optimizer, OptimConfig(lr=1.0, warmup_steps=10), total_steps=110)
    lrs = []
    for _ in range(110):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert math.isclose(lrs[0], 0.1) and math.isclose(lrs[9], 1.0)
    assert math.isclose(lrs[60], 0.5, abs_tol=1e-6) and lrs[-1] < 0.01


def test_schedule_rebuilt_mid_run_continues_where_it_was():
    cfg = OptimConfig(lr=1.0, warmup_steps=10)
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = warmup_cosine(optimizer, cfg, total_steps=110)
    for _ in range(37):
        optimizer.step()
        scheduler.step()
    expected = optimizer.param_groups[0]["lr"]
    fresh = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    assert math.isclose(warmup_cosine(fresh, cfg, 110, current_step=37).get_last_lr()[0], expected)
    assert math.isclose(fresh.param_groups[0]["lr"], expected)


@pytest.mark.parametrize("kind", ["infonce", "siglip"])
def test_two_workers_accumulating_two_micro_batches_equal_one_batch_each(tmp_path, kind):
    """Feature-cached accumulation across 2 DDP ranks: each rank's 2 micro-batches of 8 give the
    loss and gradients of one batch of 16 per rank (negatives from all 32 rows). The logged loss
    is the mean over ranks, not rank 0's."""
    out = tmp_path / "accum.pt"
    subprocess.run(
        [sys.executable, "-m", "tests.unit.distributed_accum_check", kind, str(out)], cwd=REPO, check=True, timeout=180
    )
    result = torch.load(out, weights_only=True)
    assert torch.allclose(result["loss_whole"], result["loss_accum"], atol=1e-6)
    assert result["grads_whole"].keys() == result["grads_accum"].keys()
    for name, grad in result["grads_whole"].items():
        assert torch.allclose(grad, result["grads_accum"][name], atol=1e-5, rtol=1e-4), name
    assert float(result["global_mean"]) == 1.5
