"""One data stream per run, and exact mid-epoch resumption: every sample of every epoch is trained
on exactly once across all ranks, through a killed worker, a killed driver and a change of worker
count. Real Ray Train workers, real shards; the checkpoints' data positions are the record."""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest

from mmtrain.pipelines.position import DataPosition
from mmtrain.training.checkpoint.store import latest_checkpoint
from mmtrain.training.config.io import load_config
from mmtrain.training.config.schema import ClipRunConfig

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
EPOCHS = 3
SHARDS, PER_SHARD = 4, 64  # the synth_dir fixture's training data, all good samples


def _overrides(synth_dir, out, name, workers=2, batch=8):
    return [
        f"run.name={name}",
        f"run.output_dir={out}",
        f"loop.epochs={EPOCHS}",
        "loop.max_steps=1000",
        f"loop.batch_size_per_worker={batch}",
        f"scaling.num_workers={workers}",
        "loop.checkpoint_every=5",
        f"data.train_shards=[{synth_dir}/train-*.tar]",
        "data.eval_shards=[]",
        "tracking.tracking_uri=none",
    ]


def _assert_each_sample_once_per_epoch(run_dir: Path) -> None:
    """The final checkpoint's record: each epoch consumed every sample of every shard, none twice."""
    checkpoint = latest_checkpoint(run_dir)
    position = DataPosition.from_json(json.loads((checkpoint / "data_position.json").read_text()))
    state = json.loads((checkpoint / "state.json").read_text())
    assert state["epoch"] == EPOCHS and state["step"] == EPOCHS * SHARDS * PER_SHARD // 16
    # Finished epochs keep counts only: with no repeats, every sample once each.
    assert position.epochs() == list(range(EPOCHS)) and set(position.finished) == set(range(EPOCHS))
    for epoch in range(EPOCHS):
        assert position.repeated.get(epoch, 0) == 0, (epoch, position.repeated)
        assert position.consumed_by_shard(epoch) == {shard: PER_SHARD for shard in range(SHARDS)}, epoch


def test_three_epochs_are_one_stream_each_sample_once(ray_local, synth_dir, tmp_path):
    from mmtrain.training.ray_train.driver import run_training

    cfg = load_config(
        ClipRunConfig, REPO / "conf/clip/tiny.yaml", _overrides(synth_dir, tmp_path, "epochs") + ["data.workers=2"]
    )
    metrics = run_training(cfg)
    assert metrics["train_data/pool_actors_started"] == 2  # one pool for the run, not one per epoch
    assert metrics["epoch"] == EPOCHS and metrics["train_data/good_samples"] == EPOCHS * SHARDS * PER_SHARD
    _assert_each_sample_once_per_epoch(tmp_path / "epochs")


def _kill_a_worker_and_finish(proc, run_dir: Path, log: Path, delay: float) -> None:
    """SIGKILL one Ray Train worker `delay` s after a new checkpoint; the run must still finish."""
    from tests.integration.test_clip_training import _train_workers_of

    try:
        wait_for_new_checkpoints(proc, run_dir, 1, log)
        time.sleep(delay)
        workers = _train_workers_of(proc.pid)
        assert workers, "no Ray Train worker process found to kill"
        os.kill(workers[-1].pid, signal.SIGKILL)
        assert proc.wait(timeout=400) == 0, log.read_text()[-3000:]
    finally:
        _stop(proc)


def _start(synth_dir, out, log_path, overrides, trainer="clip", preset="conf/clip/tiny.yaml"):
    args = [sys.executable, "-m", "mmtrain", "train", trainer, "--config", str(REPO / preset)]
    args += ["--set", "run.local_num_cpus=6", "--set", "run.resume=auto"]  # re-run as a restarted job would be
    for override in overrides:
        args += ["--set", override]
    return subprocess.Popen(args, cwd=REPO, stdout=log_path.open("a"), stderr=subprocess.STDOUT, start_new_session=True)


def registered_checkpoints(run_dir: Path) -> set[str]:
    """The checkpoints Ray Train's controller has registered, those a restart resumes from (a
    directory on disk may not be registered yet when its worker dies)."""
    path = run_dir / "checkpoint_manager_snapshot.json"
    for _ in range(100):
        if not path.is_file():
            return set()
        try:
            snapshot = json.loads(path.read_text())
            return {result["checkpoint_dir_name"] for result in snapshot["checkpoint_results"]}
        except (OSError, ValueError):  # caught mid-write (or its writer was killed mid-write): read again
            time.sleep(0.1)
    raise AssertionError(f"{path} stays unreadable")


def wait_for_new_checkpoints(proc, run_dir: Path, count: int, log_path: Path) -> None:
    """Until the controller has registered `count` checkpoints not registered on entry."""
    before, deadline = registered_checkpoints(run_dir), time.time() + 300
    seen: set[str] = set()
    while len(seen) < count:
        assert proc.poll() is None, log_path.read_text()[-3000:]
        assert time.time() < deadline, "no checkpoint registered in 300 s"
        time.sleep(0.2)
        seen |= registered_checkpoints(run_dir) - before


def _stop(proc) -> None:
    """SIGKILL the driver and every process it started (its local Ray instance, Train workers,
    data actors), and wait until they are gone: none of them may register a checkpoint later."""
    if proc.poll() is not None:
        return
    family = psutil.Process(proc.pid).children(recursive=True)
    os.killpg(proc.pid, signal.SIGKILL)
    for child in family:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(family, timeout=30)
    proc.wait()


def test_a_killed_worker_resumes_mid_epoch_and_loses_or_repeats_nothing(synth_dir, tmp_path):
    seed = random.randrange(10**6)
    delay = random.Random(seed).uniform(0, 2)  # somewhere after a checkpoint, mid-epoch
    log = tmp_path / "train.log"
    proc = _start(synth_dir, tmp_path, log, _overrides(synth_dir, tmp_path, "worker"))
    _kill_a_worker_and_finish(proc, tmp_path / "worker", log, delay)
    assert "[mmtrain] resumed worker at step" in log.read_text(), f"seed {seed}"
    _assert_each_sample_once_per_epoch(tmp_path / "worker")


def test_a_killed_driver_resumes_exactly_and_on_fewer_workers(synth_dir, tmp_path):
    """Kill the whole driver twice at random points after a checkpoint; re-run the same command,
    then finish the run on one worker (the same global batch): each sample once per epoch."""
    rng = random.Random(seed := random.randrange(10**6))
    run_dir, log = tmp_path / "driver", tmp_path / "train.log"
    for workers in (2, 2):
        proc = _start(synth_dir, tmp_path, log, _overrides(synth_dir, tmp_path, "driver", workers))
        try:
            wait_for_new_checkpoints(proc, run_dir, 1, log)
            time.sleep(rng.uniform(0, 2))
        finally:
            _stop(proc)
        assert proc.returncode != 0, f"the run finished before it was killed (seed {seed})"
    proc = _start(synth_dir, tmp_path, log, _overrides(synth_dir, tmp_path, "driver", workers=1, batch=16))
    try:
        assert proc.wait(timeout=400) == 0, log.read_text()[-3000:]
    finally:
        _stop(proc)
    lines = log.read_text().splitlines()
    resumes = [line for line in lines if "[mmtrain] resumed driver at step" in line]
    assert len(resumes) == 2, (f"seed {seed}", resumes)  # two resumed attempts, each line printed once
    last_run = lines[lines.index(resumes[-1]) :]
    steps = Counter(line for line in last_run if "[mmtrain] step " in line)
    assert steps and max(steps.values()) == 1, steps.most_common(2)  # Ray's print patch doubled every line
    assert any(re.search(r"\[mmtrain\] step \d+/\d+ \(\d+%\) loss ", line) for line in steps)  # step/total
    # Ray's INFO chatter stays in its session logs (mmtrain --verbose shows it)
    for chatter in (
        "Execution plan of Dataset",
        "Requesting resources",
        "Started a local Ray instance",
        "Checkpoint successfully created",
        "Progress bars disabled",
        "RayDeprecationWarning",
        "has constructor arguments in the object store",
        "PYTHON worker processes have been started",
    ):
        assert chatter not in log.read_text(), chatter
    _assert_each_sample_once_per_epoch(run_dir)


MIXTURE = (
    "data.sources=[{{shards: [{0}/train-*.tar], weight: 8, name: big}}, "
    "{{shards: [{0}/val-*.tar], weight: 3, name: small}}]"
)


def test_a_mixture_streams_its_weights_over_10000_samples(ray_local, synth_dir):
    """256 samples at weight 8 and 64 at weight 3: an epoch reads the small source 96 times in 352,
    its whole shard once and then half of it. The stream, blended into batches as a training worker
    blends it, gives each source its share to the row over 10,000 samples."""
    import numpy as np

    from mmtrain.pipelines import contract, position
    from mmtrain.pipelines.blend import SourceBlend
    from mmtrain.pipelines.dataset import build_dataset
    from mmtrain.training.tasks.resolve import list_shards

    overrides = ["data.train_shards=[]", "data.eval_shards=[]", MIXTURE.format(synth_dir)]
    cfg = load_config(ClipRunConfig, REPO / "conf/clip/tiny.yaml", overrides)
    assert [s.weight for s in cfg.data.sources] == [8, 3]
    shards = list_shards(cfg.data).train
    assert shards.mix.targets == (256, 96)
    dataset = build_dataset(cfg.data, shards, train=True, columns=(contract.POSITION,), epochs=30)
    blend = SourceBlend(np.asarray(shards.mix.source_of), np.asarray(shards.mix.targets, float), batch_size=100)
    seen = []
    for batch in blend(dataset.iter_batches(batch_size=100, batch_format="numpy")):
        seen.append(batch[contract.POSITION])
        if sum(len(s) for s in seen) >= 10_000:
            break
    _, shard, _ = position.unpack(np.concatenate(seen)[:10_000])
    small = np.isin(shard, [i for i, source in enumerate(shards.mix.source_of) if source == 1]).mean()
    assert abs(small - 3 / 11) <= 1 / 10_000, small


def test_a_killed_driver_resumes_a_mixture_at_its_exact_ratio(synth_dir, tmp_path):
    """Kill the driver after a checkpoint and run the command again: every epoch still reads each
    source exactly its share (256 + 96 samples), nothing twice, and MLflow gets each source's count."""
    from mlflow.tracking import MlflowClient

    run_dir, log = tmp_path / "mixture", tmp_path / "train.log"
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    overrides = _overrides(synth_dir, tmp_path, "mixture")[:-1] + [f"tracking.tracking_uri={tracking}"]
    overrides = [o for o in overrides if not o.startswith("data.train_shards")] + ["data.train_shards=[]"]
    overrides.append(MIXTURE.format(synth_dir))
    proc = _start(synth_dir, tmp_path, log, overrides)
    try:
        wait_for_new_checkpoints(proc, run_dir, 1, log)
        time.sleep(random.uniform(0, 2))
    finally:
        _stop(proc)
    proc = _start(synth_dir, tmp_path, log, overrides)
    try:
        assert proc.wait(timeout=400) == 0, log.read_text()[-3000:]
    finally:
        _stop(proc)
    assert "[mmtrain] resumed mixture at step" in log.read_text()
    position = DataPosition.from_json(json.loads((latest_checkpoint(run_dir) / "data_position.json").read_text()))
    small_shards = {4 + copy for copy in range(2)}  # after the 4 big shards: the val shard, twice
    for epoch in range(EPOCHS):
        assert position.repeated.get(epoch, 0) == 0
        per_shard = position.consumed_by_shard(epoch)
        assert sum(n for s, n in per_shard.items() if s not in small_shards) == 256, per_shard
        assert sum(n for s, n in per_shard.items() if s in small_shards) == 96, per_shard
    client = MlflowClient(tracking)
    (run,) = client.search_runs([client.get_experiment_by_name("mmtrain-clip").experiment_id])
    assert run.data.metrics["train_data/source/big/samples"] == EPOCHS * 256
    assert run.data.metrics["train_data/source/small/samples"] == EPOCHS * 96
    assert json.loads((latest_checkpoint(run_dir) / "state.json").read_text())["epoch"] == EPOCHS


def test_a_killed_worker_resumes_packed_vlm_rows_exactly(synth_dir, tmp_path):
    """Packed rows (several samples each) through a killed worker: a sample counts as trained on only
    when its row was stepped on, so no sample of any epoch is trained twice and the first epoch is
    trained whole (the stream's last rows may not fill a batch)."""
    from mmtrain.pipelines.inspection import iter_captions
    from mmtrain.training.models.language_model import make_tiny_lm
    from tests.unit.test_vision_encoders import save_hf_tower

    tower = save_hf_tower(tmp_path / "tower", "clip", image_size=32, full=True)
    lm = make_tiny_lm(tmp_path / "lm", iter_captions([str(synth_dir)]), vocab_size=400, hidden_size=64)
    overrides = [o for o in _overrides(synth_dir, tmp_path, "packed", batch=4) if not o.startswith("loop.epochs")]
    overrides += [f"model.vision.checkpoint={tower}", f"model.lm.path={lm}", "loop.epochs=2", "max_length=64"]
    overrides += ["data.packing.max_tokens=160", "loop.checkpoint_every=3"]
    log = tmp_path / "train.log"
    proc = _start(synth_dir, tmp_path, log, overrides, trainer="vlm", preset="conf/vlm/stage1.yaml")
    _kill_a_worker_and_finish(proc, tmp_path / "packed", log, random.uniform(0, 1))
    assert "[mmtrain] resumed packed at step" in log.read_text()
    checkpoint = latest_checkpoint(tmp_path / "packed")
    position = DataPosition.from_json(json.loads((checkpoint / "data_position.json").read_text()))
    assert not any(position.repeated.values()), position.repeated
    for shard in range(SHARDS):
        assert position.consumed_in(0, shard) == PER_SHARD, shard
    steps = json.loads((checkpoint / "state.json").read_text())["step"]
    assert steps * 2 * 4 < position.total_consumed()  # rows held several samples each
