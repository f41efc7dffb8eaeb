"""The training loop: any iterator of batches in, optimizer steps out. Knows nothing of Ray or MLflow.

Logging, evaluation and checkpointing happen in `on_step`, a callback the caller supplies, so the
loop runs the same in a unit test, a local run and a Ray Train worker.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Callable, ContextManager, Iterable, Protocol

import torch
from torch import nn

from mmtrain.pipelines import contract
from mmtrain.training.engine.distributed import all_reduce_sum, world


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0  # the oldest epoch not yet wholly trained on (set from the data position at checkpoints)
    # by all ranks (a resumed run on another worker count continues the count); with packed rows, whose
    # sample counts differ between ranks, rank 0's count times the world size
    samples_seen: int = 0
    # The learning-rate schedule in force: warmup + cosine over `schedule_steps` optimizer steps from
    # `schedule_start`. Saved, so a resumed run keeps its schedule when loop.max_steps changes.
    schedule_start: int = 0
    schedule_steps: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


# A fresh autocast (or no-op) context for each forward: the loop decides precision, tasks use it.
Autocast = Callable[[], ContextManager]
NoSync = Callable[[], ContextManager] | None  # DDP's no_sync, or None without DDP


class StepTask(Protocol):
    """What the loop needs of a trainer's task (training/tasks/protocol.py: the whole Task): the
    model's inputs and the loss on one step's batches."""

    def prepare_batch(self, batch: dict, device: torch.device) -> dict: ...
    def forward_backward(
        self, model: nn.Module, micro_batches: list[dict], autocast: Autocast, no_sync: NoSync
    ) -> tuple[torch.Tensor, dict]: ...
    def after_optimizer_step(self, model: nn.Module) -> None: ...
    def train_mode(self, model: nn.Module) -> None: ...


@dataclass
class StepResult:
    loss: torch.Tensor  # a detached scalar; float() it only when logging (avoids a device sync per step)
    samples: int  # this rank's samples (a packed row holds several)
    data_wait_s: float  # time spent waiting for this step's batches, every fetch included
    step_s: float
    extra: dict  # scalar tensors, like loss: read them (float()) only when logging
    tokens: torch.Tensor | None = None  # VLM: this rank's real (not padding) tokens, on the device
    token_slots: int = 0  # VLM: rows x length of this rank's batches (real tokens and padding)


def every(interval: int, step: int) -> bool:
    return interval > 0 and step % interval == 0


def train(
    task: StepTask,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    state: TrainState,
    batches: Iterable[dict],
    max_steps: int,
    device: torch.device,
    on_step: Callable[[TrainState, StepResult], bool],
    grad_accum_steps: int = 1,
    grad_clip_norm: float = 0.0,
    autocast_dtype: torch.dtype | None = None,
    no_sync: NoSync = None,
) -> TrainState:
    """Run optimizer steps until `max_steps` or the end of `batches` (one stream for the whole run:
    epochs are the data's business); `on_step` returning False stops early."""
    task.train_mode(model)

    def autocast() -> ContextManager:
        return torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()

    stream = TimedBatches(batches)
    while state.step < max_steps:
        result = _optimizer_step(
            task, model, optimizer, stream, device, grad_accum_steps, grad_clip_norm, autocast, no_sync
        )
        if result is None:  # the stream ended; a partial accumulation window is not trained on
            break
        scheduler.step()
        task.after_optimizer_step(model)
        state.step += 1
        state.samples_seen += result.samples * world()[1]  # every rank steps on a batch of the same size
        result.data_wait_s = stream.take_wait_s()
        if not on_step(state, result):
            break
    return state


class TimedBatches:
    """The run's batches, with the time spent waiting in every fetch."""

    _END = object()

    def __init__(self, iterable: Iterable):
        self._iterator = iter(iterable)
        self._wait_s = 0.0

    def next(self):
        """The next batch, or None at the end of the stream."""
        item = self._fetch()
        return None if item is self._END else item

    def take_wait_s(self) -> float:
        """Seconds waited since the last call."""
        wait, self._wait_s = self._wait_s, 0.0
        return wait

    def _fetch(self):
        start = time.perf_counter()
        item = next(self._iterator, self._END)
        self._wait_s += time.perf_counter() - start
        return item


def _optimizer_step(
    task,
    model,
    optimizer,
    batches: TimedBatches,
    device,
    grad_accum_steps,
    grad_clip_norm,
    autocast: Autocast,
    no_sync: NoSync,
) -> StepResult | None:
    start = time.perf_counter()
    raw = []
    for _ in range(grad_accum_steps):
        batch = batches.next()
        if batch is None:
            return None
        raw.append(batch)
    # Everything stays on the device: a .item() or a host->device copy here would make the host wait
    # for the GPU every step, and the GPU would then idle while the host queues the next step.
    micro_batches = [task.prepare_batch(batch, device) for batch in raw]
    optimizer.zero_grad(set_to_none=True)
    loss, extra = task.forward_backward(model, micro_batches, autocast, no_sync)
    if grad_clip_norm > 0:
        extra["grad_norm"] = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip_norm).detach()
    optimizer.step()
    samples = sum(_samples_in(batch) for batch in raw)
    result = StepResult(loss.detach(), samples, 0.0, time.perf_counter() - start, extra)
    if contract.TOKENS in raw[0]:  # summed on the device; read only when logging
        result.tokens = sum(batch[contract.TOKENS] for batch in raw)
        result.token_slots = sum(batch[contract.INPUT_IDS].numel() for batch in raw)
    return result


def _samples_in(batch: dict) -> int:
    """A batch's samples: its positions when it has them (a packed row holds several; collation
    keeps only real ones, so the count is a shape the host knows), else its rows."""
    column = batch.get(contract.POSITION)
    return len(column) if column is not None else len(next(iter(batch.values())))


def accumulate_token_weighted(
    loss_sum_fn,
    model: nn.Module,
    micro_batches: list[dict],
    counts: list[torch.Tensor],
    autocast: Autocast,
    no_sync: NoSync,
) -> tuple[torch.Tensor, dict]:
    """Backward through each micro-batch's summed loss over the step's global unit count (every
    micro-batch, every rank), so the gradient is that of one mean over all units however they fall
    into micro-batches and ranks: a mean of per-batch means weights a unit by its batch's size.
    `counts` are device scalars made on the host at collation; their all-reduce runs on the device,
    so nothing here waits for it. DDP and FSDP average gradients over ranks: each rank's loss is
    scaled by the rank count to undo that. Returns this rank's scaled loss, whose mean over ranks
    (global_mean, as the worker logs it) is the global per-unit mean."""
    total = all_reduce_sum(torch.stack(counts).sum().float())
    scale = world()[1] / total.clamp_min(1.0)
    loss, extra, count = None, {}, len(micro_batches)
    for index, batch in enumerate(micro_batches):
        last = index == count - 1
        with nullcontext() if last or no_sync is None else no_sync():
            with autocast():
                loss_sum, extra = loss_sum_fn(model, batch)
            (loss_sum * scale).backward()
        share = loss_sum.detach() * scale
        loss = share if loss is None else loss + share
    return loss, extra


def accumulate_independently(
    loss_fn, model: nn.Module, micro_batches: list[dict], autocast: Autocast, no_sync: NoSync
) -> tuple[torch.Tensor, dict]:
    """Backward through each micro-batch's own loss, scaled so the gradients are their mean; the
    gradient all-reduce runs on the last only. Right for losses that are means over samples
    (the VLM's); a contrastive loss needs every micro-batch's negatives (ClipTask's override)."""
    count, total, extra = len(micro_batches), None, {}
    for index, batch in enumerate(micro_batches):
        last = index == count - 1
        with nullcontext() if last or no_sync is None else no_sync():
            with autocast():
                loss, extra = loss_fn(model, batch)
            (loss / count).backward()
        share = loss.detach() / count
        total = share if total is None else total + share
    return total, extra
