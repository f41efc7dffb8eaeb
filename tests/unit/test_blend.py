"""A mixture's batches follow its weights to the row, whatever order whole shards arrive in; no row
is lost or repeated."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from mmtrain.pipelines import contract, position
from mmtrain.pipelines.blend import SourceBlend


def _stream(blocks: list[tuple[int, int]], shards_of_source: list[list[int]]):
    """Batches of `size` rows of one source each (a read task's shard), numbered in arrival order."""
    number = 0
    for source, size in blocks:
        shard = shards_of_source[source][number % len(shards_of_source[source])]
        index = np.arange(number, number + size)
        yield {contract.POSITION: position.pack(0, shard, index), "row": index}
        number += size


@settings(max_examples=200, deadline=None)
@given(
    weights=st.lists(st.integers(1, 9), min_size=2, max_size=4),
    block=st.integers(1, 120),
    batch_size=st.integers(1, 32),
    seed=st.integers(0, 10**6),
)
def test_every_batch_keeps_each_source_within_a_row_of_its_share(weights, block, batch_size, seed):
    rng = np.random.default_rng(seed)
    sources = len(weights)
    per_source = [w * 60 for w in weights]  # an epoch's rows in the weights' ratio
    blocks = [(s, block) for s in range(sources) for _ in range(-(-per_source[s] // block))]
    blocks = [blocks[i] for i in rng.permutation(len(blocks))]  # whole shards in any order
    shards_of_source = [[2 * s, 2 * s + 1] for s in range(sources)]
    blend = SourceBlend(np.repeat(np.arange(sources), 2), np.array(weights, float), batch_size, max_waiting=10**9)
    shares = np.array(weights) / sum(weights)
    total_rows = sum(size for _, size in blocks)
    seen, handed = [], np.zeros(sources)
    for batch in blend(_stream(blocks, shards_of_source)):
        assert len(batch["row"]) == batch_size
        shard = position.unpack(batch[contract.POSITION])[1]
        handed += np.bincount(shard // 2, minlength=sources)
        seen += batch["row"].tolist()
        # until the stream runs dry of a source, every source is within one row of its share
        if handed.sum() <= min(per_source[s] for s in range(sources)) and handed.sum() + block * sources < total_rows:
            assert (np.abs(handed - shares * handed.sum()) <= 1).all(), (handed, shares * handed.sum())
    assert len(seen) == len(set(seen)) and len(seen) > total_rows - batch_size


def test_a_ratio_over_10000_rows_of_big_shards_holds_to_a_row():
    """Shards of 1,000 and 500 rows (one read each), weights 8:3: the first 10,000 rows hand out
    each source its share within a row, where shard-by-shard order missed by 2.3 points."""
    blocks = [(0, 1000)] * 4 + [(1, 500)] * 3
    stream = [b for _ in range(3) for b in blocks]
    blend = SourceBlend(np.array([0, 1]), np.array([4000.0, 1500.0]), batch_size=100)
    handed = np.zeros(2)
    for batch in blend(_stream(stream, [[0], [1]])):
        handed += np.bincount(position.unpack(batch[contract.POSITION])[1], minlength=2)
        if handed.sum() == 10_000:
            break
    assert abs(handed[1] / 10_000 - 1500 / 5500) <= 1 / 10_000
