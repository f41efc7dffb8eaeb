"""mmtrain on real Ray clusters started by the tests: a job submitted to a `ray start --head`
(token authentication on) through `mmtrain submit`, a head without authentication refused, and
CLIP training across two nodes made with ray.cluster_utils.Cluster."""

import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mmtrain.jobs.submit import job_client
from mmtrain.training.tracking.tracker import RUN_NAME_TAG
from tests.assets import free_port, free_ports

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
VENV_BIN = str(Path(sys.executable).parent)


def _train_args(synth_dir, out, name, steps=10):
    return [
        "train",
        "clip",
        "--config",
        "conf/clip/tiny.yaml",
        "--set",
        f"data.train_shards=[{synth_dir}/train-*.tar]",
        "--set",
        f"data.eval_shards=[{synth_dir}/val-*.tar]",
        "--set",
        f"run.output_dir={out}",
        "--set",
        f"run.name={name}",
        "--set",
        f"loop.max_steps={steps}",
    ]


def _finished_run(tracking_uri, name):
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("mmtrain-clip")
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{RUN_NAME_TAG}` = '{name}'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED", runs
    return client, runs[0]


@contextmanager
def _ray_head(auth_mode: str):
    """`ray start --head --block` on 127.0.0.1 with its own ports and temp dir, stopped by its pid
    (never `ray stop`, which would kill every Ray on the machine)."""
    temp_dir = tempfile.mkdtemp(prefix="/tmp/rh")  # short: Ray's socket paths have a length limit
    names = [
        "--port",
        "--dashboard-port",
        "--ray-client-server-port",
        "--dashboard-agent-listen-port",
        "--dashboard-agent-grpc-port",
        "--metrics-export-port",
        "--runtime-env-agent-port",
        "--node-manager-port",
        "--object-manager-port",
    ]
    ports = dict(zip(names, free_ports(len(names))))
    dashboard_port = ports["--dashboard-port"]
    args = [
        f"{VENV_BIN}/ray",
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        "--num-cpus=6",
        "--dashboard-host=127.0.0.1",
        f"--temp-dir={temp_dir}",
    ] + [f"{k}={v}" for k, v in ports.items()]
    env = {
        **os.environ,
        "PATH": f"{VENV_BIN}:{os.environ['PATH']}",  # the job's `python` has mmtrain
        "RAY_AUTH_MODE": auth_mode,
        # No drain on SIGTERM: the group's signal reaches the GCS too, so a drain would only wait
        # out its 30 s timeout before the shutdown.
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
    }
    env.pop("RAY_ADDRESS", None)
    if auth_mode == "token":  # as cluster.yaml asks of its user: the token exists before the head starts
        subprocess.run([f"{VENV_BIN}/ray", "get-auth-token", "--generate"], env=env, capture_output=True, check=True)
    log = open(Path(temp_dir) / "head.log", "w")
    head = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard_port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                job_client(address).list_jobs()  # with token authentication on, the client must send it
                break
            except Exception:
                assert head.poll() is None and time.time() < deadline, (Path(temp_dir) / "head.log").read_text()[-3000:]
                time.sleep(1)
        yield address
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)


@pytest.fixture
def ray_head():
    with _ray_head("token") as address:
        yield address


def test_submit_refuses_a_cluster_without_token_authentication(synth_dir, tmp_path):
    with _ray_head("disabled") as address:
        submit = subprocess.run(
            [sys.executable, "-m", "mmtrain", "submit", "--address", address, "--"]
            + _train_args(synth_dir, tmp_path / "runs", "refused"),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert submit.returncode == 2, submit.stdout + submit.stderr
        assert "runs without token authentication (mode: disabled)" in submit.stderr
        assert "--insecure" in submit.stderr
        assert job_client(address).list_jobs() == []  # nothing was submitted


def test_submitted_job_succeeds_and_tracks(ray_head, synth_dir, tmp_path):
    tracking_uri = f"sqlite:///{tmp_path}/mlflow.db"
    submit = subprocess.run(
        [
            sys.executable,
            "-m",
            "mmtrain",
            "submit",
            "--address",
            ray_head,
            "--follow",
            "--tracking-uri",
            tracking_uri,
            "--submission-id",
            "mmtrain-test-job",
            "--",
        ]
        + _train_args(synth_dir, tmp_path / "runs", "submitted"),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=400,
    )
    output = submit.stdout + submit.stderr
    assert submit.returncode == 0, output[-4000:]
    assert "job mmtrain-test-job: SUCCEEDED" in output
    assert "[mmtrain] step 10" in output  # --follow streamed the training logs
    client, run = _finished_run(tracking_uri, "submitted")  # MLFLOW_TRACKING_URI reached the job
    assert client.get_metric_history(run.info.run_id, "train/loss")

    status = subprocess.run(
        [sys.executable, "-m", "mmtrain", "job", "status", "mmtrain-test-job", "--address", ray_head],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "mmtrain-test-job: SUCCEEDED" in status.stdout, status.stdout + status.stderr
    listing = subprocess.run(
        [sys.executable, "-m", "mmtrain", "job", "list", "--address", ray_head],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "mmtrain-test-job  SUCCEEDED  python -m mmtrain train clip" in listing.stdout


def test_two_workers_on_two_nodes(synth_dir, tmp_path):
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        connect=False,
        head_node_args={"num_cpus": 3, "dashboard_port": free_port(), "temp_dir": tempfile.mkdtemp(prefix="/tmp/rc")},
    )
    try:
        cluster.add_node(num_cpus=3)
        cluster.wait_for_nodes()
        out = tmp_path / "runs"
        train = subprocess.run(
            [sys.executable, "-m", "mmtrain"]
            + _train_args(synth_dir, out, "two-nodes")
            + ["--set", f"run.ray_address={cluster.address}", "--set", "scaling.placement_strategy=SPREAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=400,
        )
        assert train.returncode == 0, (train.stdout + train.stderr)[-4000:]
    finally:
        cluster.shutdown()
    client, run = _finished_run(f"sqlite:///{out}/mlflow.db", "two-nodes")
    assert run.data.tags["mmtrain.num_nodes"] == "2"  # the two Train workers ran on different nodes
    assert run.data.tags["mmtrain.step"] == "10" and "step" not in run.data.metrics  # a fact, not a curve
