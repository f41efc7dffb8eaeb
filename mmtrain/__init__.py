"""mmtrain: multimodal (CLIP and LLaVA-style) training on Ray.

The code lives in five subpackages, one per layer: `mmtrain.pipelines` (data), `mmtrain.evaluation`
(benchmark layouts and reference-exact metrics), `mmtrain.training` (models, losses, the training loop
and its Ray layer), `mmtrain.inference` (batch use of trained models and benchmark runs) and
`mmtrain.jobs` (the command line). The Python API is `mmtrain.api`; its everyday names
are importable from here (`mmtrain.load_config`, `mmtrain.train`, ...).

In the repository the subpackages are its top-level folders (`training/`, `pipelines/`, ...);
pyproject.toml maps them under `mmtrain` for an install. A checkout that is run without being
installed (a job's working_dir on a cluster, `python -m mmtrain` in a clone) finds them here,
before any installed copy, so a submitted job runs the code it was submitted with.
"""

from pathlib import Path

from mmtrain.version import __version__  # noqa: F401 (mmtrain.__version__)

_checkout = Path(__file__).resolve().parent.parent
if (_checkout / "pyproject.toml").is_file() and (_checkout / "training" / "__init__.py").is_file():
    __path__.append(str(_checkout))  # noqa: F821 (a package's __path__ is defined when it is imported)

_API = ("load_config", "train", "evaluate", "export", "dry_run")


def __getattr__(name: str):
    # Lazy, so that importing a subpackage (in every Ray worker) does not import the command line.
    if name in _API:
        from mmtrain import api

        return getattr(api, name)
    raise AttributeError(f"module 'mmtrain' has no attribute {name!r}")
