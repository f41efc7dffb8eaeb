"""A mixture's plan reads each source its weight's share of every epoch, to the sample: whole passes
over a small source, then part of one; the largest source (per unit of weight) once."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmtrain.pipelines.config import DataConfig, InvalidValue, SourceConfig
from mmtrain.pipelines.mixture import WHOLE, plan_mixture

shard_counts = st.lists(st.integers(0, 40), min_size=1, max_size=6).filter(lambda counts: sum(counts) > 0)


@settings(max_examples=300, deadline=None)
@given(counts=st.lists(shard_counts, min_size=1, max_size=4), data=st.data())
def test_each_source_reads_its_share_of_every_epoch(counts, data):
    weights = data.draw(st.lists(st.floats(0.05, 20), min_size=len(counts), max_size=len(counts)))
    names = [f"s{i}" for i in range(len(counts))]
    plan = plan_mixture(counts, weights, names)
    flat = [count for source in counts for count in source]
    read = [0] * len(counts)
    for shard, take, source in zip(plan.shard_of, plan.takes, plan.source_of):
        assert take == WHOLE or 0 < take < flat[shard]
        read[source] += flat[shard] if take == WHOLE else take
    assert read == list(plan.targets)
    total = sum(read)
    for source, weight in enumerate(weights):
        assert read[source] >= sum(counts[source]) - 1  # every source at least once (to rounding)
        assert abs(read[source] / total - weight / sum(weights)) <= 1 / total + 1e-9
    # positions stay unique: each (shard, copy) appears once
    assert len(set(zip(plan.shard_of, plan.copies))) == len(plan.shard_of)


def test_a_source_read_2_2_times_is_two_passes_and_part_of_a_third():
    plan = plan_mixture([[100], [20, 30]], [1.0, 1.1], ["big", "small"])
    assert plan.targets == (100, 110)
    small = [
        (shard, take, copy)
        for shard, take, copy, source in zip(plan.shard_of, plan.takes, plan.copies, plan.source_of)
        if source == 1
    ]
    assert small == [(1, WHOLE, 0), (2, WHOLE, 0), (1, WHOLE, 1), (2, WHOLE, 1), (1, 10, 2)]


def test_a_config_gives_train_shards_or_sources_and_every_source_has_shards():
    with pytest.raises(InvalidValue, match="both set"):
        DataConfig(train_shards=["a"], sources=[SourceConfig(shards=["b"])])
    with pytest.raises(InvalidValue, match="shards is empty"):
        SourceConfig(shards=[])
    with pytest.raises(InvalidValue, match="weight"):
        SourceConfig(shards=["a"], weight=0)
