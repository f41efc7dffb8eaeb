"""What a finished run leaves in MLflow: the weights alone (no optimizer state), and a registered
model that MLflow's own loader serves: `mlflow.pyfunc.load_model("models:/NAME/1").predict(df)`
gives what transformers' CLIPModel gives. A real sqlite-backed MLflow store, a real export."""

import io
import os

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from mmtrain.training.checkpoint.store import save_checkpoint
from mmtrain.training.config.io import from_dict, to_dict
from mmtrain.training.config.schema import ClipRunConfig
from mmtrain.training.engine.loop import TrainState
from mmtrain.training.models import hf_clip
from mmtrain.training.tasks.clip import ClipTask
from mmtrain.training.tracking.publish import log_weights, register_exported
from tests.unit.test_hf_clip import CAPTIONS, save_hf_clip


@pytest.fixture
def tracked_checkpoint(tmp_path):
    """(tracking uri, run id, a CLIP checkpoint with an optimizer state, its export)."""
    from mlflow.tracking import MlflowClient

    cfg = hf_clip.pretrained_run_config(from_dict(ClipRunConfig, {"init_from": str(save_hf_clip(tmp_path / "hf"))}))
    model = ClipTask(cfg).build_model()
    optimizer = torch.optim.AdamW(model.parameters())
    checkpoint = save_checkpoint(tmp_path / "run" / "checkpoint_1", model, optimizer, TrainState(step=1), to_dict(cfg))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("e", artifact_location=(tmp_path / "art").as_uri())).info.run_id
    client.set_terminated(run_id)
    export_dir = hf_clip.export_hf(checkpoint, tmp_path / "export")
    return uri, run_id, checkpoint, export_dir


def test_the_weights_alone_go_to_the_run(tracked_checkpoint, tmp_path):
    from mlflow.tracking import MlflowClient
    from safetensors.torch import load_file

    from mmtrain.training.checkpoint.store import read_model_state

    uri, run_id, checkpoint, _ = tracked_checkpoint
    log_weights(uri, run_id, checkpoint)
    client = MlflowClient(uri)
    logged = {a.path for a in client.list_artifacts(run_id, "weights")}
    assert logged == {"weights/model.safetensors", "weights/config.yaml", "weights/state.json"}
    local = client.download_artifacts(run_id, "weights/model.safetensors", str(tmp_path))
    saved, expected = load_file(local), read_model_state(checkpoint)
    assert saved.keys() == expected.keys() and all(torch.equal(saved[k], expected[k]) for k in saved)
    assert not any("optimizer" in key or "exp_avg" in key for key in saved)


def test_the_registered_model_loads_and_predicts_through_mlflow_pyfunc(tracked_checkpoint, monkeypatch):
    import mlflow
    import mlflow.pyfunc
    from transformers import CLIPModel, CLIPProcessor

    uri, run_id, _, export_dir = tracked_checkpoint
    before = (os.environ.get("MLFLOW_TRACKING_URI"), mlflow.get_tracking_uri())
    assert register_exported(uri, run_id, export_dir, "clip", "tiny-clip", {}) == 1
    assert (os.environ.get("MLFLOW_TRACKING_URI"), mlflow.get_tracking_uri()) == before  # no global state
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    served = mlflow.pyfunc.load_model("models:/tiny-clip/1")
    assert isinstance(served.unwrap_python_model().model, CLIPModel)
    image = np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    png = io.BytesIO()
    Image.fromarray(image).save(png, format="PNG")
    texts = served.predict(pd.DataFrame({"text": CAPTIONS[:2]}))
    images = served.predict(pd.DataFrame({"image": [png.getvalue()]}))

    model, processor = CLIPModel.from_pretrained(export_dir).eval(), CLIPProcessor.from_pretrained(export_dir)
    with torch.no_grad():
        text_ref = model.get_text_features(**processor(text=CAPTIONS[:2], return_tensors="pt", padding=True))
        image_ref = model.get_image_features(**processor(images=[Image.fromarray(image)], return_tensors="pt"))
    text_ref, image_ref = (getattr(ref, "pooler_output", ref) for ref in (text_ref, image_ref))
    normalize = torch.nn.functional.normalize
    assert torch.allclose(torch.tensor(texts), normalize(text_ref, dim=-1), atol=1e-5)
    assert torch.allclose(torch.tensor(images), normalize(image_ref, dim=-1), atol=1e-5)
