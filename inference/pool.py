"""The batch-inference pipeline: the training pipeline's robust reader and eval decode (bad samples
skipped and counted in a SampleLedger), then a pool of model replicas, one per Ray Data actor.

    shards, or a folder of images (pipelines/image_folder.py)
           -> read/decode/tokenize pool (pipelines/dataset.py, one pass in file order)
           -> model pool (`model_stage`: loads the model once per actor, a GPU each when asked)
           -> Ray Data's Parquet writer, or rows handed to the caller
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import ray
from ray.data import ActorPoolStrategy

from mmtrain.inference.progress import ProgressCounter, ProgressPrinter
from mmtrain.inference.trained import TrainedRun
from mmtrain.pipelines import contract, position
from mmtrain.pipelines.dataset import build_dataset, map_stages
from mmtrain.pipelines.image_folder import ImageFolderDatasource, folder_labels, image_files
from mmtrain.pipelines.ledger import SampleLedger
from mmtrain.pipelines.sources import ShardList, count_dataset_samples, resolve_shards
from mmtrain.pipelines.stages import Tokenize
from mmtrain.training.ray_train.driver import ensure_ray

# What the model stage receives: the image and tokenized caption, and what the output rows keep.
INFERENCE_COLUMNS = (
    contract.IMAGE,
    contract.INPUT_IDS,
    contract.ATTENTION_MASK,
    contract.LABEL,
    contract.KEY,
    contract.POSITION,
    "caption",
)


WRITER_CPUS = 0.5  # per Parquet write task


@dataclass(frozen=True)
class PoolOptions:
    actors: int = 2  # model replicas
    gpus_per_actor: float = 0.0  # 0: CPU replicas
    cpus_per_actor: float = 1.0
    batch_size: int = 128  # rows per model call
    data_workers: int = 0  # read/decode actors; 0 = the run's data.workers, else data_pool_size
    ray_address: str = ""  # "" = $RAY_ADDRESS, else a local Ray instance


@dataclass
class InferenceRun:
    """A started pipeline: `dataset` is lazy; the ledger and counter fill as it executes."""

    dataset: ray.data.Dataset
    ledger: object  # SampleLedger handle: good count and bad samples by reason
    counter: object  # ProgressCounter handle: rows the model pool has finished
    sources: list[str]  # what each row's shard number names: a shard, or the image folder
    shards: ShardList | None  # None for an image folder
    total_samples: int  # from the tar headers (good and bad), or the image files
    started: float


def start_inference(
    run: TrainedRun,
    specs: list[str],
    model_stage: type,
    stage_kwargs: dict,
    options: PoolOptions,
    text_stage: tuple[type, dict] | None = None,
    columns: tuple[str, ...] = INFERENCE_COLUMNS,
    classes: list[str] = (),
    files: list[str] | None = None,
) -> InferenceRun:
    """Lists the shards or image files (a mistyped path fails before Ray starts), starts Ray, composes
    the pipeline. `classes` label an image folder's files by their subfolder's name; `files` (paths
    under the one folder in `specs`) reads those images only, in that order."""

    if files is None:
        files = image_files(specs[0]) if len(specs) == 1 else []
    shards = None if files else resolve_shards(specs, run.cfg.data.s3_endpoint)
    ensure_ray(options.ray_address, run.cfg.run.local_num_cpus)
    started = time.perf_counter()
    ledger, counter = SampleLedger.remote(), ProgressCounter.remote()
    data_cfg = run.cfg.data
    data_cfg = dataclasses.replace(
        data_cfg, workers=options.data_workers or data_cfg.workers or data_pool_size(options, data_cfg.cpus_per_worker)
    )
    text_stage = (
        (text_stage[0], {**text_stage[1], "ledger": ledger})
        if text_stage
        else (Tokenize, dict(tokenizer_path=data_cfg.tokenizer, context_length=data_cfg.context_length, ledger=ledger))
    )
    if files:
        dataset, sources = _image_folder_rows(specs[0], files, classes, data_cfg, ledger, columns, text_stage)
        total = len(files)
    else:
        dataset = build_dataset(data_cfg, specs, train=False, ledger=ledger, columns=columns, text_stage=text_stage)
        sources, total = shards.paths, count_dataset_samples(shards)
    dataset = dataset.map_batches(
        model_stage,
        fn_constructor_kwargs={**stage_kwargs, "run": run, "shard_paths": sources, "counter": counter},
        batch_size=options.batch_size,
        # One task per replica at a time: a queue behind a busy replica would leave another idle
        # (blocks are a shard's rows, so a few blocks are minutes of work on a CPU).
        compute=ActorPoolStrategy(size=options.actors, max_tasks_in_flight_per_actor=1),
        num_cpus=options.cpus_per_actor,
        num_gpus=options.gpus_per_actor or None,
    )
    return InferenceRun(dataset, ledger, counter, sources, shards, total, started)


def _image_folder_rows(folder: str, files: list[str], classes, data_cfg, ledger, columns, text_stage):
    """(decoded rows of a folder's image files, what each row's shard number names)."""
    source = ImageFolderDatasource(folder, files, folder_labels(files, list(classes)), data_cfg.decode_batch_size)
    sources = [str(Path(folder).resolve())] * len(source.chunks())
    dataset = ray.data.read_datasource(source, override_num_blocks=len(sources), num_cpus=data_cfg.cpus_per_worker)
    return map_stages(
        dataset,
        data_cfg,
        train=False,
        ledger=ledger,
        columns=columns,
        text_stage=text_stage,
        workers=min(data_cfg.workers, len(sources)),
    ), sources


def data_pool_size(options: PoolOptions, cpus_per_worker: float) -> int:
    """Read/decode actors beside the model pool. GPU replicas wait on decoding: it gets every CPU the
    replicas and the writer leave. CPU replicas are the bottleneck themselves (a tiny CLIP embeds
    ~4,000 images/s per actor where one decode actor delivers ~1,500; real models are far slower),
    so one decode actor per two replicas, and the rest of the CPUs stay with the model."""
    if options.gpus_per_actor > 0:
        spare = ray.cluster_resources().get("CPU", 1.0) - options.actors * options.cpus_per_actor - WRITER_CPUS
        return max(1, int(spare // cpus_per_worker))
    return max(1, options.actors // 2)


def write_parquet(inference: InferenceRun, out_dir: Path, label: str) -> int:
    """Runs the pipeline into Parquet files in `out_dir` (Ray Data's writer), printing progress;
    returns the rows written. A directory that already holds Parquet files is refused: the new rows
    would be appended to the old ones."""
    out_dir = Path(out_dir)
    if parquet_files(out_dir):
        raise ValueError(f"--out {out_dir} already holds Parquet files: choose a new directory or remove it")
    with ProgressPrinter(inference.counter, inference.total_samples, label):
        # Writers are short tasks: without CPUs set aside they queue behind the actor pools' CPUs.
        inference.dataset.write_parquet(str(out_dir), ray_remote_args={"num_cpus": WRITER_CPUS})
    return sum(pq.ParquetFile(path).metadata.num_rows for path in parquet_files(out_dir))


def parquet_files(directory: Path) -> list[Path]:
    """The Parquet files of an output directory, in a fixed order (a search index numbers rows by it)."""
    return sorted(Path(directory).glob("*.parquet")) if Path(directory).is_dir() else []


def run_summary(inference: InferenceRun, run: TrainedRun, specs: list[str], rows: int) -> dict:
    """What every batch-inference manifest records: the model, the data, and where each sample went."""
    counts = ray.get(inference.ledger.summary.remote())
    return {
        "model": {"kind": run.kind, "checkpoint": str(run.checkpoint), "model_sha256": run.fingerprint},
        "data": list(specs),
        "shards": len(set(inference.sources)) if inference.shards is None else len(inference.shards),
        "samples_in_shards": inference.total_samples,
        "good_samples": counts["good"],
        "rows_written": rows,
        "bad_samples": counts["bad"],
        "bad_total": counts["bad_total"],
        "seconds": round(time.perf_counter() - inference.started, 1),
    }


# Beside the Parquet files, names that Parquet readers skip (a leading "_"), so that
# `pandas.read_parquet(OUT)` reads the rows and nothing else.
MANIFEST = "_manifest.json"


def write_manifest(out_dir: Path, manifest: dict) -> Path:
    path = Path(out_dir) / MANIFEST
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def source_columns(batch: dict, shard_paths: list[str]) -> dict:
    """The columns that say where each row came from: key, shard path, caption, label."""
    shards = position.unpack(batch[contract.POSITION])[1]
    return {
        "key": batch[contract.KEY],
        "shard": np.asarray(shard_paths)[shards],
        "caption": batch["caption"],
        "label": batch[contract.LABEL],
    }
