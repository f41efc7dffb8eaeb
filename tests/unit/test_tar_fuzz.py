"""Property-based: whatever bytes a shard holds, every reader terminates within a bounded number of
reads, nothing raises past the containment boundary, and `data inspect`, sample counting and the
pipeline's reader agree on how many samples there are. 3000 examples by default (~5 s on 2 cores);
MMTRAIN_FUZZ_EXAMPLES=N for more."""

import io
import os

import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmtrain.pipelines.datasource import ShardRead, shard_tables
from mmtrain.pipelines.tar_samples import BLOCK, Bad, count_samples, iter_records
from tests.assets import good_sample_bytes, tar_header, tar_member

BASE = good_sample_bytes("a") + tar_member("b.txt", b"text only") + good_sample_bytes("c") + bytes(1024)
HEADER_OFFSETS = [0]  # the offsets of BASE's headers, found by walking it
while HEADER_OFFSETS[-1] < len(BASE) - 1024:
    size = int(BASE[HEADER_OFFSETS[-1] + 124 : HEADER_OFFSETS[-1] + 135], 8)
    HEADER_OFFSETS.append(HEADER_OFFSETS[-1] + BLOCK + -(-size // BLOCK) * BLOCK)
HEADER_OFFSETS.pop()


class CountingStream(io.BytesIO):
    """A seekable stream that counts the calls made on it, and can refuse seeking."""

    def __init__(self, data: bytes, seekable: bool = True):
        super().__init__(data)
        self.calls, self._can_seek = 0, seekable

    def read(self, size=-1):
        self.calls += 1
        assert size is None or size >= -1, f"read({size})"
        return super().read(size)

    def seek(self, *args):
        self.calls += 1
        return super().seek(*args)

    def seekable(self):
        return self._can_seek


def _resigned(block: bytes) -> bytes:
    """A header block with its checksum recomputed: a mutation a checksum check cannot catch."""
    block = bytearray(block)
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


@st.composite
def shards(draw):
    kind = draw(st.sampled_from(["random", "flip", "field", "truncate", "header"]))
    if kind == "random":
        return draw(st.binary(max_size=4 * BLOCK))
    data = bytearray(BASE)
    if kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    elif kind == "field":  # any bytes in a header field, checksum fixed up
        at = draw(st.sampled_from(HEADER_OFFSETS))
        start, width = draw(st.sampled_from([(0, 100), (124, 12), (156, 1), (257, 6), (345, 155)]))
        value = draw(
            st.one_of(
                st.binary(min_size=width, max_size=width),
                st.sampled_from(
                    [
                        b"-0001750\0\0\0\0",
                        b"-1",
                        b" 1_0",
                        b"\x80" + b"\xff" * 11,
                        b"\xff" * 12,
                        b"77777777777\0",
                        b"+17",
                    ]
                ).map(lambda v: (v + bytes(width))[:width]),
            )
        )
        data[at + start : at + start + width] = value
        data[at : at + BLOCK] = _resigned(bytes(data[at : at + BLOCK]))
    elif kind == "truncate":
        del data[draw(st.integers(0, len(data))) :]
    else:  # a whole hand-made header in the middle
        size_field = draw(st.binary(min_size=12, max_size=12))
        at = draw(st.sampled_from(HEADER_OFFSETS))
        data[at:at] = tar_header(
            draw(st.sampled_from(["x.jpg", "x.txt", "y"])),
            0,
            kind=draw(st.sampled_from([b"0", b"x", b"L", b"5", b"g"])),
            size_field=size_field,
        )
    return bytes(data)


def _samples(records) -> int:
    return max((record.index + 1 for record in records), default=0)


@settings(
    max_examples=int(os.environ.get("MMTRAIN_FUZZ_EXAMPLES", "3000")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(data=shards())
def test_any_bytes_terminate_and_every_reader_counts_the_same_samples(data):
    bound = 4 * (len(data) // BLOCK + 4)  # a read and a seek or two per block at most
    seekable, stream = CountingStream(data), CountingStream(data, seekable=False)
    seekable_records, streamed_records = list(iter_records(seekable)), list(iter_records(stream))
    assert seekable.calls <= bound and stream.calls <= bound
    counter = CountingStream(data)
    counted = count_samples(counter)
    assert counter.calls <= bound

    read = ShardRead("fuzz.tar", shard=0, epoch=0, seed=0, shuffle_buffer=0)
    tables = list(shard_tables(iter(seekable_records), read, rows_per_block=4))
    rows = pa.concat_tables(tables).to_pylist() if tables else []
    pipeline = max((row["index"] + 1 for row in rows), default=0)

    assert _samples(seekable_records) == _samples(streamed_records) == counted == pipeline
    assert [(type(r), r.index, r.key) for r in seekable_records] == [
        (type(r), r.index, r.key) for r in streamed_records
    ]
    for record in seekable_records:
        assert isinstance(record, Bad) or record.key.encode("utf-8")  # keys are always valid text


def test_a_negative_size_with_a_valid_checksum_ends_in_one_pass():
    data = good_sample_bytes("a") + tar_header("n.jpg", 0, size_field=b"-0001750\0\0\0\0") + good_sample_bytes("b")
    stream = CountingStream(data + bytes(1024))
    records = list(iter_records(stream))
    assert stream.calls < 64
    assert sorted(getattr(r, "reason", r.key) for r in records) == ["a", "b", "bad_header"]
    assert count_samples(io.BytesIO(data)) == 2
