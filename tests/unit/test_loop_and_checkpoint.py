"""The loop runs on plain tensors (no Ray), learns, and resumes exactly from a checkpoint."""

import dataclasses
import math
import os
import pickle
import time
from contextlib import nullcontext

import pytest
import torch

from mmtrain.pipelines import contract
from mmtrain.pipelines.config import AugmentConfig, DataConfig
from mmtrain.training.checkpoint.store import load_checkpoint, save_checkpoint
from mmtrain.training.config.schema import (
    ClipModelConfig,
    ClipRunConfig,
    LoopConfig,
    OptimConfig,
    TextConfig,
    VisionConfig,
)
from mmtrain.training.engine.loop import TrainState, train
from mmtrain.training.engine.optim import build_optimizer, warmup_cosine
from mmtrain.training.engine.resume import check_resume_config, plan_schedule, seed_for
from mmtrain.training.tasks.clip import ClipTask


def _cfg():
    return ClipRunConfig(
        data=DataConfig(context_length=6, augment=AugmentConfig(image_size=16)),
        model=ClipModelConfig(
            embed_dim=16,
            vision=VisionConfig(image_size=16, patch_size=8, width=32, layers=1, heads=2),
            text=TextConfig(vocab_size=12, width=32, layers=1, heads=2),
        ),
        optim=OptimConfig(lr=3e-3, warmup_steps=2),
        loop=LoopConfig(max_steps=40, batch_size_per_worker=8),
    )


def _batches(start: int = 0, epochs: int = 100):
    """A learnable toy task, 10 batches an epoch, as one stream: the token id tells the image colour.
    `start` batches are left out (a resumed run's stream)."""
    for epoch in range(epochs):
        generator = torch.Generator().manual_seed(epoch)
        for index in range(10):
            labels = torch.randint(0, 4, (8,), generator=generator)
            if epoch * 10 + index < start:
                continue
            images = (labels.view(8, 1, 1, 1) * 60).expand(8, 16, 16, 3).to(torch.uint8)
            ids = torch.stack([torch.tensor([1, 2 + int(label), 3, 0, 0, 0]) for label in labels])
            mask = (ids != 0).to(torch.uint8)
            yield {
                contract.IMAGE: images,
                contract.INPUT_IDS: ids.int(),
                contract.ATTENTION_MASK: mask,
                contract.LABEL: labels,
            }


def _setup(cfg):
    torch.manual_seed(0)
    task = ClipTask(cfg)
    model = task.build_model()
    optimizer = build_optimizer(task.param_groups(model), cfg.optim)
    return task, model, optimizer, warmup_cosine(optimizer, cfg.optim, cfg.loop.max_steps)


def test_loop_learns_across_epochs_of_one_stream():
    cfg = _cfg()
    task, model, optimizer, scheduler = _setup(cfg)
    losses = []
    state = train(
        task,
        model,
        optimizer,
        scheduler,
        TrainState(),
        _batches(),
        40,
        torch.device("cpu"),
        lambda s, r: losses.append(float(r.loss)) or True,
    )
    assert state.step == 40 and state.samples_seen == 320
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5


def test_the_end_of_the_stream_ends_the_run_before_max_steps():
    cfg = _cfg()
    task, model, optimizer, scheduler = _setup(cfg)
    state = train(
        task,
        model,
        optimizer,
        scheduler,
        TrainState(),
        _batches(epochs=2),
        40,
        torch.device("cpu"),
        lambda s, r: True,
        grad_accum_steps=3,
    )
    assert state.step == 6 and state.samples_seen == 144  # 20 batches: 6 windows of 3, the last 2 untrained


def test_grad_accumulation_counts_micro_batches():
    cfg = _cfg()
    task, model, optimizer, scheduler = _setup(cfg)
    results = []
    state = train(
        task,
        model,
        optimizer,
        scheduler,
        TrainState(),
        _batches(),
        5,
        torch.device("cpu"),
        lambda s, r: results.append(r) or True,
        grad_accum_steps=2,
        grad_clip_norm=1.0,
    )
    assert state.step == 5 and state.samples_seen == 80
    # Loss and gradient norm stay tensors (no host sync per step); read when logging.
    assert all(isinstance(r.loss, torch.Tensor) and isinstance(r.extra["grad_norm"], torch.Tensor) for r in results)
    assert all(float(r.loss) > 0 and float(r.extra["grad_norm"]) > 0 for r in results)


def test_checkpoint_round_trip_resumes_identically(tmp_path):
    cfg = dataclasses.replace(_cfg(), loop=LoopConfig(max_steps=20, batch_size_per_worker=8))
    task, model, optimizer, scheduler = _setup(cfg)

    def checkpoint_at_10(state, result):
        if state.step == 10:
            save_checkpoint(tmp_path, model, optimizer, state, {"note": "test"})
        return True

    train(task, model, optimizer, scheduler, TrainState(), _batches(), 20, torch.device("cpu"), checkpoint_at_10)
    expected = {k: v.clone() for k, v in model.state_dict().items()}

    task2, model2, optimizer2, scheduler2 = _setup(cfg)
    restored = load_checkpoint(tmp_path, model2, optimizer2)
    assert restored == TrainState(step=10, samples_seen=80)
    scheduler2 = warmup_cosine(optimizer2, cfg.optim, 20, current_step=restored.step)
    train(
        task2, model2, optimizer2, scheduler2, restored, _batches(start=10), 20, torch.device("cpu"), lambda s, r: True
    )
    for key, value in model2.state_dict().items():
        assert torch.allclose(value, expected[key], atol=1e-6), key


def test_checkpoint_files_load_without_unpickling(tmp_path):
    cfg = _cfg()
    task, model, optimizer, scheduler = _setup(cfg)
    save_checkpoint(tmp_path, model, optimizer, TrainState(step=3), {"a": 1})
    from mmtrain.training.checkpoint.store import CheckpointReader, read_model_state

    assert read_model_state(tmp_path).keys() == model.state_dict().keys()
    # DCP's .metadata is a pickle: one naming anything but DCP's metadata classes is refused.
    metadata = tmp_path / "weights" / ".metadata"
    metadata.write_bytes(pickle.dumps(os.system))
    with pytest.raises(pickle.UnpicklingError, match="posix.system"):
        CheckpointReader(str(tmp_path / "weights")).read_metadata()


def test_data_wait_counts_every_fetch_across_epoch_boundaries():
    # Before one stream per run: the look-ahead that detected an epoch's end fetched the next batch
    # outside every timer, so the timed fetch returned a cached batch and the wait read ~0.
    cfg = _cfg()
    task, model, optimizer, scheduler = _setup(cfg)

    def slow_batches():
        for batch in _batches():
            time.sleep(0.05)
            yield batch

    results = []
    train(
        task,
        model,
        optimizer,
        scheduler,
        TrainState(),
        slow_batches(),
        12,
        torch.device("cpu"),
        lambda s, r: results.append(r) or True,
    )
    waits = [r.data_wait_s for r in results]
    assert all(wait >= 0.045 for wait in waits), waits  # each step fetched one batch that slept 50 ms


def _lrs_after_resume(cfg, max_steps, restart, tmp_path):
    """Train 10 of 10 steps, then resume with `max_steps`: the learning rates of the resumed steps."""
    task, model, optimizer, scheduler = _setup(cfg)
    state = train(
        task,
        model,
        optimizer,
        scheduler,
        TrainState(schedule_steps=10),
        _batches(),
        10,
        torch.device("cpu"),
        lambda s, r: True,
    )
    save_checkpoint(tmp_path, model, optimizer, state, {})
    task, model, optimizer, _ = _setup(cfg)
    state, note = plan_schedule(load_checkpoint(tmp_path, model, optimizer), max_steps, restart)
    for group in optimizer.param_groups:
        group["initial_lr"] = cfg.optim.lr
    scheduler = warmup_cosine(optimizer, cfg.optim, state.schedule_steps, state.schedule_start, state.step)
    lrs = []
    train(
        task,
        model,
        optimizer,
        scheduler,
        state,
        _batches(start=10),
        max_steps,
        torch.device("cpu"),
        lambda s, r: lrs.append(scheduler.get_last_lr()[0]) or True,
    )
    return lrs, note


def test_raising_max_steps_on_resume_keeps_the_schedule(tmp_path):
    # Before: the cosine was rebuilt over the new max_steps and the lr jumped from 0 back to ~0.65 x peak.
    cfg = dataclasses.replace(_cfg(), optim=OptimConfig(lr=1e-3, warmup_steps=2))
    lrs, note = _lrs_after_resume(cfg, 20, restart=False, tmp_path=tmp_path)
    assert max(lrs) == 0.0 and "schedule kept" in note and "optim.restart_schedule=true" in note


def test_a_new_schedule_on_resume_warms_up_again(tmp_path):
    cfg = dataclasses.replace(_cfg(), optim=OptimConfig(lr=1e-3, warmup_steps=2))
    lrs, note = _lrs_after_resume(cfg, 20, restart=True, tmp_path=tmp_path)
    assert "from step 10 to 20" in note
    assert math.isclose(lrs[0], 1e-3) and lrs == sorted(lrs, reverse=True) and lrs[-1] < 1e-4


def test_config_changes_on_resume_are_listed_and_shape_changes_refused():
    saved = {
        "model": {"embed_dim": 16},
        "loop": {"max_steps": 10, "batch_size_per_worker": 8},
        "scaling": {"num_workers": 2},
        "optim": {"grad_accum_steps": 1, "lr": 1e-3},
    }
    longer = {**saved, "loop": {"max_steps": 20, "batch_size_per_worker": 8}}
    assert check_resume_config(saved, longer, "ckpt") == {"loop.max_steps": (10, 20)}
    with pytest.raises(ValueError, match=r"model.embed_dim: 16 -> 32.*another run.name"):
        check_resume_config(saved, {**saved, "model": {"embed_dim": 32}}, "ckpt")
    with pytest.raises(ValueError, match=r"global batch .*16 -> 8"):
        check_resume_config(saved, {**saved, "scaling": {"num_workers": 1}}, "ckpt")
    # one worker with twice the batch is the same global batch: allowed
    check_resume_config(
        saved, {**saved, "scaling": {"num_workers": 1}, "loop": {"max_steps": 10, "batch_size_per_worker": 16}}, "ckpt"
    )


def test_randomness_comes_from_seed_step_and_rank():
    assert seed_for(0, 10, 1) == seed_for(0, 10, 1)
    assert len({seed_for(0, 10, 0), seed_for(0, 10, 1), seed_for(0, 11, 0), seed_for(1, 10, 0)}) == 4


def _micro(images, ids, mask):
    return {contract.IMAGE: images, contract.INPUT_IDS: ids, contract.ATTENTION_MASK: mask}


@pytest.mark.parametrize("kind", ["infonce", "siglip"])
def test_feature_cached_accumulation_equals_one_big_batch(kind):
    # Before: each micro-batch saw only its own negatives, so 2 x 8 was not a batch of 16.
    cfg = dataclasses.replace(_cfg(), loss=dataclasses.replace(_cfg().loss, kind=kind))
    halves = [next(iter(_batches(seed))) for seed in (5, 6)]
    whole = {key: torch.cat([half[key] for half in halves]) for key in halves[0]}
    results = []
    for micro_batches in ([whole], halves):
        task, model, _, _ = _setup(cfg)
        prepared = [task.prepare_batch(b, torch.device("cpu")) for b in micro_batches]
        loss, _ = task.forward_backward(model, prepared, nullcontext, None)
        results.append((loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (loss_one, grads_one), (loss_two, grads_two) = results
    assert torch.allclose(loss_one, loss_two, atol=1e-6)
    assert grads_one.keys() == grads_two.keys() and "logit_scale" in grads_one
    for name in grads_one:
        assert torch.allclose(grads_one[name], grads_two[name], atol=1e-5, rtol=1e-4), name


def test_a_damaged_checkpoint_is_named_and_the_newest_intact_one_used(tmp_path, capsys):
    from mmtrain.training.checkpoint.store import checkpoint_problem, latest_checkpoint

    cfg = _cfg()
    task, model, optimizer, _ = _setup(cfg)
    older, newer = tmp_path / "checkpoint_2026-01-01_00-00-01", tmp_path / "checkpoint_2026-01-01_00-00-02"
    save_checkpoint(older, model, optimizer, TrainState(step=5), {})
    save_checkpoint(newer, model, optimizer, TrainState(step=10), {})
    assert checkpoint_problem(newer) is None and latest_checkpoint(tmp_path) == newer
    shard = newer / "weights" / "__0_0.distcp"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])  # truncated, as by a full disk
    assert "weights/__0_0.distcp does not match its checksum" in checkpoint_problem(newer)
    assert latest_checkpoint(tmp_path) == older
    assert f"skipping checkpoint {newer}: weights/__0_0.distcp does not match" in capsys.readouterr().out
    with pytest.raises(ValueError, match="is damaged: weights/__0_0.distcp"):
        latest_checkpoint(newer)


def test_checkpoints_are_named_by_step_and_the_newest_step_is_latest(tmp_path):
    """checkpoint_000500_<time>: a higher step wins over a later time, two saves at one step keep
    both (the later is newest), names from before (Ray's timestamps) count as older, and RUN/latest
    resolves to the newest."""
    from mmtrain.training.checkpoint.store import checkpoint_name, latest_checkpoint

    task, model, optimizer, _ = _setup(_cfg())
    names = ["checkpoint_2026-12-31_00-00-00.000000", checkpoint_name(1000), checkpoint_name(500)]
    time.sleep(0.01)
    names.append(checkpoint_name(1000))  # the same step again: a resumed run that ended at once
    assert names[1].startswith("checkpoint_001000_") and names[1] != names[3]
    for name in names:
        save_checkpoint(tmp_path / name, model, optimizer, TrainState(step=1), {})
    assert latest_checkpoint(tmp_path).name == names[3]
    assert latest_checkpoint(tmp_path / "latest").name == names[3]


def test_a_checkpoint_saved_again_into_its_directory_is_intact(tmp_path):
    from mmtrain.training.checkpoint.store import checkpoint_problem

    cfg = _cfg()
    _, model, optimizer, _ = _setup(cfg)
    save_checkpoint(tmp_path / "checkpoint_000000", model, optimizer, TrainState(step=1), {})
    save_checkpoint(tmp_path / "checkpoint_000000", model, optimizer, TrainState(step=2), {})
    assert checkpoint_problem(tmp_path / "checkpoint_000000") is None
