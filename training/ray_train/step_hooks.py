"""What happens around the loop's steps in a Ray Train worker, one concern per class: the window of
training metrics, the bad-data guard, the validator, the checkpointer (which reports to Ray Train
and ends the MLflow run), and StepHooks, the cadence that calls them (small predicates on the
step, as torchtitan's trainer names its parts)."""

from __future__ import annotations

import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray
import ray.train
import torch
import torch.distributed as dist

from mmtrain.pipelines import contract
from mmtrain.pipelines.bad_samples import TooManyBadSamples
from mmtrain.pipelines.ledger import check_bad_fraction
from mmtrain.training.checkpoint.store import checkpoint_name, save_checkpoint
from mmtrain.training.config.io import to_dict
from mmtrain.training.config.metric_names import LOSS, OVERHEAD, TRAIN, TRAIN_DATA, VAL, as_train, as_val, is_val
from mmtrain.training.config.schema import ClipRunConfig, VlmRunConfig
from mmtrain.training.engine.consumption import Consumption
from mmtrain.training.engine.distributed import all_reduce_sum, full_tensor, global_mean
from mmtrain.training.engine.loop import StepResult, TrainState, every
from mmtrain.training.engine.parallelize import full_parameters
from mmtrain.training.tasks.protocol import EvalAssets, Evaluation
from mmtrain.training.tracking.progress import Progress
from mmtrain.training.tracking.tracker import Tracker, log_artifacts_to_run

RunConfig = ClipRunConfig | VlmRunConfig


class PhaseClock:
    """Seconds a worker spends in each phase outside the training step: what `overhead/` reports."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(phase, time.perf_counter() - start)

    def add(self, phase: str, seconds: float) -> None:
        self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds

    def total(self) -> float:
        return sum(self.seconds.values())


@dataclass
class WorkerContext:
    """What every part of a worker's step hooks shares."""

    cfg: RunConfig
    task: object  # training/tasks/protocol.py: Task
    model: torch.nn.Module
    device: torch.device
    rank: int
    tracker: Tracker | None  # rank 0's MLflow run; None elsewhere or with tracking off
    ledger: object  # the SampleLedger actor (None in tests without one)


class TrainWindow:
    """The training metrics of the steps since the last log: loss, lr, throughput, data wait, and for
    the VLM tokens/s and the padding fraction."""

    def __init__(self, ctx: WorkerContext, scheduler):
        self.ctx, self.scheduler = ctx, scheduler
        self._restart()

    def _restart(self) -> None:
        self.start, self.samples, self.wait_s, self.steps = time.perf_counter(), 0, 0.0, 0
        self.tokens, self.token_slots = None, 0  # tokens: summed on the device, read when logging

    def add(self, result: StepResult) -> None:
        self.samples += result.samples
        self.wait_s += result.data_wait_s
        self.steps += 1
        if result.tokens is not None:
            self.tokens = result.tokens if self.tokens is None else self.tokens + result.tokens
            self.token_slots += result.token_slots

    def _throughput(self, elapsed: float) -> dict:
        """Every rank's samples (and tokens) over the window: ranks' packed rows hold different counts."""
        device = self.ctx.device
        tokens = self.tokens.float() if self.tokens is not None else torch.zeros((), device=device)
        host = torch.tensor([float(self.samples), float(self.token_slots)], device=device)
        totals = all_reduce_sum(torch.cat([host, tokens.reshape(1).to(device)]))
        samples, slots, tokens = totals.tolist()
        metrics = {"samples_per_s": samples / max(elapsed, 1e-9)}
        if self.tokens is not None:
            metrics["tokens_per_s"] = tokens / max(elapsed, 1e-9)
            metrics["padding_fraction"] = 1 - tokens / max(slots, 1)
        return metrics

    def metrics(self, state: TrainState, result: StepResult) -> dict:
        """The window's metrics; a new window starts."""
        elapsed = time.perf_counter() - self.start
        metrics = as_train(
            {
                "loss": float(global_mean(result.loss)),  # every rank's batch, not rank 0's slice
                "lr": self.scheduler.get_last_lr()[0],
                **self._throughput(elapsed),
                "data_wait_fraction": self.wait_s / max(elapsed, 1e-9),
                "samples_seen": state.samples_seen,
                **self.ctx.task.step_metrics(self.ctx.model),
                **{name: float(full_tensor(value)) for name, value in result.extra.items()},
            }
        )
        metrics["epoch"] = state.epoch  # a fact about the run (an MLflow tag), not a training curve
        self._restart()
        return metrics


class DataQualityGuard:
    """Stops every rank together once more samples are bad than data.max_bad_fraction allows."""

    def __init__(self, ctx: WorkerContext):
        self.ctx = ctx
        self.error: str | None = None

    def ok(self) -> bool:
        """Rank 0 reads the ledger; every rank learns the verdict (a collective)."""
        verdict = torch.zeros(1, device=self.ctx.device)  # NCCL (GPU workers) moves device tensors only
        data = self.ctx.cfg.data
        if self.ctx.rank == 0 and self.ctx.ledger is not None:
            try:
                check_bad_fraction(
                    ray.get(self.ctx.ledger.summary.remote()), data.max_bad_fraction, data.min_samples_for_bad_check
                )
            except TooManyBadSamples as err:
                self.error = str(err)
                verdict[0] = 1
        if dist.is_initialized():
            dist.broadcast(verdict, src=0)
        stop = bool(verdict[0])
        if stop and self.error is None:
            self.error = "stopped by rank 0: too many bad samples"
        return not stop


class Validator:
    """The held-out evaluation, its table and pictures logged to the run."""

    def __init__(self, ctx: WorkerContext, assets: EvalAssets | None, strategy: str):
        self.ctx, self.assets, self.strategy = ctx, assets, strategy

    def should_validate(self, step: int) -> bool:
        return every(self.ctx.cfg.loop.eval_every, step)

    def evaluate(self, step: int) -> dict:
        """val/ metrics on every rank's share of the eval data ({} without eval data)."""
        if self.assets is None:
            return {}
        ctx = self.ctx
        ctx.model.eval()
        batches = ray.train.get_dataset_shard("eval").iter_batches(
            batch_size=ctx.cfg.eval.batch_size, batch_format="numpy"
        )
        with full_parameters(ctx.model, self.strategy):  # ranks may run different numbers of forwards
            evaluation = ctx.task.evaluate(ctx.model, batches, ctx.device, self.assets)
        ctx.task.train_mode(ctx.model)
        if ctx.tracker:
            self._log_artifacts(step, evaluation)
        return as_val(evaluation.metrics)

    def _log_artifacts(self, step: int, evaluation: Evaluation) -> None:
        from mmtrain.training.tracking.figures import heatmap  # matplotlib: only where figures are drawn

        tracker = self.ctx.tracker
        if evaluation.table:  # appended at each evaluation; the step column tells them apart
            tracker.log_table([{"step": step, **row} for row in evaluation.table], "eval_generations.json")
        if not self.ctx.cfg.tracking.log_figures:
            return
        for name, spec in evaluation.pictures.items():
            annotate = spec.matrix.shape[0] <= 16
            title = f"{spec.title}, step {step}"
            figure = heatmap(
                spec.matrix, spec.row_labels, spec.column_labels, title, spec.xlabel, spec.ylabel, annotate
            )
            # the key puts it in the UI's val section
            tracker.log_figure_at_step(figure, f"figures/{name}_step{step:06d}.png", VAL + name, step)


class Checkpointer:
    """Checkpoints with the run's data position, reported to Ray Train; the final one also into
    the MLflow run (and, if asked, registered), which then ends."""

    def __init__(self, ctx: WorkerContext, optimizer, consumption: Consumption, start_step: int):
        self.ctx, self.optimizer = ctx, optimizer
        self.consumption, self.positions_taken_at = consumption, start_step
        self.clock = PhaseClock()  # StepHooks reads it

    def should_checkpoint(self, step: int) -> bool:
        return every(self.ctx.cfg.loop.checkpoint_every, step)

    def report(
        self, state: TrainState, metrics: dict, checkpoint: bool, position: dict | None, before_report=None
    ) -> None:
        """ray.train.report on every rank (it is a barrier). With a checkpoint (and the data
        position, data_position()), every rank writes its part into a local directory of its own
        (Ray Train merges them in storage), deleted once persisted; `before_report` gets it on every
        rank once written."""
        if not checkpoint:
            with self.clock("report"):
                ray.train.report(metrics, checkpoint=None)
            return
        ctx = self.ctx
        directory = Path(tempfile.mkdtemp(prefix="mmtrain-ckpt-"))
        run_id = ctx.tracker.run_id if ctx.tracker else ""
        frozen = ctx.task.frozen_sources()
        with self.clock("checkpoint_save"):
            save_checkpoint(directory, ctx.model, self.optimizer, state, to_dict(ctx.cfg), run_id, position, frozen)
        if before_report:
            with self.clock("final_tracking"):
                before_report(directory)
        name = checkpoint_name(state.step) if ctx.rank == 0 else None
        if dist.is_initialized():  # one name on every rank: Ray Train merges their parts under it
            shared = [name]
            dist.broadcast_object_list(shared, src=0)
            name = shared[0]
        saved = ray.train.Checkpoint.from_directory(str(directory))
        with self.clock("report"):  # a barrier, and Ray Train persisting this rank's part
            ray.train.report(metrics, checkpoint=saved, checkpoint_dir_name=name)
        shutil.rmtree(directory, ignore_errors=True)

    def data_position(self, state: TrainState) -> dict | None:
        """Every rank's trained-on positions since the last checkpoint, gathered into the ledger;
        rank 0 gets the run's data position to save (None elsewhere), and state.epoch is brought up
        to date. A collective: all ranks call it."""
        ctx = self.ctx
        batches = (state.step - self.positions_taken_at) * ctx.cfg.optim.grad_accum_steps
        self.positions_taken_at = state.step
        mine = self.consumption.take(batches)
        gathered = [mine]
        if dist.is_initialized():
            gathered = [None] * dist.get_world_size() if ctx.rank == 0 else None
            dist.gather_object(mine, gathered, dst=0)
        if ctx.rank != 0 or ctx.ledger is None:
            return None
        # Wait for it: a call whose argument is in the object store may otherwise run after the next.
        ray.get(ctx.ledger.consume.remote(np.concatenate(gathered)))
        position, state.epoch = ray.get([ctx.ledger.position.remote(), ctx.ledger.epoch_in_progress.remote()])
        return position

    def finish_tracking(self, checkpoint_dir: Path) -> None:
        """With tracking.log_checkpoint=full, the final checkpoint into the MLflow run (each rank adds
        the shards it wrote); then the run ended. Every rank calls it. (The weights alone and the
        registered model are logged by the driver from the merged checkpoint: ray_train/final_model.py.)"""
        tracker = self.ctx.tracker
        if self.ctx.cfg.tracking.log_checkpoint == "full":
            run_id = [tracker.run_id if tracker else ""]
            if dist.is_initialized():
                dist.broadcast_object_list(run_id, src=0)
            if tracker:
                tracker.log_artifacts(checkpoint_dir, "checkpoint")
            elif run_id[0]:
                log_artifacts_to_run(self.ctx.cfg.tracking.tracking_uri, run_id[0], checkpoint_dir, "checkpoint")
            if dist.is_initialized():
                dist.barrier()  # every rank's shards are in the run
        if tracker:
            tracker.finish("FINISHED")


class StepHooks:
    """The loop's on_step and the run's finish: when to log, evaluate, check the data and checkpoint."""

    def __init__(
        self,
        ctx: WorkerContext,
        window: TrainWindow,
        guard: DataQualityGuard,
        validator: Validator,
        checkpointer: Checkpointer,
        num_nodes: int,
        started: float | None = None,
    ):
        self.ctx, self.window, self.guard = ctx, window, guard
        self.validator, self.checkpointer = validator, checkpointer
        self.num_nodes = num_nodes
        self.last_metrics: dict = {}
        self.last_result: StepResult | None = None
        self.created = time.perf_counter()
        self.started = self.created if started is None else started  # the worker function's start
        self.first_step_at: float | None = None
        self.clock = checkpointer.clock  # one account of the phases outside the step
        self.progress = Progress()

    def show_first_batch(self, batches):
        """Pass batches through; the first one is also logged as a picture of augmented samples."""
        from mmtrain.training.tracking.figures import sample_grid  # matplotlib: only where figures are drawn

        for index, batch in enumerate(batches):
            if index == 0:
                shown = {key: value if key in contract.PER_BATCH else value[:16] for key, value in batch.items()}
                images = shown[contract.IMAGE].cpu().numpy()
                if images.ndim == 5:  # VLM rows: each row's first image (black for a text-only row)
                    images = np.where(
                        shown[contract.NUM_IMAGES].cpu().numpy()[:, None, None, None] > 0, images[:, 0], 0
                    )
                grid = sample_grid(images, self.ctx.task.captions(shown))
                self.ctx.tracker.log_figure(grid, "figures/train_samples.png")
            yield batch

    def on_step(self, state: TrainState, result: StepResult) -> bool:
        loop = self.ctx.cfg.loop
        self.last_result = result
        self.window.add(result)
        if self.first_step_at is None:  # its wait for data is start-up
            self.first_step_at = time.perf_counter()
        else:
            self.clock.add("data_wait", result.data_wait_s)
        final = state.step >= loop.max_steps
        metrics = {}
        if self.window.steps == 1 and TRAIN + "time_to_first_step_s" not in self.last_metrics:
            metrics[TRAIN + "time_to_first_step_s"] = time.perf_counter() - self.created  # data start-up included
            metrics["num_nodes"] = self.num_nodes
        if every(loop.log_every, state.step) or final:
            metrics.update(self.window.metrics(state, result))
            if not self.guard.ok():
                self._report(state, metrics, checkpoint=False)
                return False
        if final:  # finish() reports these with the final evaluation and checkpoint, in one report
            self.last_metrics.update(metrics)
            return True
        if self.validator.should_validate(state.step):
            with self.clock("evaluation"):
                metrics.update(self.validator.evaluate(state.step))
        checkpoint = self.checkpointer.should_checkpoint(state.step)
        if checkpoint or any(is_val(key) for key in metrics):  # what Ray Train or a sweep acts on
            self._report(state, metrics, checkpoint)
        elif metrics:
            self._log(state, metrics)
        return True

    def finish(self, state: TrainState) -> None:
        ctx = self.ctx
        if self.guard.error:
            if ctx.tracker:
                ctx.tracker.finish("FAILED")
            return
        metrics = dict(self.last_metrics)
        loop_s = time.perf_counter() - (self.first_step_at or time.perf_counter())
        in_loop_s = self.clock.total()  # the phases outside the step so far: all inside the loop
        if self.window.steps:  # the stream ended between log steps: the last window's figures
            metrics.update(self.window.metrics(state, self.last_result))
        with self.clock("evaluation"):
            metrics.update(self.validator.evaluate(state.step))
        # The data position first: its hand-over tells the ledger every sample trained on.
        with self.clock("data_position"):
            position = self.checkpointer.data_position(state)
        if ctx.rank == 0 and ctx.ledger is not None:  # bad-sample counts reach the run, by reason
            summary = ray.get(ctx.ledger.summary.remote())
            metrics[TRAIN_DATA + "good_samples"] = summary["good"]
            metrics[TRAIN_DATA + "pool_actors_started"] = summary["actors_started"]
            metrics.update({f"{TRAIN_DATA}bad/{reason}": count for reason, count in summary["bad"].items()})
            for kind, counts in summary.get("sources", {}).items():  # a mixture: each source's share
                metrics.update({f"{TRAIN_DATA}source/{name}/{kind}": count for name, count in counts.items()})
        metrics.update(self._overhead(loop_s, in_loop_s))
        # The MLflow run is complete before the last report: a sweep's scheduler may stop the
        # trial as soon as it sees that report, and a killed trial cannot end its run.
        metrics = self._log(state, metrics)
        self.checkpointer.report(state, metrics, True, position, before_report=self.checkpointer.finish_tracking)

    def _overhead(self, loop_s: float, in_loop_s: float) -> dict:
        """Where this worker's time went: start-up to the end of its first step; then the steps
        (the loop's wall time less the phases outside the step within it); and each phase outside
        the step, the final evaluation and data hand-over after the loop included. The final
        checkpoint's save and report follow this account (they carry it)."""
        phases = dict(self.clock.seconds)
        phases["startup_to_first_step"] = (self.first_step_at or time.perf_counter()) - self.started
        phases["train_step"] = max(0.0, loop_s - in_loop_s)
        return {f"{OVERHEAD}{name}_s": round(seconds, 3) for name, seconds in phases.items()}

    def _report(self, state: TrainState, metrics: dict, checkpoint: bool, before_report=None) -> None:
        # The data position first: gathering it also brings state.epoch up to date for the log.
        with self.clock("data_position"):
            position = self.checkpointer.data_position(state) if checkpoint else None
        metrics = self._log(state, metrics)
        self.checkpointer.report(state, metrics, checkpoint, position, before_report)

    def _log(self, state: TrainState, metrics: dict) -> dict:
        """Metrics to MLflow and the progress line to the console, from the worker itself: a Ray
        Train report is for checkpoints and what a sweep decides on (each waits for Train's
        controller to take the one before)."""
        ctx = self.ctx
        metrics = {**metrics, "step": state.step, **({"epoch": state.epoch} if "epoch" in metrics else {})}
        if self.guard.error:
            metrics["data_error"] = self.guard.error
        self.last_metrics.update({k: v for k, v in metrics.items() if not is_val(k)})
        with self.clock("logging"):
            if ctx.tracker:
                ctx.tracker.log_metrics(metrics, state.step)
            if ctx.rank == 0 and any(k == LOSS or is_val(k) for k in metrics):
                shown = {k: v for k, v in metrics.items() if not k.startswith(OVERHEAD)}
                print(self.progress.line(state.step, ctx.cfg.loop.max_steps, shown), flush=True)
        return metrics
