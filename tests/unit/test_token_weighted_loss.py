"""The VLM's loss is one mean over every supervised token of a step: the same rows as one batch, as
2 micro-batches, or on 2 gloo ranks under DDP or FSDP2 give the same loss and gradients (1e-5),
with a trained vision tower too. A mean of per-batch means (the old loss) weights a token by how
many tokens share its batch, and misses that by far on rows of unequal length."""

import dataclasses
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mmtrain.pipelines import contract
from mmtrain.pipelines.conversations import ConversationEncoder
from mmtrain.training.config.schema import ModuleLearningRates
from mmtrain.training.tasks.vlm import VlmTask
from tests.unit.test_vlm import _cfg, make_parts

ANSWERS = [
    "red",
    "blue",
    "a red circle beside a blue square on a white ground, and a small green triangle",
    "blue shapes of every size scattered over the picture, most of them squares and a few circles",
]
LRS = ModuleLearningRates(vision=1e-3, projector=1e-3, lm=1e-3)


def _rows(task) -> dict:
    """Four rows, two with 1-2 supervised tokens and two with many, as one batch."""
    encoder = ConversationEncoder(task.tokenizer, num_image_tokens=4, max_length=64)
    rows = [
        encoder.pad(
            encoder.encode(
                [{"from": "human", "value": "<image>\nwhat is in the picture?"}, {"from": "gpt", "value": answer}]
            )
        )
        for answer in ANSWERS
    ]
    generator = torch.Generator().manual_seed(7)
    return {
        contract.IMAGE: torch.randint(0, 255, (4, 1, 16, 16, 3), dtype=torch.uint8, generator=generator),
        contract.NUM_IMAGES: torch.ones(4, dtype=torch.int32),
        contract.INPUT_IDS: torch.tensor([r[0] for r in rows]),
        contract.ATTENTION_MASK: torch.tensor([r[1] for r in rows]),
        contract.LABELS: torch.tensor([r[2] for r in rows]),
    }


def _split(batch: dict, rows: slice) -> dict:
    return {name: values[rows] for name, values in batch.items()}


def _build(cfg):
    torch.manual_seed(0)
    task = VlmTask(cfg)
    return task, task.build_model()


def _clean(name: str) -> str:
    return name.removeprefix("module.")


def _step(task, model, micro_batches, no_sync=None) -> tuple[float, dict]:
    prepared = [task.prepare_batch(batch, torch.device("cpu")) for batch in micro_batches]
    model.zero_grad(set_to_none=True)
    loss, _ = task.forward_backward(model, prepared, lambda: torch.autocast("cpu", enabled=False), no_sync)
    grads = {
        _clean(name): (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).clone()
        for name, p in model.named_parameters()
        if p.grad is not None
    }
    return loss, grads


def _rank_main(rank: int, cfg, strategy: str, out: str) -> None:
    from mmtrain.training.engine.distributed import global_mean
    from mmtrain.training.engine.parallelize import parallelize

    dist.init_process_group("gloo", init_method=f"file://{out}/rendezvous", rank=rank, world_size=2)
    try:
        task, model = _build(cfg)
        parallel = parallelize(model, strategy, "none", torch.device("cpu"), bf16=False)
        batch = _split(_rows(task), slice(2 * rank, 2 * rank + 2))  # rank 0: the short rows
        loss, grads = _step(task, parallel.model, [batch], parallel.no_sync)
        if rank == 0:
            torch.save({"loss": float(global_mean(loss)), "grads": grads}, f"{out}/{strategy}.pt")
        else:
            global_mean(loss)
    finally:
        dist.destroy_process_group()
    # Skip interpreter teardown: after a long pytest session a native thread left in the spawned
    # process (torch's or the tokenizer's) kept it from exiting, and the test waited forever.
    os._exit(0)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root, lm = make_parts(tmp_path_factory.mktemp("token_weighted"))
    cfg = dataclasses.replace(_cfg(root, lm), stage="conversations", lrs=LRS, max_length=64)
    task, model = _build(cfg)
    batch = _rows(task)
    loss, grads = _step(task, model, [batch])
    return cfg, task, model, batch, float(loss), grads


def _assert_close(loss, grads, reference_loss, reference_grads):
    assert abs(loss - reference_loss) <= 1e-5 * max(1.0, abs(reference_loss)), (loss, reference_loss)
    assert grads.keys() == reference_grads.keys()
    assert any(name.startswith("vision.") for name in grads)  # the tower trains
    for name, grad in grads.items():
        assert torch.allclose(grad, reference_grads[name], atol=1e-5, rtol=1e-4), name


def test_two_micro_batches_equal_one_batch_and_a_mean_of_means_does_not(setup):
    cfg, task, model, batch, reference_loss, reference_grads = setup
    loss, grads = _step(task, model, [_split(batch, slice(0, 2)), _split(batch, slice(2, 4))])
    _assert_close(float(loss), grads, reference_loss, reference_grads)
    prepared = [task.prepare_batch(_split(batch, s), torch.device("cpu")) for s in (slice(0, 2), slice(2, 4))]
    counts = [int(p[contract.SUPERVISED_TOKENS]) for p in prepared]
    assert counts[1] > 5 * counts[0]  # rows of very unequal length
    mean_of_means = sum(float(task.loss(model, p)[0]) for p in prepared) / 2
    assert abs(mean_of_means - reference_loss) > 1e-2


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_gloo_ranks_equal_one_process(setup, tmp_path, strategy):
    cfg, _, _, _, reference_loss, reference_grads = setup
    mp.start_processes(_rank_main, args=(cfg, strategy, str(tmp_path)), nprocs=2, start_method="spawn")
    result = torch.load(Path(tmp_path) / f"{strategy}.pt", weights_only=True)
    _assert_close(result["loss"], result["grads"], reference_loss, reference_grads)
