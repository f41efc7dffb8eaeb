"""The training loop: any iterator of batches in, optimizer steps out. Knows nothing of Ray or MLflow.

Logging, evaluation and checkpointing happen in `on_step`, a callback the caller supplies, so the
loop runs the same in a unit test, a local run and a Ray Train worker.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Iterator, Protocol

import torch
from torch import nn


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    samples_seen: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


class Task(Protocol):
    """What differs between trainers (CLIP, VLM): the model and the loss on one batch."""

    def prepare_batch(self, batch: dict, device: torch.device) -> dict: ...
    def loss(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]: ...
    def after_optimizer_step(self, model: nn.Module) -> None: ...
    def train_mode(self, model: nn.Module) -> None: ...


@dataclass
class StepResult:
    loss: torch.Tensor  # a detached scalar; float() it only when logging (avoids a device sync per step)
    samples: int
    data_wait_s: float
    step_s: float
    extra: dict  # scalar tensors, like loss: read them (float()) only when logging


def every(interval: int, step: int) -> bool:
    return interval > 0 and step % interval == 0


def train(task: Task, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler,
          state: TrainState, epoch_batches: Callable[[int], Iterable[dict]], max_steps: int,
          device: torch.device, on_step: Callable[[TrainState, StepResult], bool],
          grad_accum_steps: int = 1, grad_clip_norm: float = 0.0,
          autocast_dtype: torch.dtype | None = None, no_sync=None) -> TrainState:
    """Run optimizer steps until `max_steps`; `on_step` returning False stops early."""
    task.train_mode(model)
    while state.step < max_steps:
        batches = _Peekable(epoch_batches(state.epoch))
        while state.step < max_steps:
            result = _optimizer_step(task, model, optimizer, batches, device, grad_accum_steps,
                                     grad_clip_norm, autocast_dtype, no_sync)
            if result is None:  # the epoch ended inside an accumulation window
                state.epoch += 1
                break
            scheduler.step()
            task.after_optimizer_step(model)
            state.step += 1
            state.samples_seen += result.samples
            # Learn that the epoch is over before on_step, so a checkpoint records the next epoch.
            epoch_done = state.step < max_steps and batches.exhausted()
            state.epoch += epoch_done
            if not on_step(state, result):
                return state
            if epoch_done:
                break
    return state


class _Peekable:
    """An iterator that can tell whether it has another item (fetching it early)."""

    _EMPTY = object()

    def __init__(self, iterable: Iterable):
        self._iterator = iter(iterable)
        self._next = self._EMPTY

    def __iter__(self):
        return self

    def __next__(self):
        if self._next is not self._EMPTY:
            item, self._next = self._next, self._EMPTY
            return item
        return next(self._iterator)

    def exhausted(self) -> bool:
        if self._next is self._EMPTY:
            self._next = next(self._iterator, self._EMPTY)
        return self._next is self._EMPTY


def _optimizer_step(task, model, optimizer, batches: Iterator[dict], device, grad_accum_steps,
                    grad_clip_norm, autocast_dtype, no_sync) -> StepResult | None:
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    # Everything stays on the device: a .item() or a host->device copy here would make the host wait
    # for the GPU every step, and the GPU would then idle while the host queues the next step.
    total_loss, samples, wait, extra = None, 0, 0.0, {}
    for micro in range(grad_accum_steps):
        fetch_start = time.perf_counter()
        batch = next(batches, None)
        wait += time.perf_counter() - fetch_start
        if batch is None:
            return None
        batch = task.prepare_batch(batch, device)
        last = micro == grad_accum_steps - 1
        # Skip the gradient all-reduce on all but the last micro-batch.
        sync = nullcontext() if last or no_sync is None else no_sync()
        autocast = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype
                    else nullcontext())
        with sync:
            with autocast:
                loss, extra = task.loss(model, batch)
            (loss / grad_accum_steps).backward()
        micro_loss = loss.detach() / grad_accum_steps
        total_loss = micro_loss if total_loss is None else total_loss + micro_loss
        samples += len(next(iter(batch.values())))
    if grad_clip_norm > 0:
        extra["grad_norm"] = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip_norm).detach()
    optimizer.step()
    return StepResult(total_loss, samples, wait, time.perf_counter() - start, extra)
