"""The driver: resolve a run config (tokenizer, vocabulary, classes, tracking URI), start Ray if
needed, build the datasets and the TorchTrainer that runs training/ray_train/worker.py, fit."""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from mmtrain.pipelines import contract
from mmtrain.pipelines.bad_samples import TooManyBadSamples
from mmtrain.pipelines.sources import count_dataset_samples
from mmtrain.training.checkpoint.store import latest_checkpoint, load_config_dict, read_train_state
from mmtrain.training.config.io import to_dict
from mmtrain.training.config.metric_names import OVERHEAD
from mmtrain.training.config.schema import ClipRunConfig, VlmRunConfig
from mmtrain.training.engine.resume import check_resume_config, format_changes
from mmtrain.training.ray_train.final_model import publish_final_model
from mmtrain.training.ray_train.payload import WorkerPayload
from mmtrain.training.tasks.protocol import EvalAssets
from mmtrain.training.tasks.registry import TrainerSpec, trainer_of
from mmtrain.training.tasks.resolve import RunShards, list_shards
from mmtrain.training.tracking.source import source_tags
from mmtrain.training.tracking.tracker import default_experiment, default_tracking_uri

VERBOSE = "MMTRAIN_VERBOSE"  # "1": Ray's INFO logs and deprecation notices on the console too
RAY_DATA_QUIET_LOGGING = Path(__file__).resolve().parents[2] / "pipelines" / "ray_data_logging.yaml"


def verbose() -> bool:
    return os.environ.get(VERBOSE) == "1"


def ensure_ray(address: str, local_num_cpus: int) -> None:
    """Connect to `address`, or start a local instance with more logical CPUs than cores so that
    Ray Data and Train workers can share a small machine (they starve each other otherwise)."""
    import ray  # Ray's core: only commands that run on Ray import it (the driver's importers need not)

    if ray.is_initialized():
        return
    loud = verbose()
    env = {
        "RAY_DATA_DISABLE_PROGRESS_BARS": os.environ.get("RAY_DATA_DISABLE_PROGRESS_BARS", "1"),
        "TOKENIZERS_PARALLELISM": "false",
        "RAY_CHDIR_TO_TRIAL_DIR": "0",  # sweep trials keep the working dir that relative paths mean
        # Train's workers replace print with a logger that also tees to stdout: every line twice.
        "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
        # Deprecation notices about Ray's own internals are no news to a user of mmtrain.
        **({} if loud else {"PYTHONWARNINGS": "ignore::DeprecationWarning", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}),
    }  # transformers' "Loading weights" bars
    # Ray's INFO logs (the instance started, Ray Data's execution plans; Ray Train's are quietened by
    # fit()) go to its session logs only, unless --verbose; warnings and errors still reach the console.
    quiet = {} if loud else {"logging_level": logging.WARNING}
    connect_to = address or os.environ.get("RAY_ADDRESS", "")
    if connect_to:
        # Inside a Ray job these are already in the job's runtime env, and Ray refuses a driver
        # runtime env that sets the same keys again.
        missing = {key: value for key, value in env.items() if key not in os.environ}
        context = ray.init(address=address or None, runtime_env={"env_vars": missing} if missing else None, **quiet)
    else:
        # The dashboard stays on: Train's placement-group cleaner and the Jobs SDK need it.
        # address="local": a new instance even where `ray start` left one (use ray_address=auto for that).
        cpus = local_num_cpus or max(6, 3 * (os.cpu_count() or 2))
        if not loud:  # a path on this machine: for a local instance only
            env["RAY_DATA_LOGGING_CONFIG"] = str(RAY_DATA_QUIET_LOGGING)
        # Train's preemption watcher polls for nodes being drained (spot reclaims): a local instance
        # has none, and the watcher is one more actor process per run.
        env["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] = os.environ.get("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        # Train's controller looks at its workers every 2 s by default: a run's end, a checkpoint
        # report and a failed worker are each noticed up to 2 s late. Polling a local instance's
        # few workers 4x as often costs next to nothing.
        env["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
        # In this process's environment, not a runtime env: the local instance's processes inherit
        # it, and a job with a runtime env starts every worker through Ray's setup_worker.py, a
        # second Python start-up per process (~0.5 s of CPU each, dozens of processes per run).
        for key, value in env.items():
            os.environ.setdefault(key, value)
        # Ray enables token authentication for a new local instance and warns that it did: the
        # protection stays, the notice (meant for a cluster's operator) is dropped.
        logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(_TokenNotice())
        context = ray.init(address="local", num_cpus=cpus, **quiet)
    if not loud:
        dashboard = f"dashboard http://{context.dashboard_url}; " if context.dashboard_url else ""
        print(
            f"[mmtrain] Ray {'at ' + connect_to if connect_to else 'started locally'}: {dashboard}Ray's own logs "
            "in /tmp/ray/session_latest/logs on the head node (--verbose prints them here)",
            file=sys.stderr,  # a message, not output: `--json` commands print JSON alone on stdout
            flush=True,
        )


class _TokenNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled")


class ResumeRefused(ValueError):
    """The run's directory and `run.resume` disagree: the command line adds the exact commands."""

    def __init__(self, message: str, run_name: str):
        super().__init__(message)
        self.run_name = run_name


def check_resume(cfg: ClipRunConfig | VlmRunConfig) -> None:
    """Before Ray starts: refuse a run that `run.resume` does not let start or continue; for one
    that continues, print what changed in its config and refuse a change that cannot take effect
    mid-run."""
    if "://" in cfg.run.output_dir:
        return  # remote storage: Ray Train continues a run it finds there (run.resume is for local runs)
    run_dir = Path(cfg.run.output_dir) / cfg.run.name
    try:
        checkpoint = latest_checkpoint(run_dir)
    except ValueError:
        if cfg.run.resume == "must":
            raise ResumeRefused(
                f"nothing to resume: {run_dir} holds no checkpoint. Drop --resume (run.resume=must) to start "
                "this run, or name the run you meant with run.name",
                cfg.run.name,
            ) from None
        return  # a fresh run
    step = read_train_state(checkpoint).step
    if cfg.run.resume == "never":
        raise ResumeRefused(
            f"run {cfg.run.name!r} already has checkpoints in {run_dir} (the latest at step {step}). Continue "
            "it with --resume (run.resume=must; run.resume=auto for unattended jobs), or start a new run "
            "under another run.name (or remove the directory)",
            cfg.run.name,
        )
    if step >= cfg.loop.max_steps and cfg.run.resume == "must":
        raise ResumeRefused(
            f"run {cfg.run.name!r} finished: its latest checkpoint is at step {step} and loop.max_steps is "
            f"{cfg.loop.max_steps}. Raise loop.max_steps to train it further, or start a new run under "
            "another run.name",
            cfg.run.name,
        )
    changes = check_resume_config(load_config_dict(checkpoint), to_dict(cfg), str(checkpoint))
    print(f"[mmtrain] {cfg.run.name} continues from {checkpoint} (step {step})", flush=True)
    if changes:
        print(f"[mmtrain] config changes:\n{format_changes(changes)}", flush=True)


def run_training(cfg: ClipRunConfig | VlmRunConfig, callbacks: list = ()) -> dict:
    """Train a run config of any trainer: resolve what its data decides, check a resume, start Ray
    if needed, fit. Returns the final metrics (and "checkpoint")."""
    started = time.perf_counter()
    spec = trainer_of(cfg)
    shards = list_shards(cfg.data)  # the one listing of the run's shards, before Ray starts
    cfg, eval_assets = spec.resolve(cfg, shards)
    tracking_uri = default_tracking_uri(cfg.tracking.tracking_uri, cfg.run.output_dir)  # resolved once, here
    cfg = dataclasses.replace(
        cfg,
        tracking=dataclasses.replace(
            cfg.tracking, tracking_uri=tracking_uri, experiment=default_experiment(cfg.tracking.experiment, spec.name)
        ),
    )
    check_resume(cfg)
    ray_at = time.perf_counter()
    # Every shard's tar headers are read (seconds for 60,000 samples) while Ray starts, which is
    # mostly waiting for its processes to come up.
    samples = None if cfg.loop.epochs else _count_in_background(shards)
    ensure_ray(cfg.run.ray_address, cfg.run.local_num_cpus)
    ray_s = time.perf_counter() - ray_at
    make_output_dir(cfg.run.output_dir)
    metrics = fit(cfg, spec, eval_assets, shards, callbacks, samples)
    # The driver's part of the wall time (the workers' part came with the final report).
    metrics[OVERHEAD + "driver_config_and_shards_s"] = round(ray_at - started, 3)
    metrics[OVERHEAD + "driver_ray_start_s"] = round(ray_s, 3)
    return metrics


def make_output_dir(output_dir: str) -> None:
    if "://" not in output_dir:  # Ray Train writes to s3:// and other URIs itself
        Path(output_dir).mkdir(parents=True, exist_ok=True)


def fit(
    cfg: ClipRunConfig | VlmRunConfig,
    spec: TrainerSpec,
    eval_assets: EvalAssets | None,
    shards: RunShards,
    callbacks: list = (),
    samples: Future | None = None,
) -> dict:
    """Build the datasets and the TorchTrainer, run it (resuming a run of the same name), return
    the final metrics. Expects Ray to be initialised by the caller. `callbacks` are Ray Train
    callbacks (a sweep passes one that reports to Tune); `samples`, the training shards' sample
    count being made (else it is counted here)."""
    # ray.train and the worker's imports load in seconds: paid for only by commands that train
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from mmtrain.pipelines.ledger import SampleLedger
    from mmtrain.training.ray_train.dataset_split import TrainEqualEvalWhole
    from mmtrain.training.ray_train.worker import train_worker

    fit_started = time.perf_counter()
    scaling = cfg.scaling
    ledger = SampleLedger.remote(wait_for_begin=True, num_shards=len(shards.train), mix=shards.train.mix)
    output_dir = cfg.run.output_dir
    storage = output_dir if "://" in output_dir else str(Path(output_dir).resolve())
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"payload": WorkerPayload(cfg, eval_assets, ledger, shards.train.mix, source_tags())},
        scaling_config=ScalingConfig(
            num_workers=scaling.num_workers,
            use_gpu=scaling.use_gpu,
            resources_per_worker={"CPU": scaling.cpus_per_worker},
            placement_strategy=scaling.placement_strategy,
        ),
        run_config=RunConfig(
            name=cfg.run.name,
            storage_path=storage,
            callbacks=list(callbacks),
            failure_config=FailureConfig(max_failures=cfg.run.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.run.keep_checkpoints),
            # Ray Train's INFO lines (worker groups started, checkpoints persisted) only with --verbose.
            logging_config=None if verbose() else ray.LoggingConfig(log_level="WARNING"),
        ),
        datasets=_datasets(cfg, spec, shards, ledger, samples, with_eval=eval_assets is not None),
        dataset_config=TrainEqualEvalWhole(),
    )
    trainer_at = time.perf_counter()
    result = trainer.fit()
    published_at = time.perf_counter()
    metrics = dict(result.metrics or {})
    if metrics.get("data_error"):
        raise TooManyBadSamples(metrics["data_error"])
    metrics["checkpoint"] = result.checkpoint.path if result.checkpoint else None
    if result.checkpoint:
        publish_final_model(cfg, spec, result.checkpoint)
    metrics[OVERHEAD + "driver_datasets_s"] = round(trainer_at - fit_started, 3)  # sample counting included
    metrics[OVERHEAD + "ray_train_fit_s"] = round(published_at - trainer_at, 3)
    metrics[OVERHEAD + "driver_publish_final_model_s"] = round(time.perf_counter() - published_at, 3)
    return metrics


def _datasets(
    cfg: ClipRunConfig | VlmRunConfig,
    spec: TrainerSpec,
    shards: RunShards,
    ledger,
    samples: Future | None,
    with_eval: bool,
):
    """The run's one training stream (all its epochs) and, with eval data, the held-out set."""
    from mmtrain.pipelines.dataset import build_dataset, limit_data_resources, pool_sizes  # Ray Data, as in fit()

    limit_data_resources(cfg.data, cfg.scaling.num_workers * cfg.scaling.cpus_per_worker)
    task = spec.task
    train_pool, eval_pool = pool_sizes(cfg.data, len(shards.train), len(shards.eval) if with_eval else 0)
    train = build_dataset(
        dataclasses.replace(cfg.data, workers=train_pool),
        shards.train,
        train=True,
        ledger=ledger,
        columns=task.train_columns + (contract.POSITION,),
        text_stage=task.text_stage(cfg, ledger, train=True),
        epochs=_stream_epochs(cfg, shards.train, samples),
        max_rows=stream_rows(cfg, shards.train),
    )
    if not with_eval:
        return {"train": train}
    evaluation = build_dataset(
        dataclasses.replace(cfg.data, workers=eval_pool),
        shards.eval,
        train=False,
        columns=task.eval_columns,
        text_stage=task.text_stage(cfg),
    )
    return {"train": train, "eval": evaluation}


def stream_rows(cfg: ClipRunConfig | VlmRunConfig, shards) -> int | None:
    """The rows a run of loop.max_steps takes from its stream, counted from step 0 (a resumed run
    needs fewer: the bound is never short), plus one batch per worker of margin. None where the
    count is not fixed: a run of loop.epochs, a mixture (its batches regroup rows by source), packed
    VLM rows (a row holds a varying number of samples)."""
    if cfg.loop.epochs or shards.mix is not None or cfg.data.packing.enabled:
        return None
    batches_per_worker = cfg.loop.max_steps * cfg.optim.grad_accum_steps + 1
    return batches_per_worker * cfg.loop.batch_size_per_worker * cfg.scaling.num_workers


def _count_in_background(shards: RunShards) -> Future:
    counting = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mmtrain-count")
    samples = counting.submit(count_dataset_samples, shards.train)
    counting.shutdown(wait=False)  # its thread ends with the count
    return samples


def _stream_epochs(cfg: ClipRunConfig | VlmRunConfig, shards, samples: Future | None) -> int:
    """Epochs in the run's one training stream: loop.epochs, else enough for loop.max_steps (the
    shards' sample count comes from their tar headers: `samples`, when counted already)."""
    from mmtrain.pipelines.dataset import epochs_for  # Ray Data: loaded by commands that train, as in fit()

    if cfg.loop.epochs:
        return cfg.loop.epochs
    start = time.perf_counter()
    counted = samples.result() if samples is not None else count_dataset_samples(shards)
    global_batch = cfg.loop.batch_size_per_worker * cfg.scaling.num_workers * cfg.optim.grad_accum_steps
    global_batch *= cfg.data.packing.samples_per_row  # packed rows: as many as they may hold (a bound)
    epochs = epochs_for(counted, global_batch, cfg.loop.max_steps, cfg.data.max_bad_fraction)
    waited = "counted while Ray started" if samples is not None else "counted"
    print(
        f"[mmtrain] {counted} samples in {len(shards)} shards ({waited}; {time.perf_counter() - start:.1f} s waited): "
        f"one stream of {epochs} epochs for {cfg.loop.max_steps} steps",
        flush=True,
    )
    return epochs
