"""The CLIP trainer on Ray Train: 2 CPU workers on real shards, MLflow in a real sqlite store,
a resumed re-run, and a worker killed mid-run."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from mmtrain.jobs.cli import main
from mmtrain.pipelines.tar_samples import iter_records
from mmtrain.training.config.io import load_config
from mmtrain.training.config.schema import ClipRunConfig
from mmtrain.training.ray_train.driver import ResumeRefused
from mmtrain.training.tracking.tracker import RUN_NAME_TAG
from tests.integration.test_data_resume import wait_for_new_checkpoints

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def _overrides(synth_dir, out, name, steps):
    return [
        f"run.name={name}",
        f"run.output_dir={out}",
        f"loop.max_steps={steps}",
        f"data.train_shards=[{synth_dir}/train-*.tar]",
        f"data.eval_shards=[{synth_dir}/val-*.tar]",
    ]


def _mlflow_run(out, name):
    client = MlflowClient(f"sqlite:///{out}/mlflow.db")
    experiment = client.get_experiment_by_name("mmtrain-clip")
    # MLflow 3's UI opens it on its runs, not on the GenAI traces view (the experiment says it trains models)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{RUN_NAME_TAG}` = '{name}'")
    assert len(runs) == 1
    return client, runs[0]


def val_class_folders(synth_dir: Path, out: Path) -> Path:
    """The eval shards' images as class folders, prompted with the shards' own templates."""
    manifest = json.loads((synth_dir / "manifest.json").read_text())
    for shard in sorted(synth_dir.glob("val-*.tar")):
        for record in iter_records(open(shard, "rb")):
            folder = out / "test" / manifest["classes"][record.label]
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{record.key}.png").write_bytes(record.image_bytes)
    (out / "benchmark.yaml").write_text(
        json.dumps(
            {"name": "shapes", "task": "zeroshot_classification", "data": "test", "templates": manifest["templates"]}
        )
    )
    return out


@pytest.mark.timeout(150)
def test_an_evaluation_beside_a_stream_still_reading_gets_its_cpus(ray_local, synth_dir, tmp_path, monkeypatch):
    """An evaluation at step 2, while the training stream's pool is still reading and held back by
    the object store's budget (a few MB here; on real images a full budget is the normal state): the
    held-out set's pool starts beside it. Each sized to Ray Data's whole CPU cap, the two asked for
    2 training workers + 4 + 1 CPUs of 6, and the evaluation waited for a stream that waited on it."""
    from ray.data import DataContext

    from mmtrain.training.ray_train.driver import run_training

    monkeypatch.setattr(DataContext.get_current(), "override_object_store_memory_limit_fraction", 0.001)
    more = ["loop.epochs=200", "loop.eval_every=2", "loop.batch_size_per_worker=8", "tracking.tracking_uri=none"]
    overrides = _overrides(synth_dir, tmp_path, "beside", 4) + more
    metrics = run_training(load_config(ClipRunConfig, REPO / "conf/clip/tiny.yaml", overrides))
    assert metrics["step"] == 4 and 0.0 <= metrics["val/zero_shot_top1"] <= 1.0
    assert metrics["train_data/pool_actors_started"] == 3  # 4 of the cap's actors, one left for the held-out set


def test_two_workers_learn_track_and_resume(ray_local, synth_dir, tmp_path, capsys):
    from mmtrain.training.ray_train.driver import run_training

    out = tmp_path / "runs"
    bench = val_class_folders(synth_dir, tmp_path / "shapes")
    overrides = _overrides(synth_dir, out, "learn", 30) + [f"eval.benchmarks=[{bench}]"]
    metrics = run_training(load_config(ClipRunConfig, REPO / "conf/clip/tiny.yaml", overrides))
    assert metrics["step"] == 30
    assert 0.0 <= metrics["val/zero_shot_top1"] <= 1.0 and "val/image_to_text_R_at_1" in metrics
    # The same images as class folders, each rank decoding half: the same accuracy as the eval shards'.
    assert metrics["val/shapes/acc1"] == metrics["val/zero_shot_top1"]
    assert Path(metrics["checkpoint"], "weights", ".metadata").is_file()
    # Each of the 2 ranks wrote its own shard file; Ray Train merged them into one checkpoint.
    assert len(list(Path(metrics["checkpoint"], "weights").glob("__*_0.distcp"))) == 2

    client, run = _mlflow_run(out, "learn")
    assert run.info.status == "FINISHED"
    assert run.data.params["loop.max_steps"] == "30"
    losses = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "train/loss"), key=lambda m: m.step)]
    assert len(losses) >= 5
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2, losses
    assert client.get_metric_history(run.info.run_id, "train/samples_per_s")
    assert "epoch" not in run.data.metrics and "step" not in run.data.metrics  # facts, kept as tags
    assert int(run.data.tags["mmtrain.step"]) == 30 and "mmtrain.epoch" in run.data.tags
    assert client.get_metric_history(run.info.run_id, "train/temperature")
    # MLflow 3.17 draws a chart section per prefix in code-point order, unprefixed metrics last
    # (checked in headless Chromium): the training curves come first, the one-point evaluation last.
    sections = sorted({name.rpartition("/")[0] for name in run.data.metrics})
    assert sections == ["train", "train_data", "val", "val/shapes"], sections
    # By default the weights alone go to MLflow, from the checkpoint both ranks wrote; the optimizer stays home.
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"weights"}
    assert not client.list_artifacts(run.info.run_id, "checkpoint")
    weights = {a.path for a in client.list_artifacts(run.info.run_id, "weights")}
    assert weights == {"weights/model.safetensors", "weights/config.yaml", "weights/state.json"}
    assert run.data.tags["mmtrain.version"] and len(run.data.tags["mlflow.source.git.commit"]) == 40
    assert run.data.tags["mmtrain.git_dirty"] in ("true", "false")

    # The eval shards as a benchmark from the command line: the training run's final numbers again.
    (tmp_path / "synth_val.yaml").write_text(f"task: zeroshot_classification\ndata: {synth_dir}/val-*.tar\n")
    assert (
        main(["eval", "clip", "--checkpoint", str(out / "learn"), "--benchmark", str(tmp_path / "synth_val.yaml")]) == 0
    )
    report = json.loads((out / "learn" / "benchmarks" / "report.json").read_text())
    assert report["results"][0]["metrics"]["acc1"] == metrics["val/zero_shot_top1"]
    assert report["results"][0]["samples"] == 64
    _, run = _mlflow_run(out, "learn")  # into the training's own MLflow run
    assert run.data.metrics["synth_val/acc1"] == metrics["val/zero_shot_top1"]

    # The same run name again is refused, naming both ways on; with run.resume=must it continues.
    more = _overrides(synth_dir, out, "learn", 40)
    with pytest.raises(
        ResumeRefused, match=r"'learn' already has checkpoints .* at step 30\). Continue it with --resume"
    ):
        run_training(load_config(ClipRunConfig, REPO / "conf/clip/tiny.yaml", more))
    full = ["run.resume=must", "tracking.log_checkpoint=full"]  # and this time the whole checkpoint to MLflow
    resumed = run_training(load_config(ClipRunConfig, REPO / "conf/clip/tiny.yaml", more + full))
    assert resumed["step"] == 40
    client, run = _mlflow_run(out, "learn")  # still one MLflow run, continued
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss"))
    assert steps.count(30) <= 2 and max(steps) == 40 and 35 in steps
    assert run.info.status == "FINISHED"
    # The schedule the run started with is kept: it ended at step 30, so the lr stays at its floor.
    lrs = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "train/lr")}
    assert lrs[40] == 0.0 and lrs[35] == 0.0, lrs
    # The changed value is recorded beside the original (MLflow params are immutable).
    assert run.data.params["loop.max_steps"] == "30"
    assert run.data.params["resumed_at_step_30/loop.max_steps"] == "40"
    shards = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoint/weights")}
    assert {"checkpoint/weights/__0_0.distcp", "checkpoint/weights/__1_0.distcp"} <= shards  # both ranks'

    # A run directory cleared and started again is a new lineage: a new MLflow run, not appended to the old.
    import shutil

    shutil.rmtree(out / "learn")
    again = load_config(
        ClipRunConfig, REPO / "conf/clip/tiny.yaml", _overrides(synth_dir, out, "learn", 5) + ["optim.lr=0.002"]
    )
    assert run_training(again)["step"] == 5
    client = MlflowClient(f"sqlite:///{out}/mlflow.db")
    runs = client.search_runs(
        [client.get_experiment_by_name("mmtrain-clip").experiment_id],
        filter_string=f"tags.`{RUN_NAME_TAG}` = 'learn'",
        order_by=["attributes.start_time"],
    )
    assert len(runs) == 2 and runs[0].info.run_id != runs[1].info.run_id
    assert {r.data.params["optim.lr"] for r in runs} == {"0.001", "0.002"}


def test_resume_refuses_a_model_change(ray_local, synth_dir, tmp_path):
    from mmtrain.training.ray_train.driver import run_training

    out = tmp_path / "runs"
    cfg = load_config(
        ClipRunConfig,
        REPO / "conf/clip/tiny.yaml",
        _overrides(synth_dir, out, "shape", 2) + ["tracking.tracking_uri=none"],
    )
    run_training(cfg)
    wider = load_config(
        ClipRunConfig,
        REPO / "conf/clip/tiny.yaml",
        _overrides(synth_dir, out, "shape", 4)
        + ["tracking.tracking_uri=none", "model.embed_dim=48", "run.resume=must"],
    )
    with pytest.raises(ValueError, match=r"model.embed_dim: \d+ -> 48.*another run.name"):
        run_training(wider)


def test_a_truncated_checkpoint_is_skipped_for_the_newest_intact_one(ray_local, synth_dir, tmp_path, capsys):
    """Before: a truncated weights file in the latest checkpoint failed every restart without naming it."""
    from mmtrain.training.ray_train.driver import run_training

    out = tmp_path / "runs"
    args = _overrides(synth_dir, out, "trunc", 10) + [
        "tracking.tracking_uri=none",
        "loop.checkpoint_every=5",
        "scaling.num_workers=1",
        "data.eval_shards=[]",
    ]
    run_training(load_config(ClipRunConfig, REPO / "conf/clip/tiny.yaml", args))
    newest = sorted(p for p in (out / "trunc").glob("checkpoint_*") if p.is_dir())[-1]
    shard = newest / "weights" / "__0_0.distcp"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 3])
    more = load_config(ClipRunConfig, REPO / "conf/clip/tiny.yaml", args + ["loop.max_steps=12", "run.resume=must"])
    assert run_training(more)["step"] == 12  # the worker resumed from the step-5 checkpoint and went on
    assert f"skipping checkpoint {newest}: weights/__0_0.distcp does not match its checksum" in capsys.readouterr().out


def test_eval_command_on_a_checkpoint(ray_local, synth_dir, tmp_path):
    """Trained through the Python API (load a preset, override, train), then evaluated by the
    command, by the API, and exported by the API."""
    import mmtrain
    from mmtrain.jobs.cli import main

    out = tmp_path / "runs"
    # tracking off: the run trains and checkpoints without touching MLflow
    cfg = mmtrain.load_config(
        "clip", "clip/tiny", _overrides(synth_dir, out, "ev", 10) + ["tracking.tracking_uri=none"]
    )
    assert cfg.loop.max_steps == 10 and cfg.run.resume == "never"
    checkpoint = mmtrain.train(cfg)["checkpoint"]
    assert not (out / "mlflow.db").exists() and not (out / "mlartifacts").exists()
    assert main(["eval", "clip", "--checkpoint", checkpoint, "--data", str(synth_dir / "val-*.tar")]) == 0
    # --json from a fresh process (its own Ray instance): stdout is the JSON alone, messages go to stderr
    command = [sys.executable, "-m", "mmtrain", "eval", "clip", "--checkpoint", str(out / "ev")]
    done = subprocess.run(
        command + ["--data", str(synth_dir / "val-*.tar"), "--json"], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "top1" in str(json.loads(done.stdout)) and "[mmtrain] Ray started locally" in done.stderr
    assert "Token authentication is enabled" not in done.stderr  # set, not defaulted: no notice
    scores, samples = mmtrain.evaluate("clip", out / "ev", [str(synth_dir / "val-*.tar")])
    assert scores["eval_samples"] == 64 and 0 <= scores["image_to_text_R_at_5"] <= 1 and samples is not None
    exported = mmtrain.export(out / "ev", tmp_path / "hf")
    assert (exported / "model.safetensors").is_file() and (exported / "config.json").is_file()


def _train_workers_of(pid):
    workers = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "RayTrainWorker" in cmdline:
            try:
                if pid in {p.pid for p in proc.parents()}:
                    workers.append(proc)
            except psutil.NoSuchProcess:
                pass
    return workers


def test_killed_worker_resumes_from_checkpoint(synth_dir, tmp_path):
    out = tmp_path / "runs"
    args = [
        sys.executable,
        "-m",
        "mmtrain",
        "train",
        "clip",
        "--config",
        str(REPO / "conf/clip/tiny.yaml"),
        "--set",
        "loop.checkpoint_every=5",
        "--set",
        "run.local_num_cpus=6",
    ]
    for override in _overrides(synth_dir, out, "killed", 40):
        args += ["--set", override]
    log = (tmp_path / "train.log").open("w")
    proc = subprocess.Popen(args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # A checkpoint the controller has registered, so the restart must resume from it.
        wait_for_new_checkpoints(proc, out / "killed", 1, tmp_path / "train.log")
        workers = _train_workers_of(proc.pid)
        assert workers, "no Ray Train worker process found to kill"
        os.kill(workers[-1].pid, signal.SIGKILL)
        assert proc.wait(timeout=400) == 0, (tmp_path / "train.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = (tmp_path / "train.log").read_text()
    assert "[mmtrain] resumed killed at step" in text, text[-3000:]
    assert "step: 40" in text  # the summary's final step count
    client, run = _mlflow_run(out, "killed")
    assert run.info.status == "FINISHED"


def test_a_run_from_pretrained_weights_registers_its_exported_model(
    ray_local, synth_dir, tmp_path, mlflow_server, monkeypatch
):
    """A CLIP run fine-tuned from a (tiny) Hugging Face CLIPModel directory on Ray Train; with
    tracking.register_model its final checkpoint, exported as a transformers CLIPModel, becomes a
    version of an MLflow registered model on a real tracking server, and its files load."""
    from transformers import CLIPModel

    from mmtrain.training.ray_train.driver import run_training
    from tests.unit.test_hf_clip import save_hf_clip

    pretrained = save_hf_clip(tmp_path / "pretrained")
    args = _overrides(synth_dir, tmp_path / "runs", "registered", 4) + [
        f"init_from={pretrained}",
        f"tracking.tracking_uri={mlflow_server}",
        "tracking.register_model=tiny-clip",
        "scaling.num_workers=1",
        "data.eval_shards=[]",
        "tracking.log_figures=false",
    ]
    run_training(load_config(ClipRunConfig, REPO / "conf/clip/tiny.yaml", args))
    client = MlflowClient(mlflow_server)
    version = client.search_model_versions("name='tiny-clip'")[0]
    run = client.get_run(version.run_id)
    assert run.data.tags[RUN_NAME_TAG] == "registered" and run.info.status == "FINISHED"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)  # the registry follows it, as for a user
    import mlflow.pyfunc
    import pandas as pd

    served = mlflow.pyfunc.load_model(f"models:/tiny-clip/{version.version}")  # MLflow's own loader
    (embedding,) = served.predict(pd.DataFrame({"text": ["a red circle"]}))
    assert len(embedding) == 16 and abs(sum(x * x for x in embedding) - 1) < 1e-4
    exported = served.unwrap_python_model().model  # transformers' CLIPModel, read from the export inside
    assert isinstance(exported, CLIPModel)
    assert exported.config.projection_dim == 16 and exported.config.vision_config.hidden_act == "quick_gelu"
