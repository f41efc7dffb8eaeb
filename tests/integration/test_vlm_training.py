"""VLM stage 1 -> stage 2 on Ray Train with 2 CPU workers, a tiny LM and real synthetic shards."""

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mmtrain.pipelines.config import AugmentConfig, DataConfig
from mmtrain.training.checkpoint.store import save_checkpoint
from mmtrain.training.config.io import load_config, to_dict
from mmtrain.training.config.schema import ClipModelConfig, ClipRunConfig, TextConfig, VisionConfig, VlmRunConfig
from mmtrain.training.engine.loop import TrainState
from mmtrain.training.models.clip import ClipModel
from mmtrain.training.tracking.tracker import RUN_NAME_TAG

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def test_stage1_then_stage2(ray_local, synth_dir, tmp_path):
    from mmtrain.pipelines.inspection import iter_captions
    from mmtrain.training.models.language_model import make_tiny_lm
    from mmtrain.training.ray_train.driver import run_training

    clip_cfg = ClipRunConfig(
        data=DataConfig(context_length=8, augment=AugmentConfig(image_size=32)),
        model=ClipModelConfig(
            embed_dim=32,
            vision=VisionConfig(image_size=32, patch_size=8, width=64, layers=2, heads=2),
            text=TextConfig(vocab_size=64, width=32, layers=1, heads=2),
        ),
    )
    save_checkpoint(
        tmp_path / "clip", ClipModel(clip_cfg.model, 8, clip_cfg.loss), None, TrainState(), to_dict(clip_cfg)
    )
    lm = make_tiny_lm(tmp_path / "lm", iter_captions([str(synth_dir)]), vocab_size=400, hidden_size=64)
    out = tmp_path / "runs"
    common = [
        f"run.output_dir={out}",
        f"model.vision.checkpoint={tmp_path / 'clip'}",
        f"model.lm.path={lm}",
        f"data.train_shards=[{synth_dir}/train-*.tar]",
        f"data.eval_shards=[{synth_dir}/val-*.tar]",
        "loop.log_every=4",
        "loop.batch_size_per_worker=16",
        "eval.max_generate_samples=8",
        "max_length=64",
    ]
    stage1 = run_training(load_config(VlmRunConfig, REPO / "conf/vlm/stage1.yaml", common + ["loop.max_steps=8"]))
    assert stage1["step"] == 8 and "val/exact_match" in stage1

    stage2 = run_training(
        load_config(
            VlmRunConfig,
            REPO / "conf/vlm/stage2.yaml",
            common
            + ["loop.max_steps=24", f"init_from={out / 'vlm-stage1'}", "lrs.lm=3.0e-3", "lrs.projector=3.0e-3"]
            + ["data.packing.max_tokens=192", "loop.batch_size_per_worker=6"],  # packed rows, ~16 samples
        )
    )
    assert stage2["step"] == 24

    client = MlflowClient(f"sqlite:///{out}/mlflow.db")
    experiment = client.get_experiment_by_name("mmtrain-vlm")
    run = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{RUN_NAME_TAG}` = 'vlm-stage2'")[0]
    assert run.info.status == "FINISHED"
    losses = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "train/loss"), key=lambda m: m.step)]
    assert losses[-1] < losses[0], losses
    assert "eval_generations.json" in {a.path for a in client.list_artifacts(run.info.run_id)}
    # packed: rows of 192 tokens hold ~3 samples each, little padding left; samples counted, not rows
    assert run.data.metrics["train/padding_fraction"] < 0.2, run.data.metrics["train/padding_fraction"]
    assert run.data.metrics["train/tokens_per_s"] > 0
    assert run.data.metrics["train/samples_per_s"] > 2 * run.data.metrics["train/tokens_per_s"] / 192
    assert run.data.params["stage"] == "conversations"


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_stage1_on_a_hugging_face_vision_tower(ray_local, synth_dir, tmp_path, kind):
    """A CLIP or SigLIP directory as transformers saves it feeds VLM stage 1 on Ray Train: its image
    size and normalisation reach the pipeline and the device, and only the projector learns."""
    from mmtrain.pipelines.inspection import iter_captions
    from mmtrain.training.models.language_model import make_tiny_lm
    from mmtrain.training.ray_train.driver import run_training
    from tests.unit.test_vision_encoders import save_hf_tower

    tower = save_hf_tower(tmp_path / "tower", kind, image_size=32, full=kind == "clip")
    lm = make_tiny_lm(tmp_path / "lm", iter_captions([str(synth_dir)]), vocab_size=400, hidden_size=64)
    out = tmp_path / "runs"
    metrics = run_training(
        load_config(
            VlmRunConfig,
            REPO / "conf/vlm/stage1.yaml",
            [
                f"run.output_dir={out}",
                f"model.vision.checkpoint={tower}",
                f"model.lm.path={lm}",
                f"data.train_shards=[{synth_dir}/train-*.tar]",
                "data.eval_shards=[]",
                "loop.max_steps=4",
                "loop.batch_size_per_worker=8",
                "scaling.num_workers=1",
                "max_length=48",
                "tracking.tracking_uri=none",
            ],
        )
    )
    assert metrics["step"] == 4 and metrics["train/loss"] > 0
    saved = load_config(VlmRunConfig, Path(metrics["checkpoint"]) / "config.yaml")
    assert saved.model.vision.checkpoint == str(tower.resolve())
    assert saved.data.augment.image_size == 32 and saved.data.augment.eval_center_crop == (kind == "clip")


def test_llava_json_with_multi_image_and_text_only_rows_trains_packed_and_answers(
    ray_local, synth_dir, tmp_path, capsys
):
    """LLaVA JSON rows with one image, two and none -> `data convert` -> stage 2, packed, on Ray Train
    -> `mmtrain ask` about two images at once."""
    import json

    from mmtrain.jobs.cli import main
    from mmtrain.pipelines.inspection import iter_captions
    from mmtrain.pipelines.tar_samples import iter_records
    from mmtrain.training.checkpoint.store import latest_checkpoint
    from mmtrain.training.models.language_model import make_tiny_lm
    from tests.unit.test_vision_encoders import save_hf_tower

    images = tmp_path / "images"
    images.mkdir()
    with open(synth_dir / "train-00000.tar", "rb") as stream:
        for record in list(iter_records(stream))[:12]:
            (images / f"{record.key}.jpg").write_bytes(record.image_bytes)
    names = sorted(path.name for path in images.iterdir())
    rows = []
    for index in range(48):
        kind = index % 3
        row = {"id": str(index), "conversations": [{"from": "human", "value": "how many shapes?"}]}
        if kind == 1:
            row["image"] = names[index % 12]
            row["conversations"][0]["value"] = "<image>\nhow many shapes?"
        elif kind == 2:
            row["image"] = [names[index % 12], names[(index + 1) % 12]]
            row["conversations"][0]["value"] = "<image>\n<image>\nhow many shapes in both?"
        row["conversations"].append({"from": "gpt", "value": ["none", "one", "two"][kind]})
        rows.append(row)
    (tmp_path / "mix.json").write_text(json.dumps(rows))
    data = tmp_path / "data"
    convert = ["data", "convert", str(tmp_path / "mix.json"), "--out", str(data), "--format", "llava"]
    assert main(convert + ["--image-root", str(images), "--shard-samples", "24"]) == 0

    tower = save_hf_tower(tmp_path / "tower", "clip", image_size=32, full=True)
    lm = make_tiny_lm(tmp_path / "lm", list(iter_captions([str(synth_dir)])) + ["how many shapes in both?"] * 5)
    out = tmp_path / "runs"
    common = [f"run.output_dir={out}", f"model.vision.checkpoint={tower}", f"model.lm.path={lm}", "max_length=128"]
    common += [
        "data.eval_shards=[]",
        "loop.batch_size_per_worker=4",
        "scaling.num_workers=1",
        "tracking.tracking_uri=none",
    ]
    stage1 = ["run.name=captions", f"data.train_shards=[{synth_dir}/train-*.tar]", "loop.max_steps=2"]
    stage2 = [
        "run.name=mixed",
        f"init_from={out / 'captions'}",
        f"data.train_shards=[{data}/train-*.tar]",
        "data.max_images_per_sample=2",
        "data.packing.max_tokens=256",
        "loop.max_steps=4",
    ]
    for preset, overrides in (("stage1", stage1), ("stage2", stage2)):
        train = ["train", "vlm", "--config", str(REPO / f"conf/vlm/{preset}.yaml")]
        assert main(train + [arg for o in common + overrides for arg in ("--set", o)]) == 0
    state = json.loads((latest_checkpoint(out / "mixed") / "state.json").read_text())
    assert state["step"] == 4 and state["samples_seen"] > 2 * 4 * 4  # packed rows: several samples each
    capsys.readouterr()
    ask = ["ask", "--checkpoint", str(out / "mixed"), "--image", str(images / names[0])]
    assert main(ask + ["--image", str(images / names[1]), "<image> <image> how many shapes in both?"]) == 0
    assert capsys.readouterr().out.strip()
