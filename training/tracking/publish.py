"""What a finished run leaves in MLflow besides its curves: its weights (tracking.log_checkpoint)
and, with tracking.register_model, its exported model as a registered pyfunc model that
`mlflow.pyfunc.load_model("models:/NAME/VERSION").predict(...)` serves (exported_model.py).

Runs in the driver, after the fit, on the final checkpoint as Ray Train merged it from every rank."""

from __future__ import annotations

import tempfile
from pathlib import Path

from mmtrain.training.checkpoint.store import read_model_state

EXPORTED_MODEL_CODE = Path(__file__).with_name("exported_model.py")
SERVING_REQUIREMENTS = ["torch", "transformers", "pillow", "pandas"]


def log_weights(tracking_uri: str, run_id: str, checkpoint: Path) -> None:
    """The trained weights alone (no optimizer state) as `weights/model.safetensors`, beside the
    run's config.yaml and state.json: what `tracking.log_checkpoint: weights` keeps."""
    from safetensors.torch import save_file

    from mmtrain.training.tracking.tracker import log_artifacts_to_run

    with tempfile.TemporaryDirectory(prefix="mmtrain-weights-") as scratch:
        out = Path(scratch)
        state = {name: tensor.contiguous() for name, tensor in read_model_state(checkpoint).items()}
        save_file(state, out / "model.safetensors", metadata={"format": "pt"})
        for name in ("config.yaml", "state.json"):
            (out / name).write_bytes((checkpoint / name).read_bytes())
        log_artifacts_to_run(tracking_uri, run_id, out, "weights")


def register_exported(tracking_uri: str, run_id: str, export_dir: Path, kind: str, name: str, config: dict) -> int:
    """Log `export_dir` as the run's pyfunc model `model` and register it as a new version of `name`."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(run_id=run_id):  # the worker finished the run; it is reopened for the model
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(EXPORTED_MODEL_CODE),
            artifacts={"model": str(export_dir)},
            model_config={"kind": kind, **config},
            pip_requirements=SERVING_REQUIREMENTS,
            registered_model_name=name,
        )
    return int(info.registered_model_version)


def model_config_of(checkpoint: Path) -> dict:
    """Serving settings the exported model keeps from the run (the answer length of a VLM)."""
    from mmtrain.training.checkpoint.store import load_config_dict

    evaluation = load_config_dict(checkpoint).get("eval") or {}
    return {"max_new_tokens": int(evaluation.get("max_new_tokens", 32))} if "max_new_tokens" in evaluation else {}
