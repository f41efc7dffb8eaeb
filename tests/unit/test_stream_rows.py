"""How many rows a run's training stream holds (training/ray_train/driver.py: stream_rows): what
loop.max_steps trains on, or no bound where that count is not fixed."""

from pathlib import Path
from types import SimpleNamespace

from mmtrain.training.config.io import load_config
from mmtrain.training.config.schema import ClipRunConfig, VlmRunConfig
from mmtrain.training.ray_train.driver import stream_rows

REPO = Path(__file__).resolve().parents[2]
PLAIN = SimpleNamespace(mix=None)


def _clip(*overrides):
    return load_config(ClipRunConfig, REPO / "conf/clip/tiny.yaml", list(overrides))


def test_a_run_of_max_steps_streams_what_its_steps_take_and_one_batch_per_worker_more():
    cfg = _clip("loop.max_steps=30", "loop.batch_size_per_worker=32", "scaling.num_workers=2")
    assert stream_rows(cfg, PLAIN) == (30 + 1) * 32 * 2
    accumulating = _clip("loop.max_steps=30", "optim.grad_accum_steps=4", "scaling.num_workers=3")
    assert stream_rows(accumulating, PLAIN) == (30 * 4 + 1) * accumulating.loop.batch_size_per_worker * 3


def test_no_bound_where_the_rows_a_step_takes_vary_or_epochs_decide():
    assert stream_rows(_clip("loop.epochs=2"), PLAIN) is None
    assert stream_rows(_clip(), SimpleNamespace(mix=object())) is None  # a mixture regroups rows by source
    packed = load_config(VlmRunConfig, REPO / "conf/vlm/stage2.yaml", ["data.packing.max_tokens=512"])
    assert stream_rows(packed, PLAIN) is None
