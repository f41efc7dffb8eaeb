"""Compose the pipeline: shards -> robust read -> decode + augment -> tokenize.

    read (EpochShardDatasource: one read task per epoch and shard, for every epoch of the run)
      -> decode_and_augment (bad rows counted in the SampleLedger and dropped)
      -> Tokenize (a callable class: the tokenizer loads once per actor)

All three stages ask for the same CPUs, so Ray Data fuses them into one actor pool: each actor
reads a shard, decodes and tokenizes it in one process, like a DataLoader worker, and images
cross the object store once, on their way to the trainer. Separate operators cost an
object-store hop per stage and ran the pipeline at 0.3x a plain DataLoader on 2 cores
(benchmarks/RESULTS.md).

A training dataset spans all the epochs of a run, so the pool starts once per run: a new execution
per epoch cost each epoch the pool's start-up (every actor importing Ray Data again).
"""

from __future__ import annotations

import math
import random
from typing import Optional

import ray
from ray.data import ActorPoolStrategy, DataContext, ExecutionResources

from mmtrain.pipelines.config import DataConfig
from mmtrain.pipelines.datasource import EpochShardDatasource
from mmtrain.pipelines.ledger import check_bad_fraction
from mmtrain.pipelines.sources import ShardList, resolve_shards
from mmtrain.pipelines.stages import Tokenize, decode_and_augment
from mmtrain.pipelines.tokenizer import resolve_tokenizer


def build_dataset(
    cfg: DataConfig,
    shards: ShardList | list[str],
    *,
    train: bool,
    ledger=None,
    columns: tuple[str, ...] | None = None,
    text_stage: tuple[type, dict] | None = None,
    epochs: int = 1,
    max_rows: int | None = None,
) -> ray.data.Dataset:
    """The Ray Dataset for one split: `epochs` passes over the shards (training) or one in file
    order (eval). `ledger` (a SampleLedger handle) receives bad-sample counts and tells the reads
    what a resumed run has already used; `columns` keeps only those; `text_stage` replaces caption
    tokenizing (class, constructor kwargs). `shards` are listed already (ShardList), or specs.
    `max_rows` ends the stream after that many good rows: what a run of loop.max_steps trains on."""
    specs = shards if isinstance(shards, list) else shards.specs
    if not isinstance(shards, ShardList):
        shards = resolve_shards(shards, cfg.s3_endpoint)
    seed = None
    if train:  # unseeded: a fresh seed, so each run still reshuffles every epoch
        seed = cfg.shuffle_seed if cfg.shuffle_seed is not None else random.randrange(2**31)
    # No stage sets a batch size: one would stop Ray from fusing the read into the pool (and on a
    # small machine leave the read tasks without a CPU beside the actors). Each stage therefore
    # sees what the read hands on: a shard's rows, coalesced up to Ray's 128 MiB target block size.
    source = EpochShardDatasource(
        shards.paths,
        shards.filesystem,
        epochs=epochs if train else 1,
        seed=seed,
        shuffle_buffer=cfg.read_shuffle_buffer if train else 0,
        rows_per_block=cfg.decode_batch_size,
        ledger=ledger,
        limits=cfg.text_limits,
        mix=shards.mix if train else None,
    )
    dataset = ray.data.read_datasource(
        source, override_num_blocks=source.num_read_tasks(), num_cpus=cfg.cpus_per_worker
    )
    if text_stage is None:
        text_stage = (
            Tokenize,
            dict(tokenizer_path=resolve_tokenizer(cfg, list(specs)), context_length=cfg.context_length, ledger=ledger),
        )
    dataset = map_stages(
        dataset,
        cfg,
        train=train,
        ledger=ledger,
        columns=columns,
        text_stage=text_stage,
        workers=pool_size(cfg, len(shards.paths)),
    )
    # The pool decodes as far ahead as the object store lets it, which for small samples is the
    # whole stream; planned in whole epochs with a margin for bad samples, that is up to two epochs
    # nobody trains on. Ending the stream at the run's need stops the reads there (Ray Data's limit
    # counts rows after the stages, so bad samples dropped by decode are not counted).
    return dataset.limit(max_rows) if max_rows else dataset


def map_stages(
    dataset: ray.data.Dataset,
    cfg: DataConfig,
    *,
    train: bool,
    ledger,
    columns: tuple[str, ...] | None,
    text_stage: tuple[type, dict],
    workers: int,
) -> ray.data.Dataset:
    """Raw rows (datasource.RAW_SCHEMA) -> decode + augment -> the text stage, fused with the read
    into one pool of `workers` actors."""
    cpus = cfg.cpus_per_worker  # the same for every stage, or Ray will not fuse them
    dataset = dataset.map_batches(
        decode_and_augment,
        fn_kwargs=dict(
            augment=cfg.augment,
            train=train,
            max_pixels=cfg.max_image_pixels,
            keep_conversation=cfg.with_conversations,
            ledger=ledger,
            image_slots=cfg.max_images_per_sample if cfg.with_conversations else 0,
        ),
        batch_size=None,
        num_cpus=cpus,
    )
    stage_class, stage_kwargs = text_stage
    return dataset.map_batches(
        stage_class,
        fn_constructor_kwargs={**stage_kwargs, "columns": tuple(columns) if columns else None},
        batch_size=None,
        compute=ActorPoolStrategy(min_size=workers, max_size=workers),  # all start at once
        num_cpus=cpus,
    )


def pool_size(cfg: DataConfig, num_shards: int) -> int:
    """Actors in the fused read/decode/tokenize pool: data.workers, else what Ray Data's CPU cap
    holds; never more than the shards, since one actor reads one shard at a time."""
    return max(1, min(cfg.workers or _actors_within_cap(cfg), num_shards))


def pool_sizes(cfg: DataConfig, train_shards: int, eval_shards: int) -> tuple[int, int]:
    """Actors in a run's training pool and in its held-out set's. The two run at once whenever an
    evaluation comes while the training stream still reads ahead (a mid-run evaluation, or a stream
    longer than the object store holds), so together they stay within Ray Data's CPU cap: a pool
    past it never gets its CPUs, and the training, waiting on the evaluation, waits forever. The
    held-out pool takes at most half. data.workers, when set, sizes each pool as given."""
    if cfg.workers or not eval_shards:
        return pool_size(cfg, train_shards), (pool_size(cfg, eval_shards) if eval_shards else 0)
    actors = _actors_within_cap(cfg)
    held_out = max(1, min(eval_shards, actors // 2))
    return max(1, min(train_shards, actors - held_out)), held_out


def _actors_within_cap(cfg: DataConfig) -> int:
    limit = DataContext.get_current().execution_options.resource_limits.cpu
    if limit is None or math.isinf(limit):
        limit = ray.cluster_resources().get("CPU", 1.0)
    return max(1, int(limit // cfg.cpus_per_worker))


def epochs_for(samples: int, global_batch: int, max_steps: int, max_bad_fraction: float) -> int:
    """Epochs the training stream needs for `max_steps` optimizer steps, when at most
    `max_bad_fraction` of `samples` are bad (more fails the run anyway), plus one for batches that
    straddle epoch boundaries."""
    usable = max(1, int(samples * (1 - max_bad_fraction)))
    return min(math.ceil(max_steps * global_batch / usable) + 1, 1 << 16)


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
