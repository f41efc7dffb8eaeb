"""Run as `python -m tests.unit.distributed_accum_check KIND OUT`: 2 gloo processes train the CLIP
task's step with DDP, once on one batch of 2B rows per rank and once on 2 micro-batches of B rows
(feature-cached accumulation); rank 0 saves both gradients, and the global mean of the two ranks'
different losses. A separate interpreter keeps the process group away from the test process."""

import dataclasses
import os
from contextlib import nullcontext

import torch
import torch.distributed as dist
from torch import nn

from mmtrain.training.engine.distributed import global_mean
from tests.unit.distributed_loss_check import spawn_two


def task_and_model(kind):
    from mmtrain.training.tasks.clip import ClipTask
    from tests.unit.test_loop_and_checkpoint import _cfg

    cfg = _cfg()
    cfg = dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, kind=kind))
    torch.manual_seed(0)
    task = ClipTask(cfg)
    return task, task.build_model()


def rank_batches(rank):
    """Rank `rank`'s two micro-batches of 8 rows (different rows on each rank)."""
    from tests.unit.test_loop_and_checkpoint import _batches

    return [next(iter(_batches(10 + 2 * rank + index))) for index in range(2)]


def grads_after(kind, micro_batches):
    task, model = task_and_model(kind)
    ddp = nn.parallel.DistributedDataParallel(model)
    prepared = [task.prepare_batch(batch, torch.device("cpu")) for batch in micro_batches]
    loss, _ = task.forward_backward(ddp, prepared, nullcontext, ddp.no_sync)
    return loss, {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def worker(rank, kind, port, out):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    halves = rank_batches(rank)
    whole = {key: torch.cat([half[key] for half in halves]) for key in halves[0]}
    loss_whole, grads_whole = grads_after(kind, [whole])
    loss_accum, grads_accum = grads_after(kind, halves)
    local = torch.tensor(float(rank + 1))  # 1 on rank 0, 2 on rank 1
    mean = global_mean(local)
    if rank == 0:
        torch.save(
            {
                "loss_whole": loss_whole,
                "loss_accum": loss_accum,
                "grads_whole": grads_whole,
                "grads_accum": grads_accum,
                "global_mean": mean,
            },
            out,
        )
    dist.barrier()
    os._exit(0)  # see distributed_loss_check: gloo teardown with DDP reducers alive can hang


if __name__ == "__main__":
    spawn_two(worker)
