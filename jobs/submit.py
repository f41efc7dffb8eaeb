"""`mmtrain submit` and `mmtrain job ...`: run mmtrain commands on a Ray cluster through the Ray
Jobs SDK. The only module that imports it.

The project's code and presets travel as the job's working_dir (jobs/package.py: what git tracks,
never data or credentials), the cluster's Python runs `python -m mmtrain <your arguments>`, and
non-secret settings travel as environment variables so the job's runs land in your tracking server.
Secrets do not travel unless named with --env: the Jobs API shows a job's environment to anyone who
can list jobs, so the cluster's own credentials (instance profile, the nodes' environment) serve.
A cluster without token authentication is refused unless --insecure says so.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from mmtrain.jobs.package import MAX_PACKAGE_MB, build_package
from mmtrain.training.tracking.source import SOURCE_ENV, git_state

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
# Settings that travel to the job when set here; none of them is a secret.
FORWARDED_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION")
SECRET_WORDS = ("SECRET", "PASSWORD", "TOKEN", "KEY", "CREDENTIAL")
TERMINAL_STATES = ("SUCCEEDED", "FAILED", "STOPPED")


def add_parsers(subparsers) -> None:
    submit = subparsers.add_parser(
        "submit",
        help="run an mmtrain command on a Ray cluster (Ray Jobs)",
        description="Submit `mmtrain ARGS...` as a Ray job, e.g. "
        "mmtrain submit --ray-address http://HEAD:8265 --follow -- train clip --config clip/tiny",
    )
    _add_address(submit)
    submit.add_argument("--follow", action="store_true", help="stream the job's logs until it ends")
    submit.add_argument(
        "--tracking-uri",
        default=os.environ.get("MLFLOW_TRACKING_URI", ""),
        help="MLflow tracking URI for the job (default: $MLFLOW_TRACKING_URI)",
    )
    submit.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY[=VALUE]",
        help="an environment variable for the job, KEY alone taking this shell's value "
        "(repeatable); a secret named here is readable by anyone who can list jobs",
    )
    submit.add_argument(
        "--working-dir",
        type=Path,
        default=PROJECT_ROOT,
        help="the project whose tracked code and presets travel (default: this project)",
    )
    submit.add_argument(
        "--max-package-mb",
        type=float,
        default=MAX_PACKAGE_MB,
        help=f"refuse a package larger than this (default {MAX_PACKAGE_MB} MB): data goes on shared storage",
    )
    submit.add_argument(
        "--insecure", action="store_true", help="submit even to a cluster that runs without token authentication"
    )
    submit.add_argument("--python", default="python", help="the cluster's Python with mmtrain installed")
    submit.add_argument("--submission-id", default=None, help="a job id of your choosing (default: generated)")
    submit.add_argument("mmtrain_args", nargs=argparse.REMAINDER, help="-- then the mmtrain command to run")
    submit.set_defaults(handler=run_submit)

    job = subparsers.add_parser("job", help="status, logs, stop or list jobs on a Ray cluster")
    commands = job.add_subparsers(dest="job_command", required=True)
    for name, summary in (("status", "a job's state"), ("logs", "a job's logs"), ("stop", "stop a job")):
        command = commands.add_parser(name, help=summary)
        _add_address(command)
        command.add_argument("job_id", help="the id `mmtrain submit` printed (or --submission-id)")
        if name == "logs":
            command.add_argument("--follow", action="store_true", help="stream until the job ends")
        command.set_defaults(handler=run_job_command)
    listing = commands.add_parser("list", help="jobs on the cluster, newest last")
    _add_address(listing)
    listing.set_defaults(handler=run_job_command, job_command="list")


def _add_address(parser) -> None:
    parser.add_argument(
        "--ray-address",
        "--address",
        dest="address",
        default=_default_address(),
        help="the head's dashboard address (default: $RAY_API_SERVER_ADDRESS, else $RAY_ADDRESS when it "
        f"is an http:// one, as `ray job submit` reads them, else {DEFAULT_ADDRESS})",
    )


def _default_address() -> str:
    ray_address = os.environ.get("RAY_ADDRESS", "")
    fallback = ray_address if ray_address.startswith(("http://", "https://")) else DEFAULT_ADDRESS
    return os.environ.get("RAY_API_SERVER_ADDRESS", fallback)


def job_client(address: str):
    from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available
    from ray.job_submission import JobSubmissionClient

    # As `ray job submit` does: with RAY_AUTH_MODE unset, send the token Ray keeps for its
    # clusters (~/.ray/auth_token, $RAY_AUTH_TOKEN or $RAY_AUTH_TOKEN_PATH) if there is one.
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    try:
        return JobSubmissionClient(address)
    except (ConnectionError, RuntimeError) as err:
        raise ValueError(
            f"cannot reach a Ray cluster at {address} ({err}); start one with `ray up cluster.yaml` "
            "or pass --address http://HEAD:8265"
        ) from None


def job_environment(tracking_uri: str, extra: list[str]) -> dict[str, str]:
    """Environment variables for the job: non-secret MLflow and S3 settings from here, then --env
    (KEY=VALUE, or KEY for this shell's value), each secret-looking one with a warning."""
    env = {name: os.environ[name] for name in FORWARDED_ENV if os.environ.get(name)}
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    for name in list(env):
        env[name] = without_credentials(name, env[name])
    for item in extra:
        key, sep, value = item.partition("=")
        if not key or (not sep and key not in os.environ):
            raise ValueError(f"--env {item!r} must look like KEY=VALUE, or name a variable set in this shell")
        env[key] = value if sep else os.environ[key]
        if any(word in key.upper() for word in SECRET_WORDS):
            print(
                f"mmtrain: warning: {key} travels in the job's runtime_env, which anyone who can list jobs on "
                "the cluster can read; prefer the cluster's own credentials",
                file=sys.stderr,
            )
    env.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")  # sweeps read presets relative to the working dir
    return env


def without_credentials(name: str, value: str) -> str:
    """A URI with its user:password@ removed (with a warning naming the right way to pass them):
    anyone who can list the cluster's jobs reads a job's environment."""
    parts = urllib.parse.urlsplit(value)
    if "@" not in parts.netloc:
        return value
    host = parts.netloc.rsplit("@", 1)[1]
    print(
        f"mmtrain: warning: {name} carried credentials (user:password@); they were removed from what the job "
        "receives. Pass them as their own variables with --env (MLflow: --env MLFLOW_TRACKING_USERNAME "
        "--env MLFLOW_TRACKING_PASSWORD), or use the cluster's own credentials",
        file=sys.stderr,
    )
    return urllib.parse.urlunsplit(parts._replace(netloc=host))


def check_authentication(address: str, insecure: bool) -> None:
    """Refuse a cluster whose dashboard (and so its Jobs API) runs without token authentication:
    anyone who reaches it can run code there. Ray says which mode it runs in at a public endpoint."""
    try:
        with urllib.request.urlopen(f"{address.rstrip('/')}/api/authentication_mode", timeout=10) as response:
            mode = json.loads(response.read()).get("authentication_mode", "unknown")
    except (urllib.error.URLError, OSError, ValueError) as err:
        mode = f"unknown ({err})"
    if mode == "token":
        return
    message = (
        f"the Ray cluster at {address} runs without token authentication (mode: {mode}): anyone who "
        "reaches its dashboard can run code on it. Start it with RAY_AUTH_MODE=token (cluster.yaml does)"
    )
    if not insecure:
        raise ValueError(message + ", or pass --insecure to submit anyway")
    print(f"mmtrain: warning: {message}; submitting anyway (--insecure)", file=sys.stderr)


def entrypoint(python: str, mmtrain_args: list[str]) -> str:
    args = mmtrain_args[1:] if mmtrain_args[:1] == ["--"] else mmtrain_args
    if not args:
        raise ValueError("nothing to run: give the mmtrain command after --, e.g. -- train clip --config clip/tiny")
    if args[0] in ("submit", "job"):
        raise ValueError(f"`mmtrain {args[0]}` runs here, not on the cluster")
    return f"{python} -m mmtrain {shlex.join(args)}"


def run_submit(args) -> int:
    command = entrypoint(args.python, args.mmtrain_args)
    env = job_environment(args.tracking_uri, args.env)
    # The package travels without .git: the job's MLflow runs get the commit it was submitted from.
    env.update({SOURCE_ENV[tag]: value for tag, value in git_state(args.working_dir).items()})
    if "MLFLOW_TRACKING_URI" not in env:
        print(
            "mmtrain: warning: no MLflow tracking URI (--tracking-uri or $MLFLOW_TRACKING_URI); the job's runs "
            "go to a sqlite store inside its working directory on the head node",
            file=sys.stderr,
        )
    check_authentication(args.address, args.insecure)
    client = job_client(args.address)
    package = build_package(args.working_dir, args.max_package_mb)
    print(
        f"uploading {len(package.files)} files, {package.size_bytes / 1e6:.1f} MB (what git tracks, "
        "less credentials and data)"
    )
    try:
        job_id = client.submit_job(  # Ray zips and uploads the package here
            entrypoint=command,
            submission_id=args.submission_id,
            runtime_env={"working_dir": str(package.directory), "env_vars": env},
            metadata={"mmtrain.command": " ".join(command.split()[2:])},
        )
    finally:
        shutil.rmtree(package.directory, ignore_errors=True)
    print(f"submitted {job_id} to {args.address}: {command}")
    if not args.follow:
        print(f"follow it with: mmtrain job logs {job_id} --follow --ray-address {args.address}")
        return 0
    return follow(client, job_id)


def follow(client, job_id: str) -> int:
    """Stream the job's logs until it ends; exit status 0 only if it SUCCEEDED."""

    async def stream() -> None:
        async for lines in client.tail_job_logs(job_id):
            print(lines, end="", flush=True)

    asyncio.run(stream())
    status = wait_for(client, job_id)
    print(f"\njob {job_id}: {status}")
    return 0 if status == "SUCCEEDED" else 1


def wait_for(client, job_id: str, timeout_s: float = 60.0) -> str:
    """The job's final state (the log stream can end a moment before the state is written)."""
    deadline = time.time() + timeout_s
    status = str(client.get_job_status(job_id))
    while status not in TERMINAL_STATES and time.time() < deadline:
        time.sleep(0.5)
        status = str(client.get_job_status(job_id))
    return status


def run_job_command(args) -> int:
    client = job_client(args.address)
    if args.job_command == "list":
        for job in sorted(client.list_jobs(), key=lambda j: j.start_time or 0):
            print(f"{job.submission_id or job.job_id}  {job.status}  {job.entrypoint}")
        return 0
    if args.job_command == "status":
        info = client.get_job_info(args.job_id)
        print(f"{args.job_id}: {info.status}" + (f" ({info.message})" if info.message else ""))
        return 0
    if args.job_command == "stop":
        stopped = client.stop_job(args.job_id)
        print(f"{args.job_id}: {'stop requested' if stopped else 'not running'}")
        return 0
    if args.follow:
        return follow(client, args.job_id)
    print(client.get_job_logs(args.job_id), end="")
    return 0
