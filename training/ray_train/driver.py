"""The driver: resolve a run config (tokenizer, vocabulary, classes, tracking URI), start Ray if
needed, build the datasets and the TorchTrainer that runs training/ray_train/worker.py, fit."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path

from pipelines import contract
from pipelines.bad_samples import TooManyBadSamples
from pipelines.config import AugmentConfig
from pipelines.dataset import resolve_tokenizer
from pipelines.sources import resolve_shards
from pipelines.tokenizer import load_tokenizer
from training.checkpoint.store import latest_checkpoint, load_config_dict
from training.config.io import to_dict
from training.config.schema import ClipRunConfig, VlmRunConfig
from training.ray_train.payload import EvalAssets, WorkerPayload
from training.tasks.registry import task_class
from training.engine.resume import check_resume_config, format_changes
from training.tracking.tracker import default_experiment, default_tracking_uri


def resolve(cfg: ClipRunConfig) -> tuple[ClipRunConfig, EvalAssets | None, str]:
    """Fill what the config leaves to the data: tokenizer path, vocab size, eval classes/templates."""
    if cfg.init_from:
        from training.models.hf_clip import pretrained_run_config

        cfg = pretrained_run_config(cfg)
    data = cfg.data
    if not data.train_shards:
        raise ValueError("data.train_shards is empty: point it at shards (dir, glob, brace pattern or s3://)")
    check_shards(data)
    tokenizer = resolve_tokenizer(data, data.train_shards)
    data = dataclasses.replace(data, tokenizer=str(Path(tokenizer).resolve()) if "://" not in tokenizer else tokenizer)
    vocab = load_tokenizer(tokenizer).get_vocab_size()
    text = cfg.model.text
    if text.vocab_size == 0:
        text = dataclasses.replace(text, vocab_size=vocab)
    elif text.vocab_size < vocab:
        raise ValueError(f"model.text.vocab_size={text.vocab_size} is smaller than the tokenizer's {vocab}")
    model = dataclasses.replace(cfg.model, text=text)
    if model.vision.image_size != data.augment.image_size:
        raise ValueError(f"model.vision.image_size={model.vision.image_size} but data.augment.image_size="
                         f"{data.augment.image_size}; set them equal")
    cfg = dataclasses.replace(cfg, data=data, model=model)

    eval_assets = None
    if data.eval_shards:
        classes, templates = classes_and_templates(cfg)
        cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, classes=classes, templates=templates))
        eval_assets = EvalAssets(data.tokenizer, classes, templates)
    tracking_uri = default_tracking_uri(cfg.tracking.tracking_uri, cfg.run.output_dir)
    cfg = dataclasses.replace(cfg, tracking=dataclasses.replace(
        cfg.tracking, tracking_uri=tracking_uri, experiment=default_experiment(cfg.tracking.experiment, "clip")))
    return cfg, eval_assets, tracking_uri


def check_shards(data) -> None:
    """List the train and eval shards now, before Ray starts: a mistyped path or an S3 endpoint where
    nothing listens fails in a second with the setting to fix, not minutes into a run."""
    for specs in (data.train_shards, data.eval_shards):
        if specs:
            resolve_shards(specs, data.s3_endpoint)


def classes_and_templates(cfg: ClipRunConfig) -> tuple[list[str], list[str]]:
    ev = cfg.eval
    manifest = manifest_near(cfg.data.eval_shards[0])
    classes = list(ev.classes)
    if not classes and ev.classes_file:
        classes = [l.strip() for l in Path(ev.classes_file).read_text().splitlines() if l.strip()]
    if not classes:
        classes = manifest.get("classes", [])
    templates = list(ev.templates) or manifest.get("templates") or ["a photo of a {}."]
    return classes, templates


def manifest_near(spec: str) -> dict:
    if "://" in spec:
        return {}
    path = Path(spec)
    directory = path if path.is_dir() else path.parent
    manifest = directory / "manifest.json"
    return json.loads(manifest.read_text()) if manifest.is_file() else {}


VERBOSE = "MMTRAIN_VERBOSE"  # "1": Ray's INFO logs and deprecation notices on the console too
RAY_DATA_QUIET_LOGGING = Path(__file__).resolve().parents[2] / "pipelines" / "ray_data_logging.yaml"


def verbose() -> bool:
    return os.environ.get(VERBOSE) == "1"


def ensure_ray(address: str, local_num_cpus: int) -> None:
    """Connect to `address`, or start a local instance with more logical CPUs than cores so that
    Ray Data and Train workers can share a small machine (they starve each other otherwise)."""
    import ray

    if ray.is_initialized():
        return
    loud = verbose()
    env = {"RAY_DATA_DISABLE_PROGRESS_BARS": os.environ.get("RAY_DATA_DISABLE_PROGRESS_BARS", "1"),
           "TOKENIZERS_PARALLELISM": "false",
           "RAY_CHDIR_TO_TRIAL_DIR": "0",  # sweep trials keep the working dir that relative paths mean
           # Train's workers replace print with a logger that also tees to stdout: every line twice.
           "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
           # Deprecation notices about Ray's own internals are no news to a user of mmtrain.
           **({} if loud else {"PYTHONWARNINGS": "ignore::DeprecationWarning",
                               "HF_HUB_DISABLE_PROGRESS_BARS": "1"})}  # transformers' "Loading weights" bars
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
        context = ray.init(address="local", num_cpus=cpus, **quiet)
    if not loud:
        dashboard = f"dashboard http://{context.dashboard_url}; " if context.dashboard_url else ""
        print(f"[mmtrain] Ray {'at ' + connect_to if connect_to else 'started locally'}: {dashboard}Ray's own logs "
              "in /tmp/ray/session_latest/logs on the head node (--verbose prints them here)", flush=True)


def check_resume(cfg: ClipRunConfig | VlmRunConfig) -> None:
    """A run that continues from a checkpoint: print what changed in its config, and refuse (before
    Ray starts) a change that cannot take effect mid-run."""
    if "://" in cfg.run.output_dir:
        return  # remote storage: the worker restores from Ray's checkpoint without this preview
    try:
        checkpoint = latest_checkpoint(Path(cfg.run.output_dir) / cfg.run.name)
    except ValueError:
        return  # nothing to resume: a fresh run
    changes = check_resume_config(load_config_dict(checkpoint), to_dict(cfg), str(checkpoint))
    if changes:
        print(f"[mmtrain] {cfg.run.name} continues from {checkpoint}; config changes:\n{format_changes(changes)}",
              flush=True)


def run_clip(cfg: ClipRunConfig, callbacks: list = ()) -> dict:
    cfg, eval_assets, tracking_uri = resolve(cfg)
    check_resume(cfg)
    ensure_ray(cfg.run.ray_address, cfg.run.local_num_cpus)
    make_output_dir(cfg.run.output_dir)
    return fit(cfg, "clip", eval_assets, tracking_uri, callbacks)


def resolve_vlm(cfg: VlmRunConfig) -> tuple[VlmRunConfig, EvalAssets | None, str]:
    """Check the prerequisites (vision tower, LM directory) and match the data to the vision tower:
    its image size, its eval resize policy (centre crop or not) and, on the device, its normalisation."""
    from training.models.vision_encoder import tower_info

    model = cfg.model
    if not model.vision.checkpoint:
        raise ValueError("model.vision.checkpoint is empty: train a CLIP first (`mmtrain train clip --config "
                         "conf/clip/synth.yaml`) and point at its run directory, or give a Hugging Face CLIP or "
                         "SigLIP directory")
    tower = tower_info(model.vision.checkpoint)
    if not (Path(model.lm.path) / "config.json").is_file():
        raise ValueError(f"model.lm.path={model.lm.path!r} is not an HF model directory: make one with "
                         "`mmtrain models tiny-lm OUT --shards data/synth` or `mmtrain models import-gguf`")
    if cfg.stage == "conversations" and not cfg.init_from:
        raise ValueError("stage 2 (stage: conversations) needs init_from: the stage-1 run or checkpoint directory")
    if cfg.init_from:
        latest_checkpoint(cfg.init_from)  # fail now, not inside a worker
    if not cfg.data.train_shards:
        raise ValueError("data.train_shards is empty")
    check_shards(cfg.data)
    asked = cfg.data.augment.image_size
    if asked not in (AugmentConfig().image_size, tower.image_size):  # set on purpose, and not what the tower takes
        raise ValueError(f"data.augment.image_size={asked}, but the vision tower at {tower.path} takes "
                         f"{tower.image_size}x{tower.image_size} images: remove the key (the tower decides) "
                         f"or set it to {tower.image_size}")
    augment = dataclasses.replace(cfg.data.augment, image_size=tower.image_size, eval_center_crop=tower.center_crop)
    data = dataclasses.replace(cfg.data, augment=augment, with_conversations=True)
    model = dataclasses.replace(model, vision=dataclasses.replace(model.vision, checkpoint=tower.path),
                                lm=dataclasses.replace(model.lm, path=str(Path(model.lm.path).resolve())))
    init_from = str(latest_checkpoint(cfg.init_from).resolve()) if cfg.init_from else ""
    tracking_uri = default_tracking_uri(cfg.tracking.tracking_uri, cfg.run.output_dir)
    tracking = dataclasses.replace(cfg.tracking, tracking_uri=tracking_uri,
                                   experiment=default_experiment(cfg.tracking.experiment, "vlm"))
    cfg = dataclasses.replace(cfg, data=data, model=model, init_from=init_from, tracking=tracking)
    eval_assets = EvalAssets() if data.eval_shards else None
    return cfg, eval_assets, tracking_uri


def run_vlm(cfg: VlmRunConfig, callbacks: list = ()) -> dict:
    cfg, eval_assets, tracking_uri = resolve_vlm(cfg)
    check_resume(cfg)
    ensure_ray(cfg.run.ray_address, cfg.run.local_num_cpus)
    make_output_dir(cfg.run.output_dir)
    return fit(cfg, "vlm", eval_assets, tracking_uri, callbacks)


def make_output_dir(output_dir: str) -> None:
    if "://" not in output_dir:  # Ray Train writes to s3:// and other URIs itself
        Path(output_dir).mkdir(parents=True, exist_ok=True)


RUNNERS = {"clip": run_clip, "vlm": run_vlm}
CONFIGS = {"clip": ClipRunConfig, "vlm": VlmRunConfig}


def fit(cfg: ClipRunConfig | VlmRunConfig, task: str, eval_assets: EvalAssets | None, tracking_uri: str,
        callbacks: list = ()) -> dict:
    """Build the datasets and the TorchTrainer, run it (resuming a run of the same name), return
    the final metrics. Expects Ray to be initialised by the caller. `callbacks` are Ray Train
    callbacks (a sweep passes one that reports to Tune)."""
    # ray.train and the worker's imports load in seconds: paid for only by commands that train
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipelines.dataset import build_dataset, limit_data_resources
    from pipelines.ledger import SampleLedger
    from training.ray_train.dataset_split import TrainEqualEvalWhole
    from training.ray_train.worker import train_worker

    scaling = cfg.scaling
    limit_data_resources(cfg.data, scaling.num_workers * scaling.cpus_per_worker)
    shards = resolve_shards(cfg.data.train_shards, cfg.data.s3_endpoint)
    ledger = SampleLedger.remote(wait_for_begin=True, num_shards=len(shards))
    task_type = task_class(task)
    datasets = {"train": build_dataset(cfg.data, cfg.data.train_shards, train=True, ledger=ledger,
                                       columns=task_type.train_columns + (contract.POSITION,),
                                       text_stage=task_type.text_stage(cfg, ledger),
                                       epochs=_stream_epochs(cfg, shards))}
    if eval_assets is not None:
        datasets["eval"] = build_dataset(cfg.data, cfg.data.eval_shards, train=False,
                                         columns=task_type.eval_columns, text_stage=task_type.text_stage(cfg))
    output_dir = cfg.run.output_dir
    storage = output_dir if "://" in output_dir else str(Path(output_dir).resolve())
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"payload": WorkerPayload(cfg, task, tracking_uri, eval_assets, ledger)},
        scaling_config=ScalingConfig(num_workers=scaling.num_workers, use_gpu=scaling.use_gpu,
                                     resources_per_worker={"CPU": scaling.cpus_per_worker},
                                     placement_strategy=scaling.placement_strategy),
        run_config=RunConfig(
            name=cfg.run.name, storage_path=storage, callbacks=list(callbacks),
            failure_config=FailureConfig(max_failures=cfg.run.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.run.keep_checkpoints),
            # Ray Train's INFO lines (worker groups started, checkpoints persisted) only with --verbose.
            logging_config=None if verbose() else ray.LoggingConfig(log_level="WARNING"),
        ),
        datasets=datasets,
        dataset_config=TrainEqualEvalWhole(),
    )
    result = trainer.fit()
    metrics = dict(result.metrics or {})
    if metrics.get("data_error"):
        raise TooManyBadSamples(metrics["data_error"])
    metrics["checkpoint"] = result.checkpoint.path if result.checkpoint else None
    return metrics


def _stream_epochs(cfg: ClipRunConfig | VlmRunConfig, shards) -> int:
    """Epochs in the run's one training stream: loop.epochs, else enough for loop.max_steps (the
    shards' sample count comes from their tar headers)."""
    from pipelines.dataset import count_dataset_samples, epochs_for

    if cfg.loop.epochs:
        return cfg.loop.epochs
    start = time.perf_counter()
    samples = count_dataset_samples(shards)
    global_batch = cfg.loop.batch_size_per_worker * cfg.scaling.num_workers * cfg.optim.grad_accum_steps
    epochs = epochs_for(samples, global_batch, cfg.loop.max_steps, cfg.data.max_bad_fraction)
    print(f"[mmtrain] {samples} samples in {len(shards)} shards (counted in {time.perf_counter() - start:.1f} s): "
          f"one stream of {epochs} epochs for {cfg.loop.max_steps} steps", flush=True)
    return epochs
