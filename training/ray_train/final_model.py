"""After a run's fit, in the driver: its final checkpoint (merged from every rank by Ray Train,
wherever run.output_dir is) into its MLflow run, as tracking.log_checkpoint and
tracking.register_model ask (training/tracking/publish.py)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from mmtrain.training.checkpoint.store import load_tracking_run_id
from mmtrain.training.config.schema import ClipRunConfig, VlmRunConfig
from mmtrain.training.tasks.registry import TrainerSpec
from mmtrain.training.tracking.publish import log_weights, model_config_of, register_exported
from mmtrain.training.tracking.tracker import TRACKING_OFF


def publish_final_model(cfg: ClipRunConfig | VlmRunConfig, spec: TrainerSpec, checkpoint) -> None:
    """`checkpoint`: the ray.train.Checkpoint the fit ended with."""
    tracking = cfg.tracking
    wants_weights = tracking.log_checkpoint == "weights"
    if tracking.tracking_uri == TRACKING_OFF or not (wants_weights or tracking.register_model):
        return
    with checkpoint.as_directory() as local:  # a download only when the storage is remote
        directory = Path(local)
        run_id = load_tracking_run_id(directory)
        if not run_id:
            return
        if wants_weights:
            log_weights(tracking.tracking_uri, run_id, directory)
        if tracking.register_model:
            with tempfile.TemporaryDirectory(prefix="mmtrain-export-") as scratch:
                export_dir = spec.export(directory, Path(scratch) / "export")
                version = register_exported(
                    tracking.tracking_uri,
                    run_id,
                    export_dir,
                    spec.name,
                    tracking.register_model,
                    model_config_of(directory),
                )
            print(f"[mmtrain] registered {tracking.register_model} version {version}", flush=True)
