"""The loop runs on plain tensors (no Ray), learns, and resumes exactly from a checkpoint."""

import dataclasses

import torch

from pipelines import contract
from training.checkpoint import load_checkpoint, save_checkpoint
from training.clip_task import ClipTask
from training.config import ClipModelConfig, ClipRunConfig, LoopConfig, OptimConfig, TextConfig, VisionConfig
from training.loop import TrainState, train
from training.optim import build_optimizer, warmup_cosine
from pipelines.config import AugmentConfig, DataConfig


def _cfg():
    return ClipRunConfig(
        data=DataConfig(context_length=6, augment=AugmentConfig(image_size=16)),
        model=ClipModelConfig(embed_dim=16, vision=VisionConfig(image_size=16, patch_size=8, width=32, layers=1, heads=2),
                              text=TextConfig(vocab_size=12, width=32, layers=1, heads=2)),
        optim=OptimConfig(lr=3e-3, warmup_steps=2),
        loop=LoopConfig(max_steps=40, batch_size_per_worker=8))


def _batches(epoch):
    """A learnable toy task: the token id tells the image colour."""
    generator = torch.Generator().manual_seed(epoch)
    for _ in range(10):
        labels = torch.randint(0, 4, (8,), generator=generator)
        images = (labels.view(8, 1, 1, 1) * 60).expand(8, 16, 16, 3).to(torch.uint8)
        ids = torch.stack([torch.tensor([1, 2 + int(l), 3, 0, 0, 0]) for l in labels])
        mask = (ids != 0).to(torch.uint8)
        yield {contract.IMAGE: images, contract.INPUT_IDS: ids.int(), contract.ATTENTION_MASK: mask,
               contract.LABEL: labels}


def _setup(cfg):
    torch.manual_seed(0)
    task = ClipTask(cfg)
    model = task.build_model()
    optimizer = build_optimizer(task.param_groups(model), cfg.optim)
    return task, model, optimizer, warmup_cosine(optimizer, cfg.optim, cfg.loop.max_steps)


def test_loop_learns_and_counts_epochs():
    cfg = _cfg()
    task, model, optimizer, scheduler = _setup(cfg)
    losses = []
    state = train(task, model, optimizer, scheduler, TrainState(), _batches, 40, torch.device("cpu"),
                  lambda s, r: losses.append(float(r.loss)) or True)
    assert state.step == 40 and state.epoch == 3 and state.samples_seen == 320  # the 4th is in progress
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5


def test_grad_accumulation_counts_micro_batches():
    cfg = _cfg()
    task, model, optimizer, scheduler = _setup(cfg)
    results = []
    state = train(task, model, optimizer, scheduler, TrainState(), _batches, 5, torch.device("cpu"),
                  lambda s, r: results.append(r) or True, grad_accum_steps=2, grad_clip_norm=1.0)
    assert state.step == 5 and state.samples_seen == 80
    # Loss and gradient norm stay tensors (no host sync per step); read when logging.
    assert all(isinstance(r.loss, torch.Tensor) and isinstance(r.extra["grad_norm"], torch.Tensor) for r in results)
    assert all(float(r.loss) > 0 and float(r.extra["grad_norm"]) > 0 for r in results)


def test_checkpoint_round_trip_resumes_identically(tmp_path):
    cfg = dataclasses.replace(_cfg(), loop=LoopConfig(max_steps=20, batch_size_per_worker=8))
    task, model, optimizer, scheduler = _setup(cfg)

    def checkpoint_at_10(state, result):
        if state.step == 10:
            save_checkpoint(tmp_path, model, optimizer, scheduler, state, {"note": "test"})
        return True

    train(task, model, optimizer, scheduler, TrainState(), _batches, 20, torch.device("cpu"), checkpoint_at_10)
    expected = {k: v.clone() for k, v in model.state_dict().items()}

    task2, model2, optimizer2, scheduler2 = _setup(cfg)
    restored = load_checkpoint(tmp_path, model2, optimizer2, scheduler2)
    assert restored == TrainState(step=10, epoch=1, samples_seen=80)  # epoch 0 fully consumed
    train(task2, model2, optimizer2, scheduler2, restored, _batches, 20, torch.device("cpu"), lambda s, r: True)
    for key, value in model2.state_dict().items():
        assert torch.allclose(value, expected[key], atol=1e-6), key


def test_checkpoint_files_load_without_unpickling(tmp_path):
    cfg = _cfg()
    task, model, optimizer, scheduler = _setup(cfg)
    save_checkpoint(tmp_path, model, optimizer, scheduler, TrainState(step=3), {"a": 1})
    for name in ("model.pt", "optimizer.pt", "scheduler.pt", "rng.pt"):
        torch.load(tmp_path / name, weights_only=True)  # raises on any non-tensor object
