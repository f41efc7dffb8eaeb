"""Activation checkpointing, LoRA and frozen-weight references, in one process (no Ray). FSDP2 and
DDP across ranks, and resharding, run in real Ray Train workers (tests/integration/test_sharding.py)."""

import copy
import json
import shutil
from dataclasses import replace

import pytest
import torch

from mmtrain.pipelines.conversations import ConversationEncoder
from mmtrain.training.checkpoint.store import load_checkpoint, read_model_state, save_checkpoint
from mmtrain.training.config.schema import LoraConfig, ModuleLearningRates
from mmtrain.training.engine.loop import TrainState
from mmtrain.training.engine.parallelize import checkpoint_blocks, parallelize, transformer_blocks
from mmtrain.training.tasks.vlm import VlmTask
from tests.unit.test_loop_and_checkpoint import _batches as clip_batches
from tests.unit.test_loop_and_checkpoint import _cfg as clip_cfg
from tests.unit.test_loop_and_checkpoint import _setup as clip_setup
from tests.unit.test_vlm import _batches as vlm_batches
from tests.unit.test_vlm import _cfg as vlm_cfg
from tests.unit.test_vlm import _train as vlm_train
from tests.unit.test_vlm import make_parts

STAGE2 = ModuleLearningRates(vision=0, projector=1e-3, lm=1e-2)


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    return make_parts(tmp_path_factory.mktemp("scaling"))


def _gradients(task, model, batch) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss, _ = task.loss(model, task.prepare_batch(batch, torch.device("cpu")))
    loss.backward()
    return {
        name.replace("_checkpoint_wrapped_module.", ""): p.grad.clone()
        for name, p in model.named_parameters()
        if p.grad is not None
    }


def test_activation_checkpointing_gives_the_same_gradients_clip():
    task, model, _, _ = clip_setup(clip_cfg())
    batch = next(iter(clip_batches()))
    plain = _gradients(task, model, batch)
    checkpointed = copy.deepcopy(model)
    wrapped = checkpoint_blocks(checkpointed, transformer_blocks(checkpointed))
    assert len(wrapped) == len(model.visual.transformer.blocks) + len(model.text.transformer.blocks)
    assert all(type(block).__name__ == "CheckpointWrapper" for block in wrapped)
    assert checkpointed.state_dict().keys() == model.state_dict().keys()  # checkpoints unchanged
    again = _gradients(task, checkpointed, batch)
    assert again.keys() == plain.keys()
    for name in plain:
        assert torch.allclose(again[name], plain[name], atol=1e-6), name


def test_activation_checkpointing_gives_the_same_gradients_vlm(parts):
    root, lm = parts
    task = VlmTask(vlm_cfg(root, lm, stage="conversations", lrs=STAGE2))
    model = task.build_model()
    encoder = ConversationEncoder(task.tokenizer, num_image_tokens=4, max_length=32)
    batch = next(vlm_batches(task, encoder))
    plain = _gradients(task, model, batch)
    parallelize(model, "ddp", "blocks", torch.device("cpu"), bf16=False)  # one process: checkpointing only
    assert model.lm.model.gradient_checkpointing  # the LM's own, with its cache handling
    blocks = transformer_blocks(model)
    assert [type(b).__name__ for b in blocks].count("LlamaDecoderLayer") == 1
    tower_blocks = model.vision.tower.transformer.blocks  # our tower's blocks: wrapped
    assert len(tower_blocks) == 2 and all(type(b).__name__ == "CheckpointWrapper" for b in tower_blocks)
    again = _gradients(task, model, batch)
    assert again.keys() == plain.keys() and any(name.startswith("lm.") for name in plain)
    for name in plain:
        assert torch.allclose(again[name], plain[name], atol=1e-6), name


def _lora_cfg(root, lm, rank=4):
    cfg = vlm_cfg(root, lm, stage="conversations", lrs=STAGE2)
    lora = replace(cfg.model.lm, lora=LoraConfig(rank=rank, dropout=0.0))
    return replace(cfg, model=replace(cfg.model, lm=lora))


def test_lora_trains_adapters_only_and_merges_to_the_same_outputs(parts, tmp_path):
    root, lm = parts
    task, model, optimizer, before = vlm_train(_lora_cfg(root, lm), steps=3)
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    names = {id(p): name for name, p in model.named_parameters()}
    assert optimized and all("lora_" in names[i] or names[i].startswith("projector.") for i in optimized)
    assert any("lora_" in names[i] for i in optimized)
    after = model.state_dict()
    for key, value in before.items():
        if key.startswith("lm.") and "lora_" not in key:
            assert torch.equal(after[key], value), key  # the LM's own weights: bit-identical
    assert any(not torch.equal(after[k], before[k]) for k in after if "lora_B" in k)  # adapters learned

    encoder = ConversationEncoder(task.tokenizer, num_image_tokens=4, max_length=32)
    prepared = task.prepare_batch(next(vlm_batches(task, encoder)), torch.device("cpu"))
    model.eval()
    with torch.no_grad():
        unmerged = task.loss(model, prepared)[0]
        merged_model = copy.deepcopy(model)
        merged_model.lm = merged_model.lm.merge_and_unload()
        assert not any("lora_" in name for name, _ in merged_model.named_parameters())
        merged = task.loss(merged_model, prepared)[0]
    assert torch.allclose(merged, unmerged, atol=1e-5), (merged, unmerged)

    # The checkpoint holds the adapters and the projector, and refers to the LM and the tower.
    save_checkpoint(tmp_path / "lora", model, optimizer, TrainState(step=3), {}, frozen_sources=task.frozen_sources())
    saved = read_model_state(tmp_path / "lora")
    assert saved and all("lora_" in key or key.startswith("projector.") for key in saved), sorted(saved)[:5]
    frozen = json.loads((tmp_path / "lora" / "frozen.json").read_text())
    assert set(frozen) == {"lm", "vision"} and all(len(entry["sha256"]) == 64 for entry in frozen.values())
    fresh_task = VlmTask(_lora_cfg(root, lm))
    fresh = fresh_task.build_model()
    load_checkpoint(tmp_path / "lora", fresh)
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh_task.loss(fresh, prepared)[0], unmerged)


def test_lora_without_an_lm_learning_rate_is_refused(parts):
    root, lm = parts
    cfg = _lora_cfg(root, lm)
    cfg = replace(cfg, lrs=ModuleLearningRates(vision=0, projector=1e-3, lm=0))
    with pytest.raises(ValueError, match="lrs.lm"):
        VlmTask(cfg)


def test_a_changed_frozen_source_is_refused(parts, tmp_path):
    root, lm = parts
    lm_copy = tmp_path / "lm"
    shutil.copytree(lm, lm_copy)
    cfg = vlm_cfg(root, lm_copy)  # stage 1: the LM and the tower are frozen
    task = VlmTask(cfg)
    model = task.build_model()
    save_checkpoint(tmp_path / "stage1", model, None, TrainState(step=1), {}, frozen_sources=task.frozen_sources())
    saved = read_model_state(tmp_path / "stage1")
    assert saved.keys() == {f"projector.{k}" for k in model.projector.state_dict()}  # no LM, no tower copied
    load_checkpoint(tmp_path / "stage1", VlmTask(cfg).build_model())  # sources unchanged: loads
    config = json.loads((lm_copy / "config.json").read_text())
    (lm_copy / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 1e-5}))
    with pytest.raises(ValueError, match=r"frozen `lm` weights from .*have changed"):
        load_checkpoint(tmp_path / "stage1", model)


def _saved_elements(task, model, batch) -> int:
    """Elements autograd keeps for the backward in one forward (activation memory)."""
    saved = []

    def pack(tensor):
        saved.append(tensor.numel())
        return tensor

    prepared = task.prepare_batch(batch, torch.device("cpu"))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss, _ = task.loss(model, prepared)
    loss.backward()
    return sum(saved)


def test_activation_checkpointing_works_on_a_frozen_lm(parts):
    """Stage 1: the LM is frozen (eval mode, where HF's own checkpointing is off) but gradients pass
    through it to the projector: its layers are recomputed all the same, with the same gradients."""
    root, lm = parts
    stage1 = ModuleLearningRates(vision=0, projector=1e-3, lm=0)
    task = VlmTask(vlm_cfg(root, lm, lrs=stage1))
    model = task.build_model()
    assert not model.lm.training
    batch = next(vlm_batches(task, VlmEncoder(task)))
    plain, plain_saved = _gradients(task, model, batch), _saved_elements(task, model, batch)
    parallelize(model, "ddp", "blocks", torch.device("cpu"), bf16=False)
    layers = model.lm.model.layers  # as the LM calls them
    assert len(layers) == 1 and all(type(b).__name__ == "CheckpointWrapper" for b in layers)
    checkpointed_saved = _saved_elements(task, model, batch)
    assert checkpointed_saved < 0.5 * plain_saved, (checkpointed_saved, plain_saved)
    again = _gradients(task, model, batch)
    assert again.keys() == plain.keys() == {name for name in plain if name.startswith("projector.")}
    for name in plain:
        assert torch.allclose(again[name], plain[name], atol=1e-6), name


def VlmEncoder(task):
    return ConversationEncoder(task.tokenizer, num_image_tokens=4, max_length=32)
