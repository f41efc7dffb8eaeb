"""What `mmtrain submit` uploads and forwards: the project's code alone, no secrets, no data."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mmtrain.jobs.package import build_package
from mmtrain.jobs.submit import check_authentication, job_environment

REPO = Path(__file__).resolve().parents[2]


def test_the_package_holds_every_module_and_runs_alone(tmp_path):
    package = build_package(REPO)
    try:
        tracked = subprocess.run(
            ["git", "ls-files", "pipelines", "training", "jobs", "conf"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        assert tracked and set(tracked) <= set(package.files)
        # training/models/ once went missing: an unanchored exclude "models" matched it
        assert {"training/models/vlm.py", "training/models/clip.py"} <= set(package.files)
        unpacked = tmp_path / "unpacked"
        shutil.copytree(package.directory, unpacked)
        env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
        run = subprocess.run(
            [sys.executable, "-m", "mmtrain", "--help"],
            cwd=unpacked,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0 and "train" in run.stdout, run.stderr[-2000:]
        where = subprocess.run(
            [
                sys.executable,
                "-c",
                "import mmtrain.jobs.cli, mmtrain.training.models.vlm as m, mmtrain.pipelines.dataset as d; "
                "print(m.__file__); print(d.__file__)",
            ],
            cwd=unpacked,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert all(line.startswith(str(unpacked)) for line in where.stdout.split()), where.stdout + where.stderr
    finally:
        shutil.rmtree(package.directory)


def test_secrets_data_and_ignored_files_stay_home(tmp_path):
    project = tmp_path / "project"
    shutil.copytree(
        REPO,
        project,
        ignore=shutil.ignore_patterns(
            ".venv", ".git", "__pycache__", "*.egg-info", "data", "runs", "out", ".gpu-wheels"
        ),
    )
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    (project / ".gitignore").write_text("/data/\n/runs/\nmlflow.db\n")
    secrets = [".env", ".aws/credentials", "id_rsa", "gcp-service-account.json", "conf/.env.local"]
    for name in secrets + [
        "mlflow.db",
        "mlruns/0/meta.yaml",
        "mlartifacts/a.png",
        "data/train-00000.tar",
        "data/tokenizer.json",
        "runs/clip/checkpoint_1/model.pt",
        "shards/train-00001.tar",
        "ckpt/weights/__0_0.distcp",
    ]:
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text("x")
    subprocess.run(["git", "add", "-A", "-f", "."], cwd=project, check=True)  # even tracked, secrets stay home
    subprocess.run(["git", "rm", "-q", "--cached", "-r", "data", "runs"], cwd=project, check=True)
    package = build_package(project)
    try:
        assert "training/models/vlm.py" in package.files
        leaked = [
            name
            for name in package.files
            if name in secrets
            or name.startswith(("data/", "runs/", "mlruns/", "mlartifacts/", "shards/", "ckpt/weights/__"))
            or name == "mlflow.db"
        ]
        assert leaked == []
        assert sorted(
            p.relative_to(package.directory).as_posix() for p in package.directory.rglob("*") if p.is_file()
        ) == sorted(package.files)
    finally:
        shutil.rmtree(package.directory)
    (project / "big.bin").write_bytes(os.urandom(2_000_000))
    subprocess.run(["git", "add", "big.bin"], cwd=project, check=True)
    with pytest.raises(ValueError, match=r"would be \d+ MB \(limit 1 MB; largest: big\.bin.*storage every node reads"):
        build_package(project, max_mb=1)


def test_secrets_are_not_forwarded_unless_named(monkeypatch, capsys):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "hunter2")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "tok")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-west-2")
    env = job_environment("http://mlflow:5000", [])
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000" and env["AWS_DEFAULT_REGION"] == "us-west-2"
    assert not {"AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"} & set(env)
    chosen = job_environment("", ["MLFLOW_TRACKING_PASSWORD", "EPOCHS=3"])
    assert chosen["MLFLOW_TRACKING_PASSWORD"] == "hunter2" and chosen["EPOCHS"] == "3"
    assert "MLFLOW_TRACKING_PASSWORD travels in the job's runtime_env" in capsys.readouterr().err
    with pytest.raises(ValueError, match="KEY=VALUE"):
        job_environment("", ["NOT_SET_ANYWHERE_123"])


def test_an_unreachable_or_unauthenticated_address_is_refused_without_insecure(capsys):
    with pytest.raises(ValueError, match="without token authentication.*--insecure"):
        check_authentication("http://127.0.0.1:1", insecure=False)
    check_authentication("http://127.0.0.1:1", insecure=True)
    assert "submitting anyway (--insecure)" in capsys.readouterr().err


def _git_project(tmp_path):
    project = tmp_path / "project"
    (project / "training").mkdir(parents=True)
    (project / "training" / "a.py").write_text("x = 1\n")
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    return project


def test_a_tracked_link_leaving_the_project_is_refused_with_its_path(tmp_path):
    project = _git_project(tmp_path)
    (tmp_path / "private_key").write_text("-----BEGIN OPENSSH PRIVATE KEY-----")
    os.symlink(tmp_path / "private_key", project / "notes.txt")
    os.symlink("training/a.py", project / "inside.py")  # a link within the project travels as its file
    subprocess.run(["git", "add", "-A"], cwd=project, check=True)
    with pytest.raises(ValueError, match=r"links that lead out of the project \(notes.txt -> .*private_key"):
        build_package(project)
    os.remove(project / "notes.txt")
    subprocess.run(["git", "add", "-A"], cwd=project, check=True)
    package = build_package(project)
    try:
        assert (package.directory / "inside.py").read_text() == "x = 1\n"
    finally:
        shutil.rmtree(package.directory)


def test_any_file_name_works_and_common_credential_files_stay_home(tmp_path):
    project = _git_project(tmp_path)
    latin1 = os.fsdecode(b"caf\xe9.py")
    credentials = [
        ".npmrc",
        ".pypirc",
        ".git-credentials",
        ".kube/config",
        ".docker/config.json",
        "terraform.tfstate",
        "prod.tfvars",
        ".password-store/aws.gpg",
        "vault.kdbx",
        ".my.cnf",
        ".s3cfg",
        ".databrickscfg",
        ".vault-token",
        "gcloud/application_default_credentials.json",
        ".huggingface/token",
        "id_ed25519",
    ]
    for name in [latin1] + credentials:
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text("x")
    subprocess.run(["git", "add", "-A", "-f"], cwd=project, check=True)
    package = build_package(project)
    try:
        assert sorted(package.files) == sorted([latin1, "training/a.py"])
        assert (package.directory / latin1).is_file()
    finally:
        shutil.rmtree(package.directory)


def test_credentials_inside_forwarded_uris_are_removed_with_a_warning(monkeypatch, capsys):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "https://key:secret@minio.local:9000")
    env = job_environment("https://alice:hunter2@mlflow.example.com/path", [])
    assert env["MLFLOW_TRACKING_URI"] == "https://mlflow.example.com/path"
    assert env["AWS_ENDPOINT_URL"] == "https://minio.local:9000"
    assert "hunter2" not in str(env) and "secret" not in str(env)
    err = capsys.readouterr().err
    assert "MLFLOW_TRACKING_URI carried credentials" in err and "--env MLFLOW_TRACKING_PASSWORD" in err
