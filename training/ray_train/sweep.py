"""Ray Tune sweeps over any config key. The only module that imports ray.tune.

Each trial is a real Ray Train run of the CLIP or VLM trainer (Ray Train V2 runs a Trainer inside a
Tune function trainable; a Trainer is no longer a Tune trainable itself): a small driver function
builds and fits the TorchTrainer under a stable run name,
so a restored trial resumes its Train run from that run's last checkpoint. ASHA compares trials
on the metric each evaluation reports and stops weak ones early. MLflow holds one parent run per
sweep with one nested run per trial; no run is left RUNNING when the sweep returns.

Layout of a sweep: <output_dir>/sweeps/<name>/
    tune/          Tune's experiment state (what --resume restores)
    trials/        one Ray Train run directory per trial: <name>-<trial id>/checkpoint_*
    results.json   the trial table and the best trial (also in the parent MLflow run)
    best_config.yaml
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
from pathlib import Path
from typing import Any

import yaml
from ray import tune
from ray.tune import ExperimentAnalysis
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import BasicVariantGenerator

from mmtrain.training.checkpoint.store import latest_checkpoint
from mmtrain.training.config.help import resolve_preset
from mmtrain.training.config.io import ConfigError, flatten, load_config, to_dict
from mmtrain.training.config.schema import SweepConfig
from mmtrain.training.ray_train import driver
from mmtrain.training.ray_train.driver import ensure_ray
from mmtrain.training.tasks.registry import trainer
from mmtrain.training.tracking.tracker import (
    PARENT_RUN_TAG,
    RUN_NAME_TAG,
    TRACKING_OFF,
    Tracker,
    default_experiment,
    default_tracking_uri,
)

DRIVER_CPUS = 0.1  # the trial's driver only waits on its TorchTrainer; Train asks for the real CPUs
SAMPLERS = ("choice", "grid", "uniform", "loguniform", "randint")


@dataclasses.dataclass(frozen=True)
class SweepPaths:
    root: Path

    @property
    def tune(self) -> Path:
        return self.root / "tune"

    @property
    def trials(self) -> Path:
        return self.root / "trials"


@dataclasses.dataclass(frozen=True)
class TrialContext:
    """What every trial needs besides its sampled values; built once by the sweep driver."""

    sweep: SweepConfig
    base_config: str
    trials_dir: str
    tracking_uri: str
    parent_run_id: str
    data_cpu_limit: float
    working_dir: str


def sweep_paths(sweep: SweepConfig) -> SweepPaths:
    return SweepPaths((Path(sweep.output_dir) / "sweeps" / sweep.name).resolve())


def resolve_base_config(path: str) -> Path:
    """The base preset: a path, or a preset name (clip/tiny) as --config takes it."""
    if not path:
        raise ConfigError("base_config is empty: name a preset, e.g. clip/tiny")
    return resolve_preset(path).resolve()


def search_space(spec: dict) -> dict:
    """{"loss.kind": {"choice": [...]}, ...} -> Tune domains, with errors that name the key."""

    space = {}
    for key, entry in spec.items():
        kind, args = _sampler(key, entry)
        if kind == "choice":
            space[key] = tune.choice(args)
        elif kind == "grid":
            space[key] = tune.grid_search(args)
        elif kind == "uniform":
            space[key] = tune.uniform(*args)
        elif kind == "loguniform":
            space[key] = tune.loguniform(*args)
        else:
            space[key] = tune.randint(int(args[0]), int(args[1]))
    return space


def _sampler(key: str, entry: Any) -> tuple[str, list]:
    if not isinstance(entry, dict) or len(entry) != 1 or next(iter(entry)) not in SAMPLERS:
        raise ConfigError(f"search_space.{key} must be one of {{{': [...]}, {'.join(SAMPLERS)}: [...]}}, got {entry!r}")
    kind, args = next(iter(entry.items()))
    if not isinstance(args, list) or not args:
        raise ConfigError(f"search_space.{key}.{kind} needs a non-empty list, got {args!r}")
    if kind in ("uniform", "loguniform", "randint"):
        if len(args) != 2:
            raise ConfigError(f"search_space.{key}.{kind} needs [low, high], got {args!r}")
        try:
            args = [float(a) for a in args]  # YAML reads 1e-4 as a string
        except (TypeError, ValueError):
            raise ConfigError(f"search_space.{key}.{kind} bounds must be numbers, got {args!r}") from None
        if not args[0] < args[1] or (kind == "loguniform" and args[0] <= 0):
            raise ConfigError(f"search_space.{key}.{kind} needs 0 < low < high (low > 0 for loguniform), got {args!r}")
    return kind, args


def check_search_space(sweep: SweepConfig, base_config: Path) -> None:
    """Fail before any trial starts if a key or value does not fit the trainer's config."""
    if not sweep.search_space:
        raise ConfigError("search_space is empty: give at least one config key to vary")
    for key, entry in sweep.search_space.items():
        kind, args = _sampler(key, entry)
        if kind in ("choice", "grid"):
            values = args
        else:  # a range: its lower bound stands for every value
            values = [int(args[0]) if kind == "randint" else args[0]]
        for value in values:
            try:
                load_config(trainer(sweep.trainer).config_class, base_config, sweep.overrides, {key: value})
            except ConfigError as err:
                raise ConfigError(f"search_space.{key} = {value!r} does not fit {base_config.name}: {err}") from None


def num_trials(sweep: SweepConfig) -> int:
    grid = math.prod(len(e["grid"]) for e in sweep.search_space.values() if "grid" in e)
    return sweep.num_samples * grid


def trial_resources(base, sweep: SweepConfig) -> dict[str, float]:
    """What one trial holds while it runs: its Train workers plus its data pipeline's CPU cap."""
    scaling = base.scaling
    resources = {"CPU": scaling.num_workers * scaling.cpus_per_worker + sweep.data_cpus_per_trial + DRIVER_CPUS}
    if scaling.use_gpu:
        resources["GPU"] = float(scaling.num_workers)
    return resources


def concurrency(available: dict[str, float], per_trial: dict[str, float], trials: int, configured: int) -> int:
    """Trials that fit in the cluster's free resources at once (at least 1, at most `trials`)."""
    if configured > 0:
        return min(configured, trials)
    fits = min(int(available.get(name, 0.0) // amount) for name, amount in per_trial.items() if amount > 0)
    return max(1, min(fits, trials))


def trial_config(context: TrialContext, params: dict, trial_id: str):
    """The full run config of one trial: base preset + sweep overrides + sampled values + its run name."""
    sweep = context.sweep
    fixed = {
        "run.name": trial_run_name(sweep.name, trial_id),
        "run.resume": "auto",  # a trial Tune restores continues its run (`sweep --resume` is the explicit step)
        "run.output_dir": context.trials_dir,
        "tracking.tracking_uri": context.tracking_uri,
        "tracking.parent_run_id": context.parent_run_id,
        "tracking.experiment": default_experiment(sweep.experiment, sweep.trainer, sweep=True),
        "data.data_cpu_limit": context.data_cpu_limit,
    }
    return load_config(trainer(sweep.trainer).config_class, context.base_config, sweep.overrides, {**params, **fixed})


def trial_run_name(sweep_name: str, trial_id: str) -> str:
    """A trial's run name, the part that tells trials apart first ("t03-clip-temperature-6a1f2_00003"):
    the MLflow UI cuts long names at the end, where Tune's trial numbers are."""
    number = trial_id.rsplit("_", 1)[-1]
    return f"t{int(number):02d}-{sweep_name}-{trial_id}" if number.isdigit() else f"{sweep_name}-{trial_id}"


def run_trial(params: dict, context: TrialContext) -> None:
    """One trial, inside a Tune worker: fit the trainer; its evaluations report to Tune."""

    if Path(context.working_dir).is_dir():  # relative data paths in presets mean the sweep's working dir
        os.chdir(context.working_dir)
    cfg = trial_config(context, params, tune.get_context().get_trial_id())
    driver.run_training(cfg, callbacks=[_metric_reporter(context.sweep.metric)])


def _metric_reporter(metric: str):
    """A Train callback that forwards to Tune only the reports carrying the sweep metric: ASHA
    ranks trials on it, and Tune rejects a result that lacks it."""

    class ReportMetricToTune(TuneReportCallback):
        def after_report(self, run_context, metrics, checkpoint):
            if metric in metrics[0]:
                super().after_report(run_context, metrics, checkpoint)

    return ReportMetricToTune()


def run_sweep(sweep: SweepConfig, resume: bool = False) -> dict:
    """Run (or with `resume`, continue) a sweep; returns the summary also saved as results.json."""
    import ray  # Ray and Tune: loaded by the sweep command alone

    base_config, base, tracking_uri, paths = _prepare(sweep, resume)
    ensure_ray(sweep.ray_address, sweep.local_num_cpus)
    per_trial = trial_resources(base, sweep)
    trials = num_trials(sweep)
    parallel = concurrency(ray.available_resources(), per_trial, trials, sweep.max_concurrent_trials)
    parent = _parent_run(sweep, tracking_uri, paths, resume)
    context = TrialContext(
        sweep, str(base_config), str(paths.trials), tracking_uri, parent.run_id, sweep.data_cpus_per_trial, os.getcwd()
    )
    print(
        f"[mmtrain] sweep {sweep.name}: {trials} trials of {sweep.trainer}, {parallel} at a time "
        f"({per_trial} each), {'resuming' if resume else 'starting'} in {paths.root}",
        flush=True,
    )
    interrupted = _fit(_tuner(sweep, base, context, paths, resume, parallel, trials))
    summary = summarise(sweep, context, paths)
    interrupted = interrupted or summary["unfinished"] > 0
    close_runs(parent, summary, interrupted)
    summary["interrupted"] = interrupted
    (paths.root / "results.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    if summary["best"]:
        best_cfg = trial_config(context, summary["best"]["params"], summary["best"]["trial_id"])
        (paths.root / "best_config.yaml").write_text(yaml.safe_dump(to_dict(best_cfg), sort_keys=False))
    parent.log_artifact(paths.root / "results.json")
    return summary


def _prepare(sweep: SweepConfig, resume: bool):
    """(base config path, base config, tracking URI, paths), after every check that needs no Ray."""

    base_config = resolve_base_config(sweep.base_config)
    check_search_space(sweep, base_config)
    base = load_config(trainer(sweep.trainer).config_class, base_config, sweep.overrides)
    if sweep.scheduler.type == "asha" and base.loop.eval_every <= 0:
        raise ConfigError(
            f"ASHA needs a metric during training: set loop.eval_every in {base_config.name} "
            "or in overrides (e.g. overrides: [loop.eval_every=10])"
        )
    tracking_uri = default_tracking_uri(sweep.tracking_uri, sweep.output_dir)
    if tracking_uri == TRACKING_OFF:
        raise ValueError("a sweep records its trials in MLflow: set tracking_uri to a store or server, not 'none'")
    paths = sweep_paths(sweep)
    exists = tune.Tuner.can_restore(str(paths.tune))
    if resume and not exists:
        raise ValueError(f"nothing to resume: no sweep at {paths.tune}")
    if exists and not resume:
        raise ValueError(
            f"sweep {sweep.name!r} already exists at {paths.root}: pass --resume to continue it, "
            "or choose another name (--set name=...)"
        )
    paths.trials.mkdir(parents=True, exist_ok=True)
    return base_config, base, tracking_uri, paths


def _parent_run(sweep: SweepConfig, tracking_uri: str, paths: SweepPaths, resume: bool) -> Tracker:
    """The sweep's MLflow run; its id lives beside the Tune state, so --resume continues it."""
    parent_id_file = paths.root / "mlflow_run_id"
    parent = Tracker(
        tracking_uri,
        default_experiment(sweep.experiment, sweep.trainer, sweep=True),
        f"sweep-{sweep.name}",
        tags={"mmtrain.task": "sweep"},
        resume_run_id=parent_id_file.read_text().strip() if resume and parent_id_file.is_file() else "",
    )
    parent_id_file.write_text(parent.run_id)
    parent.log_params(flatten(to_dict(sweep)))
    return parent


def _tuner(
    sweep: SweepConfig, base, context: TrialContext, paths: SweepPaths, resume: bool, parallel: int, trials: int
):

    trainable = tune.with_resources(tune.with_parameters(run_trial, context=context), {"CPU": DRIVER_CPUS})
    if resume:
        return tune.Tuner.restore(str(paths.tune), trainable=trainable, resume_unfinished=True, resume_errored=True)
    scheduler = FIFOScheduler()
    if sweep.scheduler.type == "asha":
        scheduler = ASHAScheduler(
            time_attr="step",
            max_t=base.loop.max_steps,
            grace_period=sweep.scheduler.grace_period,
            reduction_factor=sweep.scheduler.reduction_factor,
        )
    return tune.Tuner(
        trainable,
        param_space=search_space(sweep.search_space),
        tune_config=tune.TuneConfig(
            metric=sweep.metric,
            mode=sweep.mode,
            num_samples=sweep.num_samples,
            scheduler=scheduler,
            # TuneConfig.max_concurrent_trials is ignored with this generator
            search_alg=BasicVariantGenerator(random_state=sweep.seed, max_concurrent=parallel),
        ),
        # Tune's status tables (every 30 s) give way to one line per trial event (SweepProgress).
        run_config=tune.RunConfig(
            name=paths.tune.name, storage_path=str(paths.root), verbose=0, callbacks=[sweep_progress(sweep, trials)]
        ),
    )


def _fit(tuner) -> bool:
    """Run the trials; True when Ctrl-C or a `kill` (SIGTERM, closed like Ctrl-C) stopped them."""
    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        tuner.fit()
        return False
    except KeyboardInterrupt:
        return True
    finally:
        signal.signal(signal.SIGTERM, previous)


def sweep_progress(sweep: SweepConfig, total: int):
    """A Tune callback (in the driver) printing a line per trial event: started (with its sampled
    values), each evaluation's metric, and done/stopped/failed with the counts so far and the best."""

    class SweepProgress(tune.Callback):
        def __init__(self):
            self.finished: dict[str, str] = {}
            self.best: tuple[float, str] | None = None

        def on_trial_start(self, iteration, trials, trial, **info):
            values = ", ".join(f"{key}={_short(trial.config.get(key))}" for key in sweep.search_space)
            print(f"[mmtrain] sweep {sweep.name}: {self._name(trial)} started ({values})", flush=True)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            value = result.get(sweep.metric)
            if value is None:
                return
            if self.best is None or (value > self.best[0] if sweep.mode == "max" else value < self.best[0]):
                self.best = (value, self._name(trial))
            print(
                f"[mmtrain] sweep {sweep.name}: {self._name(trial)} step {result.get('step')}: "
                f"{sweep.metric}={value:.4g}",
                flush=True,
            )

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._finished(trial, "done", trials)

        def on_trial_error(self, iteration, trials, trial, **info):
            self._finished(trial, "failed", trials)

        def _finished(self, trial, outcome: str, trials) -> None:
            self.finished[trial.trial_id] = outcome
            running = sum(t.status == "RUNNING" for t in trials if t.trial_id not in self.finished)
            best = f"; best {sweep.metric}={self.best[0]:.4g} ({self.best[1]})" if self.best else ""
            print(
                f"[mmtrain] sweep {sweep.name}: {self._name(trial)} {outcome}; {len(self.finished)}/{total} "
                f"finished, {running} running{best}",
                flush=True,
            )

        @staticmethod
        def _name(trial) -> str:
            return trial_run_name(sweep.name, trial.trial_id)

    return SweepProgress()


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def summarise(sweep: SweepConfig, context: TrialContext, paths: SweepPaths) -> dict:
    """The trial table (params, metric, status, checkpoint) and the best trial, from Tune's state."""

    analysis = ExperimentAnalysis(str(paths.tune), default_metric=sweep.metric, default_mode=sweep.mode)
    rows = []
    for trial in analysis.trials:
        params = {key: trial.config.get(key) for key in sweep.search_space}
        last = trial.last_result or {}
        run_name = trial_run_name(sweep.name, trial.trial_id)
        max_steps = trial_config(context, params, trial.trial_id).loop.max_steps
        step = int(last.get("step", 0))
        if trial.status == "ERROR":
            status = "ERROR"
        elif trial.status != "TERMINATED":
            status = f"UNFINISHED ({trial.status})"
        else:
            status = "COMPLETED" if step >= max_steps else "STOPPED EARLY"
        try:
            checkpoint = str(latest_checkpoint(paths.trials / run_name))
        except ValueError:
            checkpoint = None
        rows.append(
            {
                "trial_id": trial.trial_id,
                "run_name": run_name,
                "status": status,
                "step": step,
                "metric": last.get(sweep.metric),
                "params": params,
                "checkpoint": checkpoint,
            }
        )
    scored = [r for r in rows if r["metric"] is not None and not r["status"].startswith("UNFINISHED")]
    best = (max if sweep.mode == "max" else min)(scored, key=lambda r: r["metric"]) if scored else None
    return {
        "sweep": sweep.name,
        "metric": sweep.metric,
        "mode": sweep.mode,
        "trials": rows,
        "best": best,
        "unfinished": sum(r["status"].startswith("UNFINISHED") for r in rows),
        "root": str(paths.root),
    }


def close_runs(parent: Tracker, summary: dict, interrupted: bool) -> None:
    """Tag each trial's run with its sweep status, end any left RUNNING (a trial ASHA stopped
    is killed mid-run and cannot end its own run), then end the parent run."""
    client = parent.client
    experiment_id = client.get_run(parent.run_id).info.experiment_id
    children = {
        run.data.tags.get(RUN_NAME_TAG): run
        for run in client.search_runs(
            [experiment_id], filter_string=f"tags.`{PARENT_RUN_TAG}` = '{parent.run_id}'", max_results=10_000
        )
    }
    statuses = {row["run_name"]: row["status"] for row in summary["trials"]}
    for name, run in children.items():
        client.set_tag(run.info.run_id, "mmtrain.sweep_status", statuses.get(name, "UNKNOWN"))
        if run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, status="KILLED")
    best = summary["best"]
    if best:
        parent.log_metrics({f"best/{summary['metric']}": best["metric"]}, step=best["step"])
        client.set_tag(parent.run_id, "mmtrain.best_trial", best["run_name"])
        for key, value in best["params"].items():
            client.set_tag(parent.run_id, f"best.{key}", str(value))
    parent.finish("KILLED" if interrupted else "FINISHED" if best else "FAILED")


def format_table(summary: dict) -> str:
    """A plain-text table of the trials, best first."""
    rows = summary["trials"]
    keys = list(rows[0]["params"]) if rows else []
    header = ["trial", "status", "step", summary["metric"], *keys]
    sign = -1 if summary["mode"] == "max" else 1
    ordered = sorted(rows, key=lambda r: (r["metric"] is None, sign * (r["metric"] or 0)))
    lines = [header] + [
        [
            r["trial_id"],
            r["status"],
            str(r["step"]),
            "-" if r["metric"] is None else f"{r['metric']:.4f}",
            *(_short(r["params"][k]) for k in keys),
        ]
        for r in ordered
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)) for line in lines)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
