"""The data position without Ray: packed positions, consumed bitmaps, and the reader's numbering
when a resumed read seeks past samples."""

import io
import json

import numpy as np
import pytest

from mmtrain.pipelines.datasource import ShardRead, shard_tables, shuffled
from mmtrain.pipelines.position import BadSample, DataPosition, pack, unpack
from mmtrain.pipelines.tar_samples import Bad, count_samples, iter_records
from tests.assets import good_members, png_bytes, write_bad_shards, write_malformed_shards, write_tar


def test_positions_pack_and_unpack():
    epochs, shards, indices = np.array([0, 3, 65535]), np.array([0, 7, 2**24 - 1]), np.array([5, 0, 2**23 - 1])
    packed = pack(epochs, shards, indices)
    assert packed.dtype == np.int64 and (packed >= 0).all()
    assert all(np.array_equal(a, b) for a, b in zip(unpack(packed), (epochs, shards, indices)))


def test_consumed_samples_are_counted_once_and_repeats_are_caught():
    position = DataPosition()
    position.add_consumed(pack(0, 1, np.arange(10)))
    position.add_consumed(pack([0, 0, 0, 1], [1, 1, 2, 1], [3, 12, 12, 0]))  # 3 again: a repeat
    position.add_consumed(pack(0, 2, [12]))  # and (0, 2, 12) again
    assert position.consumed_count(0) == 12 and position.consumed_count(1) == 1
    assert position.repeated == {0: 2}


def test_the_position_survives_json_and_tells_a_resumed_read_what_to_skip():
    position = DataPosition()
    position.add_consumed(pack(2, 0, [0, 1, 5]))
    position.add_bad(
        [
            BadSample(2, 0, 7, 900, "not_an_image"),
            BadSample(2, 0, -1, 4096, "corrupt_tar"),
            BadSample(2, 0, 7, 900, "not_an_image"),
        ]
    )  # read twice in the epoch: counted once
    position.samples_per_shard[0] = 8
    restored = DataPosition.from_json(position.to_json())
    assert list(np.flatnonzero(restored.skip(2, 0))) == [0, 1, 5, 7]
    assert restored.bad_counts() == {"not_an_image": 1, "corrupt_tar": 1}
    assert not restored.shard_done(2, 0) and not restored.skip(3, 0).any()
    restored.add_consumed(pack(2, 0, [2, 3, 4, 6]))
    assert restored.shard_done(2, 0)


def test_a_finished_epoch_costs_a_few_bytes_in_the_checkpoint():
    position = DataPosition()
    position.add_consumed(pack(0, 0, np.arange(100_000)))
    assert len(position.to_json()["consumed"]["0"]["0"]) < 100


def test_a_finished_epoch_keeps_its_counts_only_and_they_survive_json():
    """A long run holds the epochs in flight: a finished one keeps counts per shard and reason, its
    shards read as done, and the summary counts are unchanged by the pruning."""
    position = DataPosition(samples_per_shard={0: 6, 1: 4})
    position.add_consumed(pack(0, 0, np.arange(5)))
    position.add_consumed(pack(0, 1, np.arange(4)))
    position.add_bad([BadSample(0, 0, 5, 10, "not_an_image"), BadSample(1, 1, 2, 10, "corrupt_tar")])
    position.add_consumed(pack(1, 0, [0, 1]))
    before = (position.bad_counts(), position.consumed_per_shard(), position.bad_per_shard(), position.total_consumed())
    assert all(position.shard_done(0, shard) for shard in (0, 1))
    position.finish_epoch(0)
    assert 0 not in position.consumed and position.finished[0].consumed == {0: 5, 1: 4}
    assert all(s.epoch == 1 for s in position.bad.values())
    after = (position.bad_counts(), position.consumed_per_shard(), position.bad_per_shard(), position.total_consumed())
    assert after == before
    restored = DataPosition.from_json(json.loads(json.dumps(position.to_json())))
    assert restored.shard_done(0, 0) and restored.consumed_in(0, 0) == 5 and restored.bad_counts() == before[0]
    assert list(np.flatnonzero(restored.skip(1, 1))) == [2] and not restored.shard_done(1, 0)
    restored.add_consumed(pack(0, 0, [1]))  # a finished epoch's sample again is a repeat
    assert restored.repeated == {0: 1}


@pytest.mark.parametrize(
    "finished",
    [
        {"consumed": {"0": -1}},
        {"consumed": {"0": True}},
        {"bad": [[0, 1, 2]]},
        {"bad": "x"},
        [],
        {"consumed": {"x": 1}},
    ],
)
def test_a_crafted_finished_epoch_is_refused(finished):
    data = DataPosition().to_json() | {"finished": {"0": finished}}
    with pytest.raises((ValueError, TypeError)):
        DataPosition.from_json(data)


def _tar_bytes(tmp_path, name, count):
    return write_tar(tmp_path / name, good_members("s", count)).read_bytes()


@pytest.mark.parametrize("every", [2, 3])
def test_a_read_that_skips_samples_numbers_the_rest_as_a_full_read_does(tmp_path, every):
    """On good and on malformed shards: the samples left after a skip keep their number, key and
    verdict (bad reasons included), so a resumed epoch names its samples as the first read did."""
    write_malformed_shards(tmp_path / "malformed")
    write_bad_shards(tmp_path / "bad", tmp_path / "unpickled")
    write_tar(tmp_path / "good.tar", good_members("g", 30))
    for path in sorted(tmp_path.rglob("*.tar")):
        data = path.read_bytes()
        full = list(iter_records(io.BytesIO(data)))
        skip = set(range(0, count_samples(io.BytesIO(data)), every))
        partial = list(iter_records(io.BytesIO(data), skip=skip))
        expected = [r for r in full if r.index not in skip]
        assert sorted(map(_summary, partial)) == sorted(map(_summary, expected)), path.name


def _summary(record):
    return (
        type(record).__name__,
        record.index,
        record.key,
        getattr(record, "reason", ""),
        getattr(record, "caption", ""),
        getattr(record, "offset", -1),
    )


def test_a_resumed_read_seeks_past_what_it_skips(tmp_path):
    image = png_bytes((64, 64))  # ~12 KB: mostly data, not headers, as in real shards
    data = write_tar(
        tmp_path / "big.tar",
        [m for i in range(200) for m in ((f"s{i:04d}.png", image), (f"s{i:04d}.txt", b"a caption"))],
    ).read_bytes()

    class CountingReads(io.BytesIO):
        read_bytes = 0

        def read(self, size=-1):
            chunk = super().read(size)
            CountingReads.read_bytes += len(chunk)
            return chunk

    records = list(iter_records(CountingReads(data), skip=set(range(190))))
    assert [r.index for r in records] == list(range(190, 200))
    assert CountingReads.read_bytes < 0.2 * len(data)  # headers, and the ten samples read


def test_the_in_shard_shuffle_is_a_function_of_its_seed():
    records = [Bad(str(i), "x", 0, i) if i % 10 == 0 else _record(i) for i in range(100)]
    first = [r.index for r in shuffled(iter(records), 16, np.random.default_rng([1, 0, 3]))]
    again = [r.index for r in shuffled(iter(records), 16, np.random.default_rng([1, 0, 3]))]
    other = [r.index for r in shuffled(iter(records), 16, np.random.default_rng([1, 1, 3]))]
    assert first == again != other and sorted(first) == list(range(100))


def _record(index):
    from mmtrain.pipelines.tar_samples import Record

    return Record(str(index), b"", "caption", index=index)


def test_rows_carry_epoch_shard_and_sample_number(tmp_path):
    data = _tar_bytes(tmp_path, "s.tar", 12)
    read = ShardRead("s.tar", shard=4, epoch=2, seed=0, shuffle_buffer=0)
    table = next(shard_tables(iter_records(io.BytesIO(data), skip={0, 1}), read, rows_per_block=64))
    assert table.column("index").to_pylist() == list(range(2, 12))
    assert set(table.column("epoch").to_pylist()) == {2} and set(table.column("shard").to_pylist()) == {4}


def test_samples_past_what_a_position_can_name_are_skipped_and_counted(tmp_path, monkeypatch):
    """A shard with more samples than positions can number loses only those samples, counted."""
    from mmtrain.pipelines import datasource

    monkeypatch.setattr(datasource, "MAX_SAMPLES_PER_SHARD", 8)
    data = _tar_bytes(tmp_path, "s.tar", 12)
    read = ShardRead("s.tar", shard=0, epoch=0, seed=None, shuffle_buffer=0)
    table = next(shard_tables(iter_records(io.BytesIO(data)), read, rows_per_block=64))
    reasons = table.column("bad_reason").to_pylist()
    assert reasons[:8] == [""] * 8 and reasons[8:] == ["parse_error"] * 4
