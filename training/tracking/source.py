"""Which code a run ran: the mmtrain version and, from a git checkout, its commit and whether it had
uncommitted changes. Recorded as MLflow tags on every run (mlflow.source.git.commit is the tag
MLflow's UI shows on the run page).

A job submitted to a cluster runs from a copy without .git: `mmtrain submit` passes the commit it
was submitted from in the job's environment (SOURCE_ENV), and that wins."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from mmtrain.version import __version__

GIT_COMMIT_TAG, GIT_DIRTY_TAG, VERSION_TAG = "mlflow.source.git.commit", "mmtrain.git_dirty", "mmtrain.version"
SOURCE_ENV = {GIT_COMMIT_TAG: "MMTRAIN_GIT_COMMIT", GIT_DIRTY_TAG: "MMTRAIN_GIT_DIRTY"}
CODE = Path(__file__).resolve().parents[2]  # the checkout (or the installed package: not a git repo)


def git_state(directory: Path = CODE) -> dict[str, str]:
    """{commit tag, dirty tag} of the git checkout at `directory`; {} outside one (or without git)."""
    try:
        commit = _git(directory, "rev-parse", "HEAD")
        changed = _git(directory, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return {}
    return {GIT_COMMIT_TAG: commit, GIT_DIRTY_TAG: "true" if changed else "false"}


def source_tags(directory: Path = CODE) -> dict[str, str]:
    from_env = {tag: os.environ[name] for tag, name in SOURCE_ENV.items() if os.environ.get(name)}
    return {VERSION_TAG: __version__, **(from_env or git_state(directory))}


def _git(directory: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=directory, capture_output=True, text=True, timeout=10, check=True)
    return done.stdout.strip()
