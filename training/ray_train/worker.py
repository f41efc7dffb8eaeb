"""The Ray Train worker: one function shared by every trainer, run in each worker process.

The task (CLIP or VLM) supplies the model and the loss; this module supplies the dataset shards,
the strategy (training/engine/parallelize.py: DDP or FSDP2), checkpoints, evaluation cadence and
tracking. The driver that starts it is training/ray_train/driver.py.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray.train.v2._internal.execution import context as train_context

from mmtrain.pipelines.blend import SourceBlend
from mmtrain.training.checkpoint.store import (
    checkpoint_problem,
    load_checkpoint,
    load_config_dict,
    load_data_position,
    load_tracking_run_id,
)
from mmtrain.training.config.io import flatten, to_dict
from mmtrain.training.config.schema import ClipRunConfig, VlmRunConfig
from mmtrain.training.engine.consumption import Consumption
from mmtrain.training.engine.fetch_ahead import first_item_fetched_ahead
from mmtrain.training.engine.loop import TrainState, train
from mmtrain.training.engine.optim import build_optimizer, warmup_cosine
from mmtrain.training.engine.parallelize import Parallelized, parallelize
from mmtrain.training.engine.resume import config_changes, plan_schedule, seed_for
from mmtrain.training.ray_train.payload import WorkerPayload
from mmtrain.training.ray_train.step_hooks import (
    Checkpointer,
    DataQualityGuard,
    StepHooks,
    TrainWindow,
    Validator,
    WorkerContext,
)
from mmtrain.training.tasks.registry import trainer_of
from mmtrain.training.tracking.tracker import TRACKING_OFF, Tracker

RunConfig = ClipRunConfig | VlmRunConfig


@dataclass
class Restored:
    """What a worker takes from the checkpoint it resumes from."""

    state: TrainState
    config: dict  # the config the checkpoint was saved under
    tracking_run_id: str
    data_position: dict | None  # what the run had trained on (None: a checkpoint from before positions)


def train_worker(loop_config: dict) -> None:
    """Runs in every Ray Train worker: build, maybe restore, train, evaluate, checkpoint, report."""
    started = time.perf_counter()
    _quiet_loggers()
    payload: WorkerPayload = loop_config["payload"]
    cfg: RunConfig = payload.config
    task = trainer_of(cfg).task(cfg)
    rank, device = ray.train.get_context().get_world_rank(), ray.train.torch.get_device()

    # A fresh run has nothing to restore: its data stream starts now, so that the data actors start
    # (seconds each on a small machine) while the model builds. A resumed run's stream starts from
    # the checkpoint's step and data position, once restored.
    early_batches = None
    if ray.train.get_checkpoint() is None:
        _begin_data(payload.ledger, None, rank)
        early_batches = first_item_fetched_ahead(_train_batches(payload, 0, rank, device))
    shards_requested = _request_dataset_shards(payload, train=early_batches is None)
    built = _build(cfg, task, device, rank)
    state, consumption = built.state, Consumption()
    tracker = _open_tracker(payload, built.restored, state.step) if rank == 0 else None
    ctx = WorkerContext(cfg, task, built.model, device, rank, tracker, payload.ledger)
    hooks = StepHooks(
        ctx,
        TrainWindow(ctx, built.scheduler),
        DataQualityGuard(ctx),
        Validator(ctx, payload.eval, built.parallel.strategy),
        Checkpointer(ctx, built.optimizer, consumption, state.step),
        num_nodes=_count_nodes(),
        started=started,
    )
    shards_requested.join()
    if early_batches is None:
        _begin_data(payload.ledger, built.restored, rank)
        early_batches = _train_batches(payload, state.step, rank, device)
    batches = consumption.watch(early_batches)
    if tracker and cfg.tracking.log_figures and state.step == 0:
        batches = hooks.show_first_batch(batches)
    try:
        state = train(
            task,
            built.wrapped,
            built.optimizer,
            built.scheduler,
            state,
            batches,
            cfg.loop.max_steps,
            device,
            hooks.on_step,
            cfg.optim.grad_accum_steps,
            cfg.optim.grad_clip_norm,
            torch.bfloat16 if _use_bf16(cfg.loop.precision, device) else None,
            built.parallel.no_sync,
        )
        hooks.finish(state)
    except BaseException:
        if tracker:
            tracker.finish("FAILED")
        raise


@dataclass
class Built:
    """A worker's model, as parallelized and compiled, its optimizer and schedule, and where it starts."""

    model: torch.nn.Module  # the model itself (sharded in place under FSDP)
    wrapped: torch.nn.Module  # what the loop calls: DDP's wrapper, compiled when asked
    parallel: Parallelized
    optimizer: torch.optim.Optimizer
    scheduler: object
    state: TrainState
    restored: Restored | None


def _build(cfg: RunConfig, task, device: torch.device, rank: int) -> Built:
    torch.manual_seed(cfg.loop.seed)  # the same initial weights on every rank and every run
    model = task.build_model()
    bf16 = _use_bf16(cfg.loop.precision, device)
    parallel = parallelize(model, cfg.scaling.strategy, cfg.loop.activation_checkpointing, device, bf16)
    # After sharding: FSDP2 replaced the parameters with sharded ones, which the optimizer must hold.
    optimizer = build_optimizer(task.param_groups(model), cfg.optim, fused=device.type == "cuda")
    restored = _restore(model, optimizer, rank)
    start = restored.state if restored else TrainState()
    state, schedule_note = plan_schedule(start, cfg.loop.max_steps, cfg.optim.restart_schedule)
    scheduler = warmup_cosine(optimizer, cfg.optim, state.schedule_steps, state.schedule_start, state.step)
    # Randomness from (seed, step, rank): a resumed run draws what a run reaching this step would.
    torch.manual_seed(seed_for(cfg.loop.seed, state.step, rank))
    wrapped = torch.compile(parallel.model) if cfg.loop.compile else parallel.model
    if rank == 0 and restored:
        note = f"; {schedule_note}" if schedule_note else ""
        print(f"[mmtrain] resumed {cfg.run.name} at step {state.step} (epoch {state.epoch}){note}", flush=True)
    return Built(model, wrapped, parallel, optimizer, scheduler, state, restored)


def _quiet_loggers() -> None:
    # Ray Train logs every report at INFO with all its metrics (its logger is named by file path);
    # mmtrain prints its own progress line.
    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # "Creating initial MLflow tables"


def _request_dataset_shards(payload: WorkerPayload, train: bool) -> threading.Thread:
    """Ask for this rank's dataset shards from a thread, while the model builds: each dataset's
    coordinator is a Ray actor, a process that takes seconds to start on a small machine. Ray
    Train keeps the shards, so the later calls get these without waiting."""
    names = (["train"] if train else []) + (["eval"] if payload.eval is not None else [])
    thread = threading.Thread(
        target=lambda: [ray.train.get_dataset_shard(name) for name in names], name="mmtrain-request-shards", daemon=True
    )
    thread.start()
    return thread


def _train_batches(payload: WorkerPayload, step: int, rank: int, device: torch.device):
    """This rank's share of the run's one training stream, as tensors on the device. A generator:
    the shard is asked for at the first batch, so for a fresh run the thread that fetches that batch
    ahead also waits for Ray Train's dataset manager, not the thread that builds the model."""
    cfg = payload.config
    collate = trainer_of(payload.config).collate()  # numpy batches -> tensors (None: Ray's default)
    shuffle_seed = None if cfg.data.shuffle_seed is None else seed_for(cfg.data.shuffle_seed, step, rank)
    if payload.mix is not None:
        yield from _blended_batches(payload, collate, shuffle_seed, device)
        return
    yield from ray.train.get_dataset_shard("train").iter_torch_batches(
        batch_size=cfg.loop.batch_size_per_worker,
        drop_last=True,
        prefetch_batches=2,
        collate_fn=collate,
        # Ray copies each batch to the GPU in its prefetch thread; from pinned memory that copy is async.
        pin_memory=device.type == "cuda",
        local_shuffle_buffer_size=cfg.data.shuffle_buffer_size or None,
        local_shuffle_seed=shuffle_seed,
    )


def _blended_batches(payload: WorkerPayload, collate, shuffle_seed, device: torch.device):
    """A mixture's batches, each taking every source's share of its rows (pipelines/blend.py): Ray's
    numpy batches are regrouped here, then collated and moved to the device."""
    cfg, mix = payload.config, payload.mix
    size = cfg.loop.batch_size_per_worker
    rows = ray.train.get_dataset_shard("train").iter_batches(
        batch_size=size,
        batch_format="numpy",
        prefetch_batches=2,
        local_shuffle_buffer_size=cfg.data.shuffle_buffer_size or None,
        local_shuffle_seed=shuffle_seed,
    )
    blend = SourceBlend(np.asarray(mix.source_of), np.asarray(mix.targets, np.float64), size)
    for batch in blend(rows):
        tensors = collate(batch) if collate is not None else {k: torch.as_tensor(v) for k, v in batch.items()}
        yield {name: value.to(device, non_blocking=True) for name, value in tensors.items()}


def _begin_data(ledger, restored: Restored | None, rank: int) -> None:
    """Tell the read tasks where the run stands in its data before any rank asks for a batch: rank 0
    hands the checkpoint's data position to the ledger (the reads wait for it), then all ranks meet."""
    if rank == 0 and ledger is not None:
        ray.get(ledger.begin.remote(restored.data_position if restored else None))
    if dist.is_initialized():
        dist.barrier()


def _restore(model, optimizer, rank: int) -> Restored | None:
    """Load the checkpoint Ray Train hands this worker (a restart or a re-run), or when that one is
    damaged the newest intact one before it. The peak learning rates stay the config's, not the
    checkpoint's (the schedule scales them)."""
    checkpoint = ray.train.get_checkpoint()
    if not checkpoint:
        return None
    peaks = [group["lr"] for group in optimizer.param_groups]
    for candidate in _newest_first(checkpoint):
        with candidate.as_directory() as directory:
            directory = Path(directory)
            problem = checkpoint_problem(directory)
            if problem:
                if rank == 0:
                    print(f"[mmtrain] skipping checkpoint {candidate.path}: {problem}", flush=True)
                continue
            state = load_checkpoint(directory, model, optimizer)
            restored = Restored(
                state, load_config_dict(directory), load_tracking_run_id(directory), load_data_position(directory)
            )
        for group, peak in zip(optimizer.param_groups, peaks):
            group["initial_lr"] = peak
        return restored
    raise ValueError(
        f"no intact checkpoint beside {checkpoint.path}: start a new run (another run.name) "
        "or restore the run directory from a backup"
    )


def _newest_first(checkpoint: ray.train.Checkpoint):
    """`checkpoint`, then the older checkpoint_* directories beside it, newest first."""
    yield checkpoint
    parent, _, name = checkpoint.path.rstrip("/").rpartition("/")
    siblings = checkpoint.filesystem.get_file_info(pafs.FileSelector(parent))
    older = sorted(
        (
            info.path
            for info in siblings
            if info.type == pafs.FileType.Directory
            and info.base_name.startswith("checkpoint_")
            and info.base_name < name
        ),
        reverse=True,
    )
    for path in older:
        yield ray.train.Checkpoint(path, filesystem=checkpoint.filesystem)


def _open_tracker(payload: WorkerPayload, restored: Restored | None, step: int) -> Tracker | None:
    """Rank 0's MLflow run: the one the checkpoint's lineage logs to, else a new one. Config values
    changed on resume are recorded beside the originals (MLflow params cannot change)."""
    if payload.config.tracking.tracking_uri == TRACKING_OFF:
        return None
    cfg = payload.config
    tracker = Tracker(
        payload.config.tracking.tracking_uri,
        cfg.tracking.experiment,
        cfg.run.name,
        tags={"mmtrain.task": trainer_of(payload.config).name, **payload.source},
        parent_run_id=cfg.tracking.parent_run_id,
        resume_run_id=restored.tracking_run_id if restored else "",
    )
    config = to_dict(cfg)
    if tracker.resumed:
        tracker.log_resume_changes(step, config_changes(restored.config, config))
    tracker.log_params(flatten(config))
    return tracker


def _count_nodes() -> int:
    """How many distinct Ray nodes the training workers run on (a collective: every rank calls it)."""
    node = ray.get_runtime_context().get_node_id()
    if not dist.is_initialized():
        return 1
    nodes = [None] * dist.get_world_size()
    dist.all_gather_object(nodes, node)
    return len(set(nodes))


def _use_bf16(precision: str, device: torch.device) -> bool:
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")
