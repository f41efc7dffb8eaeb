"""Compose the pipeline: shards -> robust read -> decode + augment -> tokenize.

    read (ShardDatasource, one task per file group, file order reshuffled each epoch)
      -> decode_and_augment (tasks; bad rows counted in the SampleLedger and dropped)
      -> Tokenize (actor pool; tokenizer loaded once per actor)
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import ray
from ray.data import ActorPoolStrategy, DataContext, ExecutionResources, FileShuffleConfig

from pipelines.config import DataConfig
from pipelines.ledger import check_bad_fraction
from pipelines.datasource import ShardDatasource
from pipelines.sources import resolve_shards
from pipelines.stages import Tokenize, decode_and_augment

DECODE_CPUS = 0.5   # fractional CPUs let data tasks share a small machine with training workers
TOKENIZE_CPUS = 0.25


def build_dataset(cfg: DataConfig, shard_specs: list[str], *, train: bool, ledger=None,
                  columns: tuple[str, ...] | None = None, text_stage: tuple[type, dict] | None = None
                  ) -> ray.data.Dataset:
    """The Ray Dataset for one split. `ledger` (a SampleLedger handle) receives bad-sample counts;
    `columns` keeps only those; `text_stage` replaces caption tokenizing (class, constructor kwargs)."""
    shards = resolve_shards(shard_specs, cfg.s3_endpoint)
    shuffle = None
    if train and cfg.shuffle_seed is not None:
        shuffle = FileShuffleConfig(seed=cfg.shuffle_seed, reseed_after_execution=True)
    elif train:
        shuffle = "files"
    source = ShardDatasource(shards.paths, filesystem=shards.filesystem, shuffle=shuffle)
    dataset = ray.data.read_datasource(source, override_num_blocks=len(shards.paths))
    dataset = dataset.map_batches(
        decode_and_augment,
        fn_kwargs=dict(augment=cfg.augment, train=train, max_pixels=cfg.max_image_pixels,
                       keep_conversation=cfg.with_conversations, ledger=ledger),
        batch_size=cfg.decode_batch_size,
        num_cpus=DECODE_CPUS,
    )
    if text_stage is None:
        text_stage = (Tokenize, dict(tokenizer_path=resolve_tokenizer(cfg, shard_specs),
                                     context_length=cfg.context_length))
    stage_class, stage_kwargs = text_stage
    dataset = dataset.map_batches(
        stage_class,
        fn_constructor_kwargs=stage_kwargs,
        batch_size=cfg.tokenize_batch_size,
        compute=ActorPoolStrategy(size=cfg.tokenize_actors),
        num_cpus=TOKENIZE_CPUS,
    )
    if columns:
        dataset = dataset.select_columns(list(columns))
    return dataset


def resolve_tokenizer(cfg: DataConfig, shard_specs: list[str]) -> str:
    """data.tokenizer, else the tokenizer.json that `data synth`/`data convert` wrote beside the shards."""
    if cfg.tokenizer:
        return cfg.tokenizer
    first = shard_specs[0]
    if "://" not in first:
        candidate = (Path(first) if Path(first).is_dir() else Path(first).parent) / "tokenizer.json"
        if candidate.is_file():
            return str(candidate)
    raise ValueError(
        f"no tokenizer for {first}: set data.tokenizer to a tokenizer.json or HF model directory "
        "(make one with `mmtrain data tokenizer SHARDS --out tokenizer.json`)"
    )


def limit_data_resources(cfg: DataConfig, train_worker_cpus: float) -> Optional[float]:
    """Cap Ray Data's CPUs so the training workers keep theirs (Train does not do this for us).

    Must run in the driver before the trainer is built; returns the cap applied.
    """
    limit = cfg.data_cpu_limit
    if limit <= 0:
        limit = max(ray.cluster_resources().get("CPU", 1.0) - train_worker_cpus, 1.0)
    DataContext.get_current().execution_options.resource_limits = ExecutionResources(cpu=limit)
    return limit


def check_data_quality(cfg: DataConfig, ledger) -> dict:
    """The ledger's summary; raises TooManyBadSamples past data.max_bad_fraction."""
    summary = ray.get(ledger.summary.remote())
    check_bad_fraction(summary, cfg.max_bad_fraction, cfg.min_samples_for_bad_check)
    return summary
