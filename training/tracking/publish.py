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
    """Save `export_dir` as a pyfunc model, log it as the run's `model` artifacts and register it as
    a new version of `name`. Through an MlflowClient only: mlflow.set_tracking_uri would change the
    tracking URI of everything else this process runs."""
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    with tempfile.TemporaryDirectory(prefix="mmtrain-pyfunc-") as scratch:
        model_dir = Path(scratch) / "model"
        mlflow.pyfunc.save_model(
            str(model_dir),
            python_model=str(EXPORTED_MODEL_CODE),
            artifacts={"model": str(export_dir)},
            model_config={"kind": kind, **config},
            pip_requirements=SERVING_REQUIREMENTS,
        )
        client.log_artifacts(run_id, str(model_dir), "model")
    try:
        client.create_registered_model(name)
    except MlflowException:  # it exists already: add a version
        pass
    source = f"{client.get_run(run_id).info.artifact_uri}/model"
    return int(client.create_model_version(name, source, run_id=run_id).version)


def model_config_of(checkpoint: Path) -> dict:
    """Serving settings the exported model keeps from the run (the answer length of a VLM)."""
    from mmtrain.training.checkpoint.store import load_config_dict

    evaluation = load_config_dict(checkpoint).get("eval") or {}
    return {"max_new_tokens": int(evaluation.get("max_new_tokens", 32))} if "max_new_tokens" in evaluation else {}
