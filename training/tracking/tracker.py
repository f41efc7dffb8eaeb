"""MLflow tracking from rank 0. An MLflow run belongs to a checkpoint lineage: its id is saved in
every checkpoint, a resumed run continues it, and a fresh start (even under an old name) opens a new one."""

from __future__ import annotations

import io
import os
import tempfile
import time
from pathlib import Path

from PIL import Image

from mmtrain.training.config.metric_names import OVERHEAD

RUN_NAME_TAG = "mmtrain.run_name"
PARENT_RUN_TAG = "mlflow.parentRunId"  # MLflow's own tag: the UI nests the run under its parent
# tracking.tracking_uri=none: no MLflow at all (benchmarks, hosts without mlflow); metrics still print.
TRACKING_OFF = "none"
# Printed with each step line, but not curves: the step is every curve's x axis already; the epoch,
# the node count, the start-up time and the sizes of things are facts about the run, kept as run
# tags (mmtrain.<name>, the latest value), so that no chart plots a constant.
NOT_CURVES = frozenset(
    {
        "step",
        "epoch",
        "num_nodes",
        "train/time_to_first_step_s",
        "train_data/pool_actors_started",
        "val/eval_samples",
        "val/questions",
    }
)


def is_fact(name: str) -> bool:
    """A number about the run rather than a curve over its steps: kept as a run tag."""
    return name in NOT_CURVES or name.startswith(OVERHEAD)


# MLflow 3 records what an experiment is for in this tag. Its UI (3.17; tools/mlflow_ui_check.py)
# still opens every experiment on the GenAI traces overview unless the link asks for the model-training
# view (UI_VIEW), which the browser then remembers: experiment_link gives that link.
EXPERIMENT_KIND_TAG, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
UI_VIEW = "workflowType=machine_learning"


def experiment_link(tracking_uri: str, experiment: str, ui_port: int = 5000) -> str:
    """The MLflow UI address of an experiment's runs: on the tracking server itself, or on
    `mlflow ui` started over a local store; "" when tracking is off or the experiment is not there."""
    from mlflow.tracking import MlflowClient  # MLflow: loaded by a tracked run's rank 0 alone

    if not tracking_uri or tracking_uri == TRACKING_OFF:
        return ""
    found = MlflowClient(tracking_uri).get_experiment_by_name(experiment)
    if found is None:
        return ""
    base = tracking_uri.rstrip("/") if tracking_uri.startswith("http") else f"http://127.0.0.1:{ui_port}"
    return f"{base}/#/experiments/{found.experiment_id}?{UI_VIEW}"


def default_experiment(configured: str, trainer: str, sweep: bool = False) -> str:
    """The configured experiment, else one per trainer (mmtrain-clip, mmtrain-vlm), sweeps apart
    (mmtrain-clip-sweeps): one experiment mixing them all made every comparison a filtering job."""
    return configured or f"mmtrain-{trainer}" + ("-sweeps" if sweep else "")


def default_tracking_uri(configured: str, output_dir: str) -> str:
    """The config's URI ("none" turns tracking off), else $MLFLOW_TRACKING_URI, else a sqlite store
    under the output dir."""
    if configured:
        return configured
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    if "://" in output_dir:
        raise ValueError(
            f"run.output_dir={output_dir} is remote, so there is no local sqlite store: set "
            "tracking.tracking_uri or MLFLOW_TRACKING_URI to an MLflow server"
        )
    return f"sqlite:///{Path(output_dir).resolve() / 'mlflow.db'}"


class Tracker:
    """A thin wrapper over MlflowClient so that workers never touch MLflow's global state."""

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        run_name: str,
        tags: dict | None = None,
        parent_run_id: str = "",
        resume_run_id: str = "",
    ):
        """Continue the run `resume_run_id` when the store has it, else open a new run."""
        from mlflow.tracking import MlflowClient  # MLflow: loaded by a tracked run's rank 0 alone

        tags = {**(tags or {}), **({PARENT_RUN_TAG: parent_run_id} if parent_run_id else {})}
        self.client = MlflowClient(tracking_uri)
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else create_experiment(self.client, experiment, tracking_uri)
        if found is None or found.tags.get(EXPERIMENT_KIND_TAG) != MODEL_TRAINING:
            self.client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
        self.resumed = bool(resume_run_id) and self._exists(resume_run_id)
        if self.resumed:
            self.run_id = resume_run_id
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            run = self.client.create_run(experiment_id, run_name=run_name, tags={RUN_NAME_TAG: run_name, **tags})
            self.run_id = run.info.run_id

    def _exists(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException  # MLflow: loaded by a tracked run's rank 0 alone

        try:
            self.client.get_run(run_id)
            return True
        except MlflowException:  # the checkpoint came from another tracking store
            return False

    def log_params(self, params: dict) -> None:
        from mlflow.entities import Param  # MLflow: loaded by a tracked run's rank 0 alone

        existing = self.client.get_run(self.run_id).data.params
        new = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in existing]
        for start in range(0, len(new), 100):
            self.client.log_batch(self.run_id, params=new[start : start + 100])

    def log_resume_changes(self, step: int, changes: dict[str, tuple]) -> None:
        """Params are immutable in MLflow, so a value changed on resume is recorded under its own
        name: `resumed_at_step_<step>/<key>` holds the new value."""
        self.log_params({f"resumed_at_step_{step}/{key}": new for key, (_, new) in changes.items()})

    def log_metrics(self, metrics: dict, step: int) -> None:
        """Numbers as curves over the step, except NOT_CURVES: those are run tags (`mmtrain.epoch`
        holds the latest value), so the UI's charts start with loss, lr and throughput."""
        from mlflow.entities import Metric, RunTag  # MLflow: loaded by a tracked run's rank 0 alone

        now = int(time.time() * 1000)
        numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        entries = [Metric(k, float(v), now, step) for k, v in numbers.items() if not is_fact(k)]
        tags = [RunTag(f"mmtrain.{k}", str(v)) for k, v in numbers.items() if is_fact(k)]
        if entries or tags:
            self.client.log_batch(self.run_id, metrics=entries, tags=tags)

    def log_artifact(self, path: str | Path) -> None:
        self.client.log_artifact(self.run_id, str(path))

    def log_artifacts(self, directory: str | Path, artifact_path: str) -> None:
        self.client.log_artifacts(self.run_id, str(directory), artifact_path)

    def download_artifacts(self, artifact_path: str, directory: str | Path) -> Path:
        return Path(self.client.download_artifacts(self.run_id, artifact_path, str(directory)))

    def log_table(self, rows: list[dict], artifact_file: str) -> None:
        """Rows as an MLflow table artifact (the UI's artifact view shows it as a table)."""
        if rows:
            self.client.log_table(self.run_id, {key: [row.get(key) for row in rows] for key in rows[0]}, artifact_file)

    def log_figure(self, figure, artifact_file: str) -> None:
        self.client.log_figure(self.run_id, figure, artifact_file)

    def log_figure_at_step(self, figure, artifact_file: str, key: str, step: int) -> None:
        """A figure rendered once and logged twice: the PNG `artifact_file` (for downloading) and
        MLflow's step-aware image `key` (an image chart with a step slider in the run's charts)."""

        png = io.BytesIO()
        figure.savefig(png, format="png")
        with tempfile.TemporaryDirectory(prefix="mmtrain-figure-") as scratch:
            path = Path(scratch) / Path(artifact_file).name
            path.write_bytes(png.getvalue())
            directory = Path(artifact_file).parent.as_posix()
            self.client.log_artifact(self.run_id, str(path), None if directory == "." else directory)
        self.client.log_image(self.run_id, Image.open(png).convert("RGB"), key=key, step=step)

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


def create_experiment(client, name: str, tracking_uri: str) -> str:
    """A new experiment's id; in a sqlite store its artifacts go beside the database (MLflow's default,
    ./mlruns, is wherever the command happened to run)."""
    artifact_location = None
    if tracking_uri.startswith("sqlite:///"):
        artifact_location = (Path(tracking_uri[len("sqlite:///") :]).parent / "mlartifacts").as_uri()
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except Exception:  # another process created it first
        return client.get_experiment_by_name(name).experiment_id


def log_artifacts_to_run(tracking_uri: str, run_id: str, directory: str | Path, artifact_path: str) -> None:
    """Files into another process's run (a rank other than 0 adds its checkpoint shards)."""
    from mlflow.tracking import MlflowClient  # MLflow: loaded by a tracked run's rank 0 alone

    MlflowClient(tracking_uri).log_artifacts(run_id, str(directory), artifact_path)
