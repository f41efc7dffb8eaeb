"""What `mmtrain submit` uploads: the project's code and presets, never data, outputs or secrets.

The package holds the files git tracks (so .gitignore'd data, runs, virtualenvs and MLflow stores
stay home), or, outside a git checkout, an allow-list of the project's code. Either way, files whose
names look like credentials are left out, and the package is refused above a size limit: data
belongs on storage every node sees (S3, NFS), named in the config, not in the job's working dir.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mmtrain.jobs.package_excludes import SECRET_DIRECTORIES, SECRET_FILE_PATTERNS

# Outside a git checkout, only these travel.
ALLOWED = (
    "mmtrain/",
    "pipelines/",
    "training/",
    "jobs/",
    "inference/",
    "evaluation/",
    "conf/",
    "benchmarks/",
    "tests/",
    "pyproject.toml",
    "README.md",
    "cluster.yaml",
)
DATA_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".parquet", ".safetensors", ".pt", ".ckpt", ".gguf", ".distcp")
MAX_PACKAGE_MB = 50


@dataclass(frozen=True)
class Package:
    directory: Path  # a temporary copy holding exactly the files that travel
    files: list[str]
    size_bytes: int


def project_files(root: Path) -> list[str]:
    """Paths (relative to `root`) of the files that may travel, before the secret filter. Names are
    the file system's bytes decoded as Python does (any name works, UTF-8 or not)."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True).stdout
        names = [os.fsdecode(name) for name in listed.split(b"\0") if name]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (or no git): the allow-list
        names = sorted(
            str(path.relative_to(root)) for path in root.rglob("*") if str(path.relative_to(root)).startswith(ALLOWED)
        )
    return [name for name in names if (root / name).is_file()]


def links_leaving(root: Path, names: list[str]) -> list[str]:
    """The names that are, or pass through, a symbolic link to somewhere outside `root`."""
    return [name for name in names if not (root / name).resolve().is_relative_to(root)]


def is_excluded(name: str) -> bool:
    """A credential, a local store or data: never uploaded, whatever git says."""
    parts = Path(name).parts
    if any(part in SECRET_DIRECTORIES for part in parts[:-1]):
        return True
    base = parts[-1].lower()
    return base.endswith(DATA_SUFFIXES) or any(fnmatch.fnmatch(base, pattern) for pattern in SECRET_FILE_PATTERNS)


def build_package(root: Path, max_mb: float = MAX_PACKAGE_MB) -> Package:
    """Copy the files that travel into a temporary directory; ValueError above `max_mb`."""
    root = Path(root).resolve()
    files = [name for name in project_files(root) if not is_excluded(name)]
    leaving = links_leaving(root, files)
    if leaving:
        raise ValueError(
            f"{len(leaving)} tracked files are links that lead out of the project ({', '.join(leaving[:3])}"
            f" -> {(root / leaving[0]).resolve()}): a job package holds the project's own files only. "
            "Replace the link with the file, or untrack it (git rm --cached)"
        )
    size = sum((root / name).stat().st_size for name in files)
    if size > max_mb * 1e6:
        largest = sorted(files, key=lambda name: -(root / name).stat().st_size)[:3]
        raise ValueError(
            f"the job package would be {size / 1e6:.0f} MB (limit {max_mb:g} MB; largest: "
            f"{', '.join(largest)}). Put data on storage every node reads (s3://... or NFS) and "
            "point the config at it, or raise --max-package-mb"
        )
    directory = Path(tempfile.mkdtemp(prefix="mmtrain-job-"))
    for name in files:
        target = directory / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, target)  # a link inside the project travels as the file it names
    return Package(directory, files, size)
