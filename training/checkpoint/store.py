"""Checkpoints as tensors and JSON, never unpickling arbitrary objects (DCP's .metadata is a pickle:
it is read through an allow-list of DCP's own classes, training/checkpoint/metadata.py). Layout of
a checkpoint directory:

    weights/                 torch.distributed.checkpoint (DCP) of {"model", "optimizer"}: each rank
                             writes its own shards (__<rank>_0.distcp), rank 0 the .metadata; no rank
                             gathers the whole model. DCP reshards on load, so a run saved by N
                             workers under one strategy resumes on M workers under any strategy, and
                             a single process reads the full model (read_model_state).
    frozen.json              frozen modules that came from elsewhere (the VLM's LM, its vision tower):
                             their source path and digest instead of a copy of their weights
    state.json               step, epoch, samples seen, the learning-rate schedule in force
    config.yaml              the resolved run config
    tracking.json            the MLflow run this checkpoint's lineage logs to
    data_position.json       what the run has trained on in each epoch, and the bad samples it met
                             (pipelines/position.py): a resume continues the epoch from there
    ranks.json               how many ranks wrote shards
    checksums.json           sha256 of every file rank 0 wrote, written last; each other rank lists
    checksums.rank<R>.json   its own shards. A checkpoint missing one, or with a file that does not
                             match, is incomplete or damaged.


No RNG state is saved: a run draws its randomness from (seed, step, rank) (training.engine.resume.seed_for),
so every rank of a resumed run gets reproducible randomness of its own. The learning-rate schedule
is a function of the step and the schedule in state.json, so no scheduler state is saved either.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import re
import time
import warnings
import zlib
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import yaml
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import StorageMeta, TensorStorageMetadata
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from mmtrain.pipelines.position import DataPosition
from mmtrain.training.checkpoint.metadata import load_metadata
from mmtrain.training.engine.distributed import world
from mmtrain.training.engine.loop import TrainState

WEIGHTS = "weights"
CHECKSUMS = "checksums.json"
DATA_POSITION = "data_position.json"
FROZEN = "frozen.json"
RANKS = "ranks.json"
MAX_RANKS = 1 << 16
MAX_JSON_BYTES = 64 * 1024 * 1024  # state, checksums, config, tracking: a few kB in practice
MAX_POSITION_BYTES = 1 << 30  # one bit per sample per epoch, compressed
_WRAPPER_NAMES = ("_checkpoint_wrapped_module.", "_orig_mod.", "_fsdp_wrapped_module.")


def save_checkpoint(
    directory: Path,
    model,
    optimizer,
    state: TrainState,
    config: dict,
    tracking_run_id: str = "",
    data_position: dict | None = None,
    frozen_sources: dict[str, str] | None = None,
) -> Path:
    """Write a checkpoint into `directory` (this rank's local directory; Ray Train merges the
    ranks' directories). Under torch.distributed every rank calls it: saving is a collective.
    `frozen_sources` maps a module prefix ("lm") to the path its frozen weights were loaded from:
    those weights are referenced by digest, not written (trainable parameters inside, such as
    LoRA adapters, are)."""

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rank, ranks = world()
    frozen_sources = frozen_sources or {}
    with _quiet_single_process():
        dcp.save(
            _state_to_save(model, optimizer, frozen_sources),
            no_dist=not dist.is_initialized(),
            storage_writer=dcp.FileSystemWriter(str(directory / WEIGHTS), overwrite=True),
        )
    if rank == 0:
        (directory / "state.json").write_text(json.dumps(state.to_dict()))
        (directory / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        (directory / "tracking.json").write_text(json.dumps({"mlflow_run_id": tracking_run_id}))
        (directory / RANKS).write_text(json.dumps({"ranks": ranks}))
        (directory / FROZEN).write_text(
            json.dumps(
                {
                    prefix: {"source": str(Path(source).resolve()), "sha256": source_digest(source)}
                    for prefix, source in frozen_sources.items()
                },
                indent=1,
            )
        )
        if data_position is not None:
            (directory / DATA_POSITION).write_text(json.dumps(data_position))
    # Over the files this rank wrote (and any already there), never over an older checksums file: a
    # checkpoint saved again into its directory would otherwise list a stale digest of that file.
    checksums = {name: _sha256(directory / name) for name in _files(directory) if not _is_checksums(name)}
    (directory / _checksums_name(rank)).write_text(json.dumps(checksums, indent=1))
    return directory


@contextlib.contextmanager
def _quiet_single_process():
    """DCP warns that it assumes one process even when told so (no_dist=True)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is (disabled|unavailable)")
        yield


def _state_to_save(model, optimizer, frozen_sources: dict[str, str]) -> dict:

    model_state, optimizer_state = get_state_dict(model, optimizer or [])
    from_source = _from_source(model, model_state, frozen_sources)
    saved = {"model": {key: value for key, value in model_state.items() if key not in from_source}}
    if optimizer is not None:
        saved["optimizer"] = optimizer_state
    return saved


def _from_source(model, model_state: dict, frozen_sources: dict[str, str]) -> set[str]:
    """State-dict keys under a module with a frozen source, except trainable parameters (adapters)."""
    trainable = {_clean(name) for name, param in model.named_parameters() if param.requires_grad}
    prefixes = tuple(prefix + "." for prefix in frozen_sources)
    return {key for key in model_state if key.startswith(prefixes) and key not in trainable} if prefixes else set()


def _clean(name: str) -> str:
    """A parameter's name as state dicts give it: without DDP's, AC's and compile's wrapper levels."""
    name = name.removeprefix("module.")
    for wrapper in _WRAPPER_NAMES:
        name = name.replace(wrapper, "")
    return name


def _checksums_name(rank: int) -> str:
    return CHECKSUMS if rank == 0 else f"checksums.rank{rank}.json"


def _is_checksums(name: str) -> bool:
    return name == CHECKSUMS or (name.startswith("checksums.rank") and name.endswith(".json"))


def _files(directory: Path) -> list[str]:
    return sorted(str(path.relative_to(directory)) for path in directory.rglob("*") if path.is_file())


def checkpoint_problem(directory: Path) -> str | None:
    """Why a checkpoint directory cannot be trusted (a missing, truncated, altered or malformed file),
    or None. Whatever the files hold, this returns a reason rather than raising, so a damaged
    checkpoint is skipped for the newest intact one."""
    directory = Path(directory)
    try:
        return _problem(directory)
    except (OSError, ValueError, TypeError, KeyError, AttributeError, RecursionError, zlib.error) as err:
        return f"unreadable ({type(err).__name__}: {err})"


def _problem(directory: Path) -> str | None:
    for required in ("state.json", "config.yaml"):
        if not (directory / required).is_file():
            return f"no {required}"
    if not (directory / WEIGHTS / ".metadata").is_file():
        return f"no {WEIGHTS}/.metadata"
    if not (directory / CHECKSUMS).is_file():
        return f"no {CHECKSUMS} (the write did not finish)"
    # A run reads its tower's and its own checkpoint several times (resolve, stages, workers): check a
    # directory once per process, again only when a file's size or modification time has changed.
    files = tuple(
        (name, (directory / name).stat().st_size, (directory / name).stat().st_mtime_ns) for name in _files(directory)
    )
    return _verify(str(directory.resolve()), files)


@functools.lru_cache(maxsize=64)
def _verify(directory: str, files: tuple) -> str | None:
    directory = Path(directory)
    covered: set[str] = set()
    for rank in range(read_ranks(directory)):
        name = _checksums_name(rank)
        if not (directory / name).is_file():
            return f"no {name}: rank {rank}'s shards did not arrive"
        expected = _read_json(directory / name)
        if not isinstance(expected, dict) or not all(isinstance(v, str) for v in expected.values()):
            return f"{name} is not a mapping of file names to sha256 digests"
        for file, digest in expected.items():
            path = directory / file
            if Path(file).is_absolute() or ".." in Path(file).parts:
                return f"{name} names {file!r}, outside the checkpoint"
            if not path.is_file():
                return f"{file} is missing"
            if _sha256(path) != digest:
                return f"{file} does not match its checksum (truncated or altered)"
        covered.update(expected)
    uncovered = [name for name, _, _ in files if name.startswith(WEIGHTS + "/") and name not in covered]
    if uncovered:
        return f"{uncovered[0]} is not covered by any checksums file (written by no rank of this checkpoint)"
    read_train_state(directory)
    read_frozen(directory)
    load_config_dict(directory)
    load_tracking_run_id(directory)
    if (directory / WEIGHTS / ".metadata").is_file():
        CheckpointReader(str(directory / WEIGHTS)).read_metadata()  # refuses what could run code
    if (directory / DATA_POSITION).is_file():
        DataPosition.from_json(load_data_position(directory))
    return None


def read_ranks(directory: Path) -> int:
    """How many ranks wrote the checkpoint (ranks.json; 1 when absent)."""
    if not (directory / RANKS).is_file():
        return 1
    ranks = _read_json(directory / RANKS)
    ranks = ranks.get("ranks") if isinstance(ranks, dict) else None
    if isinstance(ranks, bool) or not isinstance(ranks, int) or not 1 <= ranks <= MAX_RANKS:
        raise ValueError(f"{RANKS} must say how many ranks wrote shards (1 to {MAX_RANKS}), got {ranks!r}")
    return ranks


def _read_json(path: Path, max_bytes: int = MAX_JSON_BYTES):
    """A JSON file of bounded size (ValueError past it, or when it does not parse)."""
    if path.stat().st_size > max_bytes:
        raise ValueError(f"{path.name} is {path.stat().st_size} bytes, over {max_bytes}")
    try:
        return json.loads(path.read_bytes())
    except ValueError as err:  # UnicodeDecodeError included
        raise ValueError(f"{path.name} is not JSON ({err})") from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def source_digest(source: str | Path) -> str:
    """A digest of a frozen module's source: an mmtrain checkpoint's checksums.json, or every file of
    another directory (an HF model), or a file. Hashed once per process while nothing changes."""
    path = Path(source).resolve()
    if (path / CHECKSUMS).is_file():
        path = path / CHECKSUMS
    names = [""] if path.is_file() else _files(path)
    stats = tuple((name, (path / name).stat().st_size, (path / name).stat().st_mtime_ns) for name in names)
    return _digest_files(str(path), stats)


@functools.lru_cache(maxsize=16)
def _digest_files(path: str, stats: tuple) -> str:
    digest = hashlib.sha256()
    for name, _, _ in stats:
        digest.update(f"{name}\0{_sha256(Path(path) / name)}\n".encode())
    return digest.hexdigest()


def check_frozen_sources(directory: Path) -> dict[str, str]:
    """{module prefix: source} of the checkpoint's frozen modules, after checking each source is
    there and unchanged (its weights are not in the checkpoint)."""
    frozen = read_frozen(directory)
    for prefix, entry in frozen.items():
        source = Path(entry["source"])
        if not source.exists():
            raise ValueError(
                f"checkpoint {directory} takes its frozen `{prefix}` weights from {source}, which "
                "no longer exists: restore it there (the checkpoint holds no copy)"
            )
        if source_digest(source) != entry["sha256"]:
            raise ValueError(
                f"checkpoint {directory} was trained with frozen `{prefix}` weights from {source}, "
                "which have changed since (sha256 differs): restore the original files"
            )
    return {prefix: entry["source"] for prefix, entry in frozen.items()}


def read_frozen(directory: Path) -> dict[str, dict[str, str]]:
    """frozen.json: {module prefix: {"source": path, "sha256": digest}} (ValueError for another shape)."""
    path = Path(directory) / FROZEN
    frozen = _read_json(path) if path.is_file() else {}
    valid = isinstance(frozen, dict) and all(
        isinstance(entry, dict) and isinstance(entry.get("source"), str) and isinstance(entry.get("sha256"), str)
        for entry in frozen.values()
    )
    if not valid:
        raise ValueError(f"{FROZEN} must map module names to {{source, sha256}}")
    return frozen


def load_checkpoint(directory: Path, model, optimizer=None) -> TrainState:
    """Load a checkpoint into `model` (and `optimizer`): a plain module, or one already sharded or
    wrapped for this run's workers; every rank calls it. Frozen modules keep the weights the model
    was built with, once their sources are checked to be the ones the checkpoint was trained on."""
    directory = Path(directory)
    _load_weights(directory, model, optimizer, check_frozen_sources(directory))
    return read_train_state(directory)


def read_train_state(directory: Path) -> TrainState:
    """state.json, each value a whole number of at least 0 (ValueError otherwise)."""
    saved = _read_json(Path(directory) / "state.json")
    if not isinstance(saved, dict):
        raise ValueError("state.json must be a mapping")
    known = TrainState.__dataclass_fields__
    values = {key: value for key, value in saved.items() if key in known}
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"state.json: {key}={value!r} must be a whole number of at least 0")
    return TrainState(**values)


def _load_weights(directory: Path, model, optimizer, frozen_sources: dict[str, str]) -> None:

    state = _state_to_save(model, optimizer, frozen_sources)
    if optimizer is not None and "optimizer" not in _saved_top_keys(directory):
        del state["optimizer"]  # saved without one (an export-only checkpoint): the optimizer starts fresh
    with _quiet_single_process():
        dcp.load(state, storage_reader=CheckpointReader(str(directory / WEIGHTS)), no_dist=not dist.is_initialized())
    set_state_dict(
        model,
        optimizer if "optimizer" in state else [],
        model_state_dict=state["model"],
        optim_state_dict=state.get("optimizer", {}),
        options=StateDictOptions(strict=False),
    )


def covers_model(directory: Path, model) -> bool:
    """Whether loading the checkpoint into `model` overwrites every entry of its state dict (a plain
    module's): its saved model weights name them all (a frozen module's are not saved, so a model
    with one is never covered)."""
    metadata = CheckpointReader(str(Path(directory) / WEIGHTS)).read_metadata().state_dict_metadata
    saved = {key.removeprefix("model.") for key in metadata if key.startswith("model.")}
    return set(model.state_dict()) <= saved


def _saved_top_keys(directory: Path) -> set[str]:
    metadata = CheckpointReader(str(directory / WEIGHTS)).read_metadata().state_dict_metadata
    return {key.split(".", 1)[0] for key in metadata}


def read_model_state(directory: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's saved model weights as full tensors in this process, whatever number of ranks
    wrote them (the frozen modules' weights are at their sources, see frozen.json)."""
    return read_saved_tensors(Path(directory), "model")


def read_saved_tensors(directory: Path, part: str) -> dict[str, torch.Tensor]:
    """Every tensor under `part` ("model", or "optimizer": its moments by parameter name) of a
    checkpoint, whole, in this process; keys without the part's prefix."""

    reader = CheckpointReader(str(Path(directory) / WEIGHTS))
    metadata = reader.read_metadata().state_dict_metadata
    state = {
        key: torch.empty(entry.size, dtype=entry.properties.dtype)
        for key, entry in metadata.items()
        if key.startswith(part + ".") and isinstance(entry, TensorStorageMetadata)
    }
    with _quiet_single_process():
        dcp.load(state, storage_reader=reader, no_dist=True)
    return {key.removeprefix(part + "."): value for key, value in state.items()}


def weights_fingerprint(directory: Path) -> str:
    """Which weights a checkpoint holds: a digest over its weight files' checksums."""
    directory = Path(directory)
    digests = {}
    for path in sorted(directory.glob("checksums*.json")):
        digests.update(json.loads(path.read_text()))
    weights = sorted(
        (name, digest) for name, digest in digests.items() if name.startswith(WEIGHTS + "/") or name == FROZEN
    )
    if not weights:
        weights = [(name, _sha256(directory / name)) for name in _files(directory) if name.startswith(WEIGHTS + "/")]
    return hashlib.sha256(json.dumps(weights).encode()).hexdigest()


class CheckpointReader(FileSystemReader):
    """DCP's file reader, but its .metadata pickle goes through mmtrain's allow-list
    (training/checkpoint/metadata.py): a checkpoint from elsewhere cannot run code when it is opened."""

    def read_metadata(self, *args, **kwargs):

        path = self._get_metadata_path(kwargs.get("rank"))
        with self.fs.create_stream(path, "rb") as metadata_file:
            metadata = load_metadata(metadata_file, Path(path).stat().st_size)
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


def load_config_dict(directory: Path) -> dict:
    path = Path(directory) / "config.yaml"
    if path.stat().st_size > MAX_JSON_BYTES:
        raise ValueError(f"{path} is over {MAX_JSON_BYTES} bytes: not a config mmtrain wrote")
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not readable YAML ({err})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path} must hold a mapping")
    return config


def load_tracking_run_id(directory: Path) -> str:
    """The MLflow run id saved with the checkpoint ("" when none was)."""
    path = Path(directory) / "tracking.json"
    saved = _read_json(path) if path.is_file() else {}
    run_id = saved.get("mlflow_run_id", "") if isinstance(saved, dict) else ""
    return run_id if isinstance(run_id, str) else ""


def load_data_position(directory: Path) -> dict | None:
    """The data position saved with the checkpoint (None for one saved without: its epoch restarts)."""
    path = Path(directory) / DATA_POSITION
    position = _read_json(path, MAX_POSITION_BYTES) if path.is_file() else None
    if position is not None and not isinstance(position, dict):
        raise ValueError(f"{DATA_POSITION} must be a mapping")
    return position


def is_checkpoint(path: Path) -> bool:
    return (path / WEIGHTS).is_dir()


STEP_NAME = re.compile(r"^checkpoint_(\d{6,})_")


def checkpoint_name(step: int) -> str:
    """`checkpoint_000500_<time>`: named by step, and unique when two attempts of a run save at the
    same step (a resumed run that ends at once saves again)."""
    now = time.time_ns()
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S", time.gmtime(now // 10**9))
    return f"checkpoint_{step:06d}_{stamp}.{now % 10**9:09d}"


def _age(path: Path) -> tuple:
    """Sorts checkpoints oldest first: by step, then time; a name without a step (Ray's own
    timestamp, from before checkpoints were named by step) before any that has one."""
    match = STEP_NAME.match(path.name)
    return (1, int(match.group(1)), path.name) if match else (0, 0, path.name)


def latest_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory itself, or the newest intact `checkpoint_*` inside a run directory
    (a damaged newer one is skipped, saying which and why). `RUN/latest` is the run's newest."""
    path = Path(path)
    if path.name == "latest" and not path.exists():
        path = path.parent
    if is_checkpoint(path):
        problem = checkpoint_problem(path)
        if problem:
            raise ValueError(
                f"checkpoint {path} is damaged: {problem}; give the run directory to use its newest intact checkpoint"
            )
        return path
    for candidate in sorted((p for p in path.glob("checkpoint_*") if p.is_dir()), key=_age, reverse=True):
        problem = checkpoint_problem(candidate)
        if problem is None:
            return candidate
        print(f"[mmtrain] skipping checkpoint {candidate}: {problem}", flush=True)
    raise ValueError(
        f"no intact checkpoint in {path}: give a checkpoint directory (with {WEIGHTS}/) or a run "
        "directory that holds checkpoint_* folders"
    )
