"""A run's training pool and its held-out set's pool fit Ray Data's CPU cap together
(pipelines/dataset.py: pool_sizes): both run at once when an evaluation comes while the training
stream still reads, and a pool past the cap never gets its CPUs."""

from contextlib import contextmanager

from hypothesis import given, settings
from hypothesis import strategies as st
from ray.data import DataContext, ExecutionResources

from mmtrain.pipelines.config import DataConfig
from mmtrain.pipelines.dataset import pool_sizes


@contextmanager
def data_cpu_cap(cpus: float):
    context = DataContext.get_current()
    before = context.execution_options.resource_limits
    context.execution_options.resource_limits = ExecutionResources(cpu=cpus)
    try:
        yield
    finally:
        context.execution_options.resource_limits = before


def test_the_held_out_pool_takes_at_most_half_and_one_shard_one_actor():
    with data_cpu_cap(4):
        assert pool_sizes(DataConfig(), 6, 1) == (3, 1)  # Fashion-MNIST on 2 cores: 6 training shards, 1 test
        assert pool_sizes(DataConfig(), 100, 100) == (2, 2)
        assert pool_sizes(DataConfig(), 2, 1) == (2, 1)  # never more actors than shards
        assert pool_sizes(DataConfig(), 6, 0) == (4, 0)  # no held-out set: the whole cap
        assert pool_sizes(DataConfig(workers=4), 6, 1) == (4, 1)  # data.workers: as the user set it


@settings(max_examples=60, deadline=None)
@given(
    cpus=st.integers(2, 64),
    per_actor=st.sampled_from([0.5, 1.0, 2.0]),
    train=st.integers(1, 500),
    held_out=st.integers(1, 50),
)
def test_both_pools_fit_the_cap(cpus, per_actor, train, held_out):
    with data_cpu_cap(cpus):
        train_pool, held_pool = pool_sizes(DataConfig(cpus_per_worker=per_actor), train, held_out)
    assert 1 <= train_pool <= train and 1 <= held_pool <= held_out
    if cpus // per_actor >= 2:  # room for two actors at all
        assert (train_pool + held_pool) * per_actor <= cpus
