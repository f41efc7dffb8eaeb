"""Ray Tune sweeps of the real CLIP trainer: ASHA stops trials early and the sweep still finishes,
nested runs land in a real MLflow server, and a sweep whose driver is killed resumes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mmtrain.training.config.io import load_config
from mmtrain.training.config.schema import SweepConfig
from mmtrain.training.tracking.tracker import PARENT_RUN_TAG, RUN_NAME_TAG

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def _trial_overrides(synth_dir, steps):
    return [
        f"data.train_shards=[{synth_dir}/train-*.tar]",
        f"data.eval_shards=[{synth_dir}/val-*.tar]",
        f"loop.max_steps={steps}",
        "loop.log_every=5",
        "loop.eval_every=10",
        "loop.checkpoint_every=5",
        "scaling.num_workers=1",
    ]


def test_asha_stops_weak_trials_and_runs_nest_in_a_server(ray_local, synth_dir, tmp_path, mlflow_server, capsys):
    from mmtrain.training.ray_train.sweep import run_sweep

    # The sweep metric is the reported learning rate: deterministic, so ASHA's decisions are too.
    # Trials run one at a time in grid order: the first (lr 1e-3) sets the rung, the two with a
    # far smaller lr fall below it at step 10 and must be stopped there, not run to step 20.
    sweep = load_config(
        SweepConfig,
        REPO / "conf/sweep/clip_temperature.yaml",
        [
            "name=asha",
            f"output_dir={tmp_path}",
            f"tracking_uri={mlflow_server}",
            "metric=train/lr",
            "mode=max",
            "num_samples=1",
            "max_concurrent_trials=1",
            "scheduler.grace_period=10",
            "scheduler.reduction_factor=2",
            "search_space={optim.lr: {grid: [1.0e-3, 1.0e-6, 2.0e-6]}, loss.kind: {choice: [infonce, siglip]}}",
            f"overrides={_trial_overrides(synth_dir, 20) + ['optim.min_lr_ratio=1.0']!r}",
        ],
    )  # lr stays up after warmup
    summary = run_sweep(sweep)
    printed = capsys.readouterr().out
    # One line per trial event instead of Tune's periodic tables; names lead with the trial number.
    assert printed.count("[mmtrain] sweep asha: t0") >= 9 and "3/3 finished, 0 running" in printed
    assert "Trial status" not in printed and "Current time" not in printed
    assert sorted(row["run_name"][:4] for row in summary["trials"]) == ["t00-", "t01-", "t02-"]

    statuses = sorted(row["status"] for row in summary["trials"])
    assert statuses == ["COMPLETED", "STOPPED EARLY", "STOPPED EARLY"], summary["trials"]
    best = summary["best"]
    assert best["params"]["optim.lr"] == pytest.approx(1e-3) and best["step"] == 20
    assert Path(best["checkpoint"], "weights", ".metadata").is_file()
    saved = json.loads((tmp_path / "sweeps/asha/results.json").read_text())
    assert saved["best"]["run_name"] == best["run_name"] and len(saved["trials"]) == 3
    assert (tmp_path / "sweeps/asha/best_config.yaml").is_file()

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("mmtrain-clip-sweeps")
    parent = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{RUN_NAME_TAG}` = 'sweep-asha'")
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    children = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`{PARENT_RUN_TAG}` = '{parent[0].info.run_id}'"
    )
    assert len(children) == 3
    assert all(run.info.status != "RUNNING" for run in children)  # stopped trials are ended for them
    assert sorted(run.data.tags["mmtrain.sweep_status"] for run in children) == statuses
    winner = next(run for run in children if run.data.tags[RUN_NAME_TAG] == best["run_name"])
    assert winner.info.status == "FINISHED"
    figures = {a.path for a in client.list_artifacts(winner.info.run_id, "figures")}
    assert "figures/train_samples.png" in figures
    assert any("zero_shot_confusion" in path for path in figures)
    assert any("retrieval_similarity" in path for path in figures)
    # Step-aware images too: the run's Images view shows each evaluation's figure at its step.
    images = {a.path for a in client.list_artifacts(winner.info.run_id, "images")}
    for step in (10, 20):
        # the key val/retrieval_similarity, its "/" stored as "~": the UI shows it in the val section
        assert any(path.startswith(f"images/val~retrieval_similarity+step+{step}+") for path in images), images
    assert {a.path for a in client.list_artifacts(parent[0].info.run_id)} >= {"results.json"}


def test_killed_sweep_driver_resumes(synth_dir, tmp_path):
    """SIGKILL the whole sweep (driver and its local Ray) once the first trial has finished and the
    second has a checkpoint; --resume keeps the first and continues the second from its checkpoint."""
    overrides = _trial_overrides(synth_dir, 30)
    args = [
        sys.executable,
        "-m",
        "mmtrain",
        "sweep",
        "--config",
        str(REPO / "conf/sweep/clip_temperature.yaml"),
        "--set",
        "name=resumable",
        "--set",
        f"output_dir={tmp_path}",
        "--set",
        "num_samples=1",
        "--set",
        "max_concurrent_trials=1",
        "--set",
        "scheduler.type=fifo",
        "--set",
        "search_space={optim.lr: {grid: [1.0e-3, 2.0e-3]}}",
        "--set",
        f"overrides={overrides!r}",
    ]
    trials = tmp_path / "sweeps/resumable/trials"
    log_path = tmp_path / "sweep.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 400
        while time.time() < deadline:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            runs = sorted(trials.glob("t*-resumable-*")) if trials.is_dir() else []  # t00-..., t01-...
            finished = [r for r in runs if _final_step(r) == 30]
            # two checkpoints: the second trial has been running a while, so Tune has long since
            # recorded the first one as finished
            started = [r for r in runs if r not in finished and len(list(r.glob("checkpoint_*"))) >= 2]
            if finished and started:
                break
            time.sleep(1)
        else:
            pytest.fail(
                "the sweep never reached one finished and one checkpointed trial:\n" + log_path.read_text()[-3000:]
            )
        first_checkpoints = sorted(p.name for p in finished[0].glob("checkpoint_*"))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    time.sleep(2)  # let the killed Ray processes go

    resumed = subprocess.run(args + ["--resume"], cwd=REPO, capture_output=True, text=True, timeout=500)
    output = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, output[-4000:]
    summary = json.loads((tmp_path / "sweeps/resumable/results.json").read_text())
    assert [row["status"] for row in summary["trials"]] == ["COMPLETED", "COMPLETED"], summary["trials"]
    assert f"[mmtrain] resumed {started[0].name} at step" in output, output[-4000:]
    assert f"[mmtrain] resumed {finished[0].name}" not in output  # a finished trial is kept, not re-run
    assert sorted(p.name for p in finished[0].glob("checkpoint_*")) == first_checkpoints

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("mmtrain-clip-sweeps")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 3  # the parent and one run per trial, continued rather than duplicated
    assert all(run.info.status == "FINISHED" for run in runs), [(r.info.run_name, r.info.status) for r in runs]


def _final_step(run_dir: Path) -> int:
    steps = [json.loads(p.read_text())["step"] for p in run_dir.glob("checkpoint_*/state.json")]
    return max(steps, default=0)
