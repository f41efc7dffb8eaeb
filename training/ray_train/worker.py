"""The Ray Train worker: one function shared by every trainer, run in each worker process.

The task (CLIP or VLM) supplies the model and the loss; this module supplies the dataset shards,
the strategy (training/engine/parallelize.py: DDP or FSDP2), checkpoints, evaluation cadence and
tracking. The driver that starts it is training/ray_train/driver.py.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from training.config.io import flatten, to_dict
from pipelines import contract
from pipelines.bad_samples import TooManyBadSamples
from pipelines.ledger import check_bad_fraction
from training.checkpoint.store import (
    checkpoint_problem,
    load_checkpoint,
    load_config_dict,
    load_data_position,
    load_tracking_run_id,
    save_checkpoint,
)
from training.config.schema import ClipRunConfig, VlmRunConfig
from training.engine.consumption import Consumption
from training.engine.distributed import full_tensor, global_mean
from training.engine.fetch_ahead import first_item_fetched_ahead
from training.engine.loop import StepResult, TrainState, every, train
from training.config.metric_names import LOSS, TRAIN, TRAIN_DATA, VAL, as_train, as_val, is_val
from training.engine.optim import build_optimizer, warmup_cosine
from training.engine.parallelize import full_parameters, parallelize
from training.tracking.progress import Progress
from training.ray_train.payload import WorkerPayload
from training.tasks.protocol import EvalAssets, Evaluation
from training.engine.resume import config_changes, plan_schedule, seed_for
from training.tracking.tracker import TRACKING_OFF, Tracker, log_artifacts_to_run
from training.tasks.registry import trainer_of

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
    # Ray Train logs every report at INFO with all its metrics (its logger is named by file path);
    # mmtrain prints its own progress line.
    from ray.train.v2._internal.execution import context as train_context

    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # "Creating initial MLflow tables"
    payload: WorkerPayload = loop_config["payload"]
    cfg: RunConfig = payload.config
    task = trainer_of(cfg).task(cfg)
    rank = ray.train.get_context().get_world_rank()
    device = ray.train.torch.get_device()

    # A fresh run has nothing to restore: its data stream starts now, so that the data actors start
    # (seconds each on a small machine) while the model builds. A resumed run's stream starts from
    # the checkpoint's step and data position, once restored.
    early_batches = None
    if ray.train.get_checkpoint() is None:
        _begin_data(payload.ledger, None, rank)
        early_batches = first_item_fetched_ahead(_train_batches(payload, 0, rank, device))
    shards_requested = _request_dataset_shards(payload, train=early_batches is None)
    torch.manual_seed(cfg.loop.seed)  # the same initial weights on every rank and every run
    model = task.build_model()
    parallel = parallelize(
        model, cfg.scaling.strategy, cfg.loop.activation_checkpointing, device, _use_bf16(cfg.loop.precision, device)
    )
    # After sharding: FSDP2 replaced the parameters with sharded ones, which the optimizer must hold.
    optimizer = build_optimizer(task.param_groups(model), cfg.optim, fused=device.type == "cuda")
    restored = _restore(model, optimizer, rank)
    state, schedule_note = plan_schedule(
        restored.state if restored else TrainState(), cfg.loop.max_steps, cfg.optim.restart_schedule
    )
    scheduler = warmup_cosine(optimizer, cfg.optim, state.schedule_steps, state.schedule_start, state.step)
    # Randomness from (seed, step, rank): a resumed run draws what a run reaching this step would.
    torch.manual_seed(seed_for(cfg.loop.seed, state.step, rank))
    wrapped = parallel.model
    if cfg.loop.compile:
        wrapped = torch.compile(wrapped)

    tracker = _open_tracker(payload, restored, state.step) if rank == 0 else None
    if rank == 0 and restored:
        print(
            f"[mmtrain] resumed {cfg.run.name} at step {state.step} (epoch {state.epoch})"
            + (f"; {schedule_note}" if schedule_note else ""),
            flush=True,
        )

    consumption = Consumption()
    hooks = _Hooks(
        cfg,
        task,
        model,
        optimizer,
        scheduler,
        device,
        rank,
        tracker,
        payload,
        consumption,
        state.step,
        parallel.strategy,
    )
    shards_requested.join()
    if early_batches is None:
        _begin_data(payload.ledger, restored, rank)
        early_batches = _train_batches(payload, state.step, rank, device)
    batches = consumption.watch(early_batches)
    if tracker and cfg.tracking.log_figures and state.step == 0:
        batches = hooks.show_first_batch(batches)

    autocast = torch.bfloat16 if _use_bf16(cfg.loop.precision, device) else None
    try:
        state = train(
            task,
            wrapped,
            optimizer,
            scheduler,
            state,
            batches,
            cfg.loop.max_steps,
            device,
            hooks.on_step,
            cfg.optim.grad_accum_steps,
            cfg.optim.grad_clip_norm,
            autocast,
            parallel.no_sync,
        )
        hooks.finish(state)
    except BaseException:
        if tracker:
            tracker.finish("FAILED")
        raise


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
    yield from ray.train.get_dataset_shard("train").iter_torch_batches(
        batch_size=cfg.loop.batch_size_per_worker,
        drop_last=True,
        prefetch_batches=2,
        collate_fn=collate,
        # Ray copies each batch to the GPU in its prefetch thread; from pinned memory that copy is async.
        pin_memory=device.type == "cuda",
        local_shuffle_buffer_size=cfg.data.shuffle_buffer_size or None,
        local_shuffle_seed=None if cfg.data.shuffle_seed is None else seed_for(cfg.data.shuffle_seed, step, rank),
    )


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
    import pyarrow.fs as pafs

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
        tags={"mmtrain.task": trainer_of(payload.config).name},
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


class _Hooks:
    """Logging, evaluation and checkpoint cadence around the loop: small predicates on the step."""

    def __init__(
        self,
        cfg: RunConfig,
        task,
        model,
        optimizer,
        scheduler,
        device,
        rank,
        tracker,
        payload,
        consumption: Consumption,
        start_step: int,
        strategy: str,
    ):
        self.cfg, self.task, self.model, self.strategy = cfg, task, model, strategy
        self.tracking_uri = payload.config.tracking.tracking_uri
        self.consumption, self.positions_taken_at = consumption, start_step
        self.optimizer, self.scheduler, self.device, self.rank = optimizer, scheduler, device, rank
        self.tracker, self.ledger = tracker, payload.ledger
        self.eval_assets: EvalAssets | None = payload.eval
        self.window_start, self.window_samples, self.window_wait, self.window_steps = time.perf_counter(), 0, 0.0, 0
        self.last_metrics: dict = {}
        self.last_result: StepResult | None = None
        self.data_error: str | None = None
        self.created = time.perf_counter()
        self.progress = Progress()
        self.num_nodes = _count_nodes()

    def show_first_batch(self, batches):
        """Pass batches through; the first one is also logged as a picture of augmented samples."""
        from training.tracking.figures import sample_grid

        for index, batch in enumerate(batches):
            if index == 0:
                shown = {key: value if key in contract.PER_BATCH else value[:16] for key, value in batch.items()}
                images = shown[contract.IMAGE].cpu().numpy()
                self.tracker.log_figure(sample_grid(images, self.task.captions(shown)), "figures/train_samples.png")
            yield batch

    def on_step(self, state: TrainState, result: StepResult) -> bool:
        loop = self.cfg.loop
        self.last_result = result
        self.window_samples += result.samples
        self.window_wait += result.data_wait_s
        self.window_steps += 1
        final = state.step >= loop.max_steps
        metrics = {}
        if self.window_steps == 1 and TRAIN + "time_to_first_step_s" not in self.last_metrics:
            metrics[TRAIN + "time_to_first_step_s"] = time.perf_counter() - self.created  # data start-up included
            metrics["num_nodes"] = self.num_nodes
        if every(loop.log_every, state.step) or final:
            metrics.update(self._train_metrics(state, result))
            if not self._data_quality_ok():
                self._report(state, metrics, checkpoint=False)
                return False
        if final:  # finish() reports these with the final evaluation and checkpoint, in one report
            self.last_metrics.update(metrics)
            return True
        if every(loop.eval_every, state.step):
            metrics.update(self.evaluate(state.step))
        checkpoint = every(loop.checkpoint_every, state.step)
        if checkpoint or any(is_val(key) for key in metrics):  # what Ray Train or a sweep acts on
            local_copy = self._report(state, metrics, checkpoint)
            if local_copy:  # report() has persisted it to run storage
                shutil.rmtree(local_copy, ignore_errors=True)
        elif metrics:
            self._log(state, metrics)
        return True

    def finish(self, state: TrainState) -> None:
        if self.data_error:
            if self.tracker:
                self.tracker.finish("FAILED")
            return
        metrics = dict(self.last_metrics)
        if self.window_steps:  # the stream ended between log steps: the last window's figures
            metrics.update(self._train_metrics(state, self.last_result))
        metrics.update(self.evaluate(state.step))
        if self.rank == 0 and self.ledger is not None:  # bad-sample counts reach the run, by reason
            summary = ray.get(self.ledger.summary.remote())
            metrics[TRAIN_DATA + "good_samples"] = summary["good"]
            metrics[TRAIN_DATA + "pool_actors_started"] = summary["actors_started"]
            metrics.update({f"{TRAIN_DATA}bad/{reason}": count for reason, count in summary["bad"].items()})
        # The MLflow run is complete before the last report: a sweep's scheduler may stop the
        # trial as soon as it sees that report, and a killed trial cannot end its run.
        local_copy = self._report(state, metrics, checkpoint=True, before_report=self._finish_tracking)
        if local_copy:
            shutil.rmtree(local_copy, ignore_errors=True)

    def _finish_tracking(self, checkpoint_dir: Path) -> None:
        """The final checkpoint into the MLflow run (each rank adds the shards it wrote), registered
        in its standard format, and the run ended. Every rank calls it."""
        run_id = [self.tracker.run_id if self.tracker else ""]
        if dist.is_initialized():
            dist.broadcast_object_list(run_id, src=0)
        if self.tracker:
            self.tracker.log_artifacts(checkpoint_dir, "checkpoint")
        elif run_id[0]:
            log_artifacts_to_run(self.tracking_uri, run_id[0], checkpoint_dir, "checkpoint")
        if dist.is_initialized():
            dist.barrier()  # every rank's shards are in the run
        if self.tracker:
            if self.cfg.tracking.register_model:
                self._register(checkpoint_dir)
            self.tracker.finish("FINISHED")

    def _register(self, checkpoint_dir: Path) -> None:
        """The final checkpoint in its standard format, as a new version of the registered model
        (read back from the run's artifacts when other ranks wrote shards of it)."""
        from training.tasks.export import export_checkpoint

        with tempfile.TemporaryDirectory(prefix="mmtrain-export-") as scratch:
            if dist.is_initialized() and dist.get_world_size() > 1:
                checkpoint_dir = self.tracker.download_artifacts("checkpoint", Path(scratch) / "checkpoint")
            export_dir = Path(scratch) / "export"
            export_checkpoint(checkpoint_dir, export_dir)
            version = self.tracker.register_model(self.cfg.tracking.register_model, export_dir)
        print(f"[mmtrain] registered {self.cfg.tracking.register_model} version {version}", flush=True)

    def _train_metrics(self, state: TrainState, result: StepResult) -> dict:
        elapsed = time.perf_counter() - self.window_start
        world = dist.get_world_size() if dist.is_initialized() else 1
        metrics = as_train(
            {
                "loss": float(global_mean(result.loss)),  # every rank's batch, not rank 0's slice
                "lr": self.scheduler.get_last_lr()[0],
                "samples_per_s": self.window_samples * world / max(elapsed, 1e-9),
                "data_wait_fraction": self.window_wait / max(elapsed, 1e-9),
                "samples_seen": state.samples_seen,
                **self.task.step_metrics(self.model),
                **{name: float(full_tensor(value)) for name, value in result.extra.items()},
            }
        )
        metrics["epoch"] = state.epoch  # a fact about the run (an MLflow tag), not a training curve
        self.window_start, self.window_samples, self.window_wait, self.window_steps = time.perf_counter(), 0, 0.0, 0
        return metrics

    def _data_quality_ok(self) -> bool:
        """Rank 0 reads the ledger; every rank learns the verdict, so all stop together."""
        verdict = torch.zeros(1, device=self.device)  # NCCL (GPU workers) moves device tensors only
        if self.rank == 0 and self.ledger is not None:
            try:
                check_bad_fraction(
                    ray.get(self.ledger.summary.remote()),
                    self.cfg.data.max_bad_fraction,
                    self.cfg.data.min_samples_for_bad_check,
                )
            except TooManyBadSamples as err:
                self.data_error = str(err)
                verdict[0] = 1
        if dist.is_initialized():
            dist.broadcast(verdict, src=0)
        stop = bool(verdict[0])
        if stop and self.data_error is None:
            self.data_error = "stopped by rank 0: too many bad samples"
        return not stop

    def evaluate(self, step: int) -> dict:
        if self.eval_assets is None:
            return {}
        self.model.eval()
        batches = ray.train.get_dataset_shard("eval").iter_batches(
            batch_size=self.cfg.eval.batch_size, batch_format="numpy"
        )
        with full_parameters(self.model, self.strategy):  # ranks may run different numbers of forwards
            evaluation = self.task.evaluate(self.model, batches, self.device, self.eval_assets)
        self.task.train_mode(self.model)
        if self.tracker:
            self._log_eval_artifacts(step, evaluation)
        return as_val(evaluation.metrics)

    def _log_eval_artifacts(self, step: int, evaluation: Evaluation) -> None:
        from training.tracking.figures import heatmap

        if evaluation.table:  # appended at each evaluation; the step column tells them apart
            self.tracker.log_table([{"step": step, **row} for row in evaluation.table], "eval_generations.json")
        if not self.cfg.tracking.log_figures:
            return
        for name, spec in evaluation.pictures.items():
            figure = heatmap(
                spec.matrix,
                spec.row_labels,
                spec.column_labels,
                f"{spec.title}, step {step}",
                spec.xlabel,
                spec.ylabel,
                annotate=spec.matrix.shape[0] <= 16,
            )
            self.tracker.log_figure_at_step(
                figure, f"figures/{name}_step{step:06d}.png", VAL + name, step
            )  # the key puts it in the UI's val section

    def _data_position(self, state: TrainState) -> dict | None:
        """Every rank's trained-on positions since the last checkpoint, gathered into the ledger;
        rank 0 gets the run's data position to save (None elsewhere). A collective: all ranks call it."""
        batches = (state.step - self.positions_taken_at) * self.cfg.optim.grad_accum_steps
        self.positions_taken_at = state.step
        mine = self.consumption.take(batches)
        gathered = [mine]
        if dist.is_initialized():
            gathered = [None] * dist.get_world_size() if self.rank == 0 else None
            dist.gather_object(mine, gathered, dst=0)
        if self.rank != 0 or self.ledger is None:
            return None
        # Wait for it: a call whose argument is in the object store may otherwise run after the next.
        ray.get(self.ledger.consume.remote(np.concatenate(gathered)))
        position, state.epoch = ray.get([self.ledger.position.remote(), self.ledger.epoch_in_progress.remote()])
        return position

    def _log(self, state: TrainState, metrics: dict) -> dict:
        """Metrics to MLflow and the progress line to the console, from the worker itself: a Ray
        Train report is for checkpoints and what a sweep decides on. Each report waits until Train's
        controller has taken the previous one, which it polls for every 2 s by default, so a
        report per log step held a fast loop to that pace."""
        metrics = {**metrics, "step": state.step, **({"epoch": state.epoch} if "epoch" in metrics else {})}
        if self.data_error:
            metrics["data_error"] = self.data_error
        self.last_metrics.update({k: v for k, v in metrics.items() if not is_val(k)})
        if self.tracker:
            self.tracker.log_metrics(metrics, state.step)
        if self.rank == 0 and any(k == LOSS or is_val(k) for k in metrics):
            print(self.progress.line(state.step, self.cfg.loop.max_steps, metrics), flush=True)
        return metrics

    def _report(self, state: TrainState, metrics: dict, checkpoint: bool, before_report=None):
        """ray.train.report on every rank (it is a barrier). With a checkpoint, every rank writes its
        part into a local directory, attaches it and returns it (to delete once persisted);
        `before_report` gets it on every rank once written."""
        position = self._data_position(state) if checkpoint else None  # also brings state.epoch up to date
        metrics = self._log(state, metrics)
        if not checkpoint:
            ray.train.report(metrics, checkpoint=None)
            return None
        # Every rank writes its shards into a directory of its own; Ray Train merges them in storage.
        directory = Path(tempfile.mkdtemp(prefix="mmtrain-ckpt-"))
        save_checkpoint(
            directory,
            self.model,
            self.optimizer,
            state,
            to_dict(self.cfg),
            self.tracker.run_id if self.tracker else "",
            position,
            self.task.frozen_sources(),
        )
        if before_report:
            before_report(directory)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(directory)))
        return directory
