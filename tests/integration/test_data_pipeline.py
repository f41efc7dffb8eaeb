"""The Ray Data pipeline on a real local Ray instance, real shards, and a real S3 server."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pytest
import ray

from mmtrain.pipelines import bad_samples, contract, datasource
from mmtrain.pipelines.bad_samples import TooManyBadSamples
from mmtrain.pipelines.config import AugmentConfig, DataConfig
from mmtrain.pipelines.dataset import build_dataset, check_data_quality
from mmtrain.pipelines.datasource import EpochShardDatasource
from mmtrain.pipelines.ledger import SampleLedger
from mmtrain.pipelines.position import unpack
from mmtrain.pipelines.sources import resolve_shards
from tests.assets import free_port, write_bad_shards, write_malformed_shards

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def _cfg(**kw):
    return DataConfig(augment=AugmentConfig(image_size=32), context_length=16, **kw)


def test_output_matches_contract(ray_local, synth_dir):
    cfg = _cfg(with_conversations=True)
    batch = build_dataset(cfg, [str(synth_dir / "train-*.tar")], train=True).take_batch(8)
    contract.check_batch(batch, image_size=32, context_length=16)
    assert contract.CONVERSATION in batch and batch[contract.IMAGE].shape[1:] == (1, 32, 32, 3)  # VLM slots
    eval_batch = build_dataset(
        cfg, [str(synth_dir / "val-*.tar")], train=False, columns=contract.TENSOR_COLUMNS
    ).take_batch(4)
    assert set(eval_batch) == set(contract.TENSOR_COLUMNS)


def test_the_same_seed_gives_the_same_augmented_samples(ray_local, synth_dir):
    """Crops and flips come from (data.shuffle_seed, execution, shard, sample): two pipelines with
    the same seed produce the same images for every key (whatever order the actors deliver them
    in), and another seed different ones. Before, augmentation drew from an unseeded generator."""

    def images_by_key(seed):
        cfg = DataConfig(
            shuffle_seed=seed, augment=AugmentConfig(image_size=24, crop_scale=(0.3, 1.0)), context_length=16
        )
        dataset = build_dataset(
            cfg, [str(synth_dir / "train-*.tar")], train=True, columns=(contract.KEY, contract.IMAGE)
        )
        return {row[contract.KEY]: row[contract.IMAGE] for row in dataset.take_all()}

    first, again, other = images_by_key(7), images_by_key(7), images_by_key(8)
    assert first.keys() == again.keys() == other.keys() and len(first) == 256
    assert all(np.array_equal(first[key], again[key]) for key in first)
    assert sum(not np.array_equal(first[key], other[key]) for key in first) > 200


def test_bad_inputs_counted_and_every_good_sample_arrives(ray_local, tmp_path):
    expected = write_bad_shards(tmp_path / "shards", tmp_path / "unpickled")
    tokenizer = _tokenizer(tmp_path)
    cfg = _cfg(tokenizer=tokenizer, max_image_pixels=4_000_000, max_bad_fraction=0.5, min_samples_for_bad_check=1)
    ledger = SampleLedger.remote()
    rows = build_dataset(cfg, [str(tmp_path / "shards")], train=True, ledger=ledger).take_all()
    assert {row[contract.KEY] for row in rows} == expected["good_keys"]
    summary = check_data_quality(cfg, ledger)
    assert summary["good"] == len(expected["good_keys"])
    for reason in (
        bad_samples.TRUNCATED_TAR,
        bad_samples.CORRUPT_TAR,
        bad_samples.NOT_AN_IMAGE,
        bad_samples.MISSING_CAPTION,
        bad_samples.EMPTY_CAPTION,
        bad_samples.OVERSIZED_IMAGE,
        bad_samples.PICKLE_MEMBER,
    ):
        assert summary["bad"].get(reason, 0) >= 1, reason
    assert not (tmp_path / "unpickled").exists()

    strict = _cfg(tokenizer=tokenizer, max_bad_fraction=0.05, min_samples_for_bad_check=1)
    with pytest.raises(TooManyBadSamples, match="max_bad_fraction"):
        check_data_quality(strict, ledger)


def test_every_malformed_input_counts_the_same_in_inspect_the_pipeline_and_a_training_run(ray_local, tmp_path):
    """Inputs that each once failed a whole run (Ray retried, then gave up, never naming the shard)
    are skipped and counted by reason, the same in `data inspect` and the Ray Data pipeline, and a
    training run on 2 workers over them finishes and reports them."""
    from mmtrain.jobs.data import write_tokenizer
    from mmtrain.pipelines.inspection import inspect_shards
    from mmtrain.training.config.io import load_config
    from mmtrain.training.config.schema import ClipRunConfig
    from mmtrain.training.ray_train.driver import run_training

    shards = tmp_path / "shards"
    expected = write_malformed_shards(shards)
    write_tokenizer([str(shards)], shards / "tokenizer.json", vocab_size=300)
    report = inspect_shards([str(shards)])
    assert (report["total"]["good"], report["total"]["bad"]) == (expected["good"], expected["bad"])

    cfg = DataConfig(
        augment=AugmentConfig(image_size=32),
        context_length=16,
        tokenizer=str(shards / "tokenizer.json"),
        with_conversations=True,
    )
    ledger = SampleLedger.remote()
    rows = build_dataset(cfg, [str(shards)], train=True, ledger=ledger).take_all()
    summary = ray.get(ledger.summary.remote())
    assert len(rows) == summary["good"] == expected["good"]
    assert summary["bad"] == expected["bad"]

    run = load_config(
        ClipRunConfig,
        REPO / "conf/clip/tiny.yaml",
        [
            f"data.train_shards=[{shards}]",
            "data.eval_shards=[]",
            f"run.output_dir={tmp_path / 'runs'}",
            "run.name=malformed",
            "loop.max_steps=3",
            "loop.batch_size_per_worker=8",
            "data.max_bad_fraction=0.9",
            "tracking.tracking_uri=none",
            "scaling.num_workers=2",
        ],
    )
    metrics = run_training(run)
    assert metrics["step"] == 3
    for reason, count in expected["bad"].items():  # the run's ledger saw at least one epoch's worth
        assert metrics[f"train_data/bad/{reason}"] >= count, reason


def test_bad_shard_in_the_same_read_task_keeps_good_shards(ray_local, tmp_path):
    """Ray's own reader drops a whole read task on one bad tar; ours keeps the good shard."""
    expected = write_bad_shards(tmp_path / "shards", tmp_path / "unpickled")
    shards = resolve_shards([str(tmp_path / "shards" / "garbage.tar"), str(tmp_path / "shards" / "good.tar")])
    rows = ray.data.read_datasource(EpochShardDatasource(shards.paths, shards.filesystem)).take_all()
    good = {r["key"] for r in rows if not r["bad_reason"]}
    assert good == {k for k in expected["good_keys"] if k.startswith("good")}


@pytest.mark.parametrize("max_read_tasks", [20_000, 3], ids=["a-task-per-read", "several-reads-per-task"])
def test_each_epoch_of_the_stream_has_its_own_order_and_the_seed_fixes_it(
    ray_local, synth_dir, max_read_tasks, monkeypatch
):
    """Two epochs in one stream: each holds every sample once, in an order within each shard that
    is a function of (seed, epoch): the same in a second run, different in the next epoch; the same
    again when the run's reads are planned as fewer tasks of several shards each."""
    monkeypatch.setattr(datasource, "MAX_READ_TASKS", max_read_tasks)

    def order_by_epoch_and_shard():
        dataset = build_dataset(
            _cfg(shuffle_seed=3, read_shuffle_buffer=16),
            [str(synth_dir / "train-*.tar")],
            train=True,
            epochs=2,
            columns=(contract.KEY, contract.POSITION),
        )
        orders = {}
        for row in dataset.iter_rows():  # rows of one (epoch, shard) come from one read task, in its order
            epoch, shard, _ = (int(v) for v in unpack(row[contract.POSITION]))
            orders.setdefault((epoch, shard), []).append(row[contract.KEY])
        return orders

    first, again = order_by_epoch_and_shard(), order_by_epoch_and_shard()
    assert first == again and len(first) == 8
    for shard in range(4):
        assert sorted(first[0, shard]) == sorted(first[1, shard]) and len(first[0, shard]) == 64
        assert first[0, shard] != first[1, shard]
    monkeypatch.setattr(datasource, "MAX_READ_TASKS", 3)  # 8 reads: tasks of 3, 1, 3, 1 shards
    assert order_by_epoch_and_shard() == first


def test_a_stream_bounded_by_rows_stops_reading_where_the_run_stops(ray_local, synth_dir):
    """A run of loop.max_steps ends its stream at the rows it trains on (driver.stream_rows): the
    reads stop there too, in-flight reads aside, not at the end of the epochs planned."""
    ledger = SampleLedger.remote()
    dataset = build_dataset(
        _cfg(),
        [str(synth_dir / "train-*.tar")],
        train=True,
        ledger=ledger,
        epochs=10,
        max_rows=100,
        columns=(contract.KEY,),
    )
    assert len(dataset.take_all()) == 100
    read = ray.get(ledger.summary.remote())["good"]
    assert 100 <= read <= 2560 // 2, read  # 10 epochs of 4 shards of 64 were planned


def test_planning_a_100k_shard_10_epoch_run_is_bounded(ray_local):
    """A million reads planned as MAX_READ_TASKS tasks, every (epoch, shard) exactly once, in little
    memory: planning one task per read took 43 s and held 682 MiB (benchmarks/RESULTS.md)."""
    import tracemalloc

    paths = [f"s3://bucket/train-{i:06d}.tar" for i in range(100_000)]
    tracemalloc.start()
    source = EpochShardDatasource(paths, pafs.LocalFileSystem(), epochs=10, seed=0, shuffle_buffer=1000)
    tasks = source.get_read_tasks(1)
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(tasks) == source.num_read_tasks() <= datasource.MAX_READ_TASKS
    assert held < 64 * 2**20, held  # the shard list itself is ~8 MiB
    orders = source.read_orders()
    assert all(sorted(order.tolist()) == list(range(100_000)) for order in orders[:2])
    assert not np.array_equal(orders[0], orders[1])


def _tokenizer(tmp_path):
    from mmtrain.pipelines.tokenizer import train_bpe_tokenizer

    path = tmp_path / "tokenizer.json"
    train_bpe_tokenizer(["a red square number 1"] * 10, vocab_size=300).save(str(path))
    return str(path)


@pytest.fixture
def s3_server(monkeypatch):
    port = free_port()
    server = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)
    else:
        server.kill()
        raise RuntimeError("moto_server did not start")
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    yield f"http://127.0.0.1:{port}"
    server.terminate()
    server.wait(timeout=10)


def test_reads_shards_over_s3(ray_local, synth_dir, s3_server):
    import boto3

    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    client.create_bucket(Bucket="shards")
    for path in sorted(synth_dir.glob("train-*.tar"))[:2]:
        client.upload_file(str(path), "shards", f"synth/{path.name}")
    cfg = _cfg(tokenizer=str(synth_dir / "tokenizer.json"), s3_endpoint=s3_server)
    assert len(resolve_shards("s3://shards/synth/train-{00000..00001}.tar", s3_server)) == 2
    rows = build_dataset(cfg, ["s3://shards/synth/"], train=False).take_all()
    assert len(rows) == 128
    assert np.asarray(rows[0][contract.IMAGE]).shape == (32, 32, 3)
