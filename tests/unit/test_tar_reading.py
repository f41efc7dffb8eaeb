"""Every bad-input case, with real tar files: skipped, counted by reason, good samples kept."""

import io
import tarfile

import pytest

from mmtrain.pipelines import bad_samples
from mmtrain.pipelines.inspection import inspect_shards, iter_shard_records
from mmtrain.pipelines.sources import resolve_shards
from mmtrain.pipelines.tar_samples import iter_raw_samples, split_key
from tests.assets import good_members, write_bad_shards, write_tar


def _records(path):
    shards = resolve_shards(str(path))
    return list(iter_shard_records(shards, shards.paths[0]))


def test_split_key():
    assert split_key("dir/00012.seg.txt") == ("dir/00012", "seg.txt")
    assert split_key("a.JPG") == ("a", "jpg")


def test_good_shard(tmp_path):
    records = _records(write_tar(tmp_path / "g.tar", good_members("k", 4)))
    assert [r.key for r in records] == ["k0000", "k0001", "k0002", "k0003"]
    assert records[1].caption == "a red square number 1" and records[1].label == 1


def test_every_bad_case_counted_and_good_samples_kept(tmp_path):
    marker = tmp_path / "unpickled"
    expected = write_bad_shards(tmp_path / "shards", marker)
    report = inspect_shards([str(tmp_path / "shards")], max_pixels=4_000_000)
    per_shard = {s["path"].rsplit("/", 1)[-1]: s for s in report["shards"]}

    assert per_shard["good.tar"]["good"] == 10 and per_shard["good.tar"]["bad"] == {}
    assert per_shard["mixed.tar"]["good"] == 8
    assert per_shard["mixed.tar"]["bad"] == {
        bad_samples.NOT_AN_IMAGE: 1,
        bad_samples.MISSING_CAPTION: 1,
        bad_samples.EMPTY_CAPTION: 1,
        bad_samples.PICKLE_MEMBER: 1,
        bad_samples.OVERSIZED_IMAGE: 1,
    }
    assert per_shard["truncated.tar"]["good"] == 4
    assert per_shard["truncated.tar"]["bad"][bad_samples.TRUNCATED_TAR] == 1
    assert per_shard["corrupt.tar"]["good"] == 5  # resynchronised after the broken header
    assert per_shard["corrupt.tar"]["bad"][bad_samples.CORRUPT_TAR] == 1
    assert per_shard["garbage.tar"]["bad"] == {bad_samples.CORRUPT_TAR: 1}
    assert report["total"]["good"] == len(expected["good_keys"])
    assert not marker.exists(), "a pickle member was unpickled"


def test_pickle_member_is_never_loaded(tmp_path):
    marker = tmp_path / "unpickled"
    write_bad_shards(tmp_path / "s", marker)
    keys = {r.key for r in _records(tmp_path / "s" / "mixed.tar") if not isinstance(r, str)}
    assert "bad_pickle" not in keys
    assert not marker.exists()


def test_truncated_stream_keeps_prefix():
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in good_members("t", 3):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    data = buffer.getvalue()
    samples = list(iter_raw_samples(io.BytesIO(data[: len(data) // 2])))
    whole = [s for s in samples if s.key and len(s.fields) == 3]
    assert len(whole) >= 1
    assert any(s.bad_reason == bad_samples.TRUNCATED_TAR for s in samples)


def _tar_bytes(members, tar_format, directory=None):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tar_format) as tar:
        if directory:
            info = tarfile.TarInfo(directory)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.parametrize("tar_format", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_long_and_non_ascii_names_in_every_tar_format(tar_format):
    """pax 'path' records, GNU 'L' long names and ustar prefixes all give the member's full name."""
    deep = "/".join(["d" * 40] * 4)  # 163 characters of directories: over ustar's 100-byte name field
    names = [f"{deep}/k0001.jpg", f"{deep}/k0001.txt", "short/k0002.jpg", "short/k0002.txt"]
    if tar_format != tarfile.USTAR_FORMAT:  # ustar cannot store a name like this
        names += ["caf\u00e9/" + "x" * 120 + ".jpg", "caf\u00e9/" + "x" * 120 + ".txt"]
    members = [(name, f"data of {name}".encode() * (i + 1)) for i, name in enumerate(names)]
    data = _tar_bytes(members, tar_format, directory="short")
    samples = list(iter_raw_samples(io.BytesIO(data)))
    assert [s.bad_reason for s in samples] == [None] * (len(names) // 2)
    got = {(s.key, ext): value for s in samples for ext, value in s.fields.items()}
    assert got == {split_key(name): value for name, value in members}


def test_reader_agrees_with_tarfile_on_a_real_shard(tmp_path):
    """Same members, same bytes, as Python's tarfile on a shard written by our ShardWriter."""
    from mmtrain.pipelines.shard_writer import ShardWriter

    with ShardWriter(tmp_path, "train", max_samples=50) as writer:
        for i in range(20):
            writer.write({"__key__": f"{i:06d}", "jpg": bytes([i]) * (100 + 37 * i), "txt": f"caption {i}".encode()})
    shard = tmp_path / writer.shards[0].name
    with open(shard, "rb") as stream:
        ours = [(s.key, sorted(s.fields.items())) for s in iter_raw_samples(stream)]
    with tarfile.open(shard) as tar:
        theirs = {}
        for info in tar:
            if info.isfile():
                key, ext = split_key(info.name)
                theirs.setdefault(key, []).append((ext, tar.extractfile(info).read()))
    assert ours == [(key, sorted(fields)) for key, fields in theirs.items()]


def test_a_read_error_mid_shard_keeps_the_samples_before_it():
    """Storage failing mid-shard (a dropped S3 connection) is one counted bad event, not a crash."""
    data = _tar_bytes(good_members("r", 4), tarfile.PAX_FORMAT)

    class FailingStream(io.BytesIO):
        def read(self, size=-1):
            if self.tell() > len(data) // 2:
                raise OSError("connection reset")
            return super().read(size)

    samples = list(iter_raw_samples(FailingStream(data)))
    assert [s.bad_reason for s in samples].count(bad_samples.UNREADABLE_SHARD) == 1
    whole = [s.key for s in samples if not s.bad_reason and len(s.fields) == 3]
    assert whole[:1] == ["r0000"] and len(whole) < 4
