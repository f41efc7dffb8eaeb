"""Inputs that once failed a whole run: each is skipped and counted by reason, good samples around it
are kept, and every reader (inspect, the tokenizer, the pipeline's) agrees, because all read
through one containment boundary (tar_samples.iter_records)."""

import gzip
import io
import json

import numpy as np
import pytest
from PIL import Image

from mmtrain.jobs.cli import main
from mmtrain.pipelines import bad_samples, images
from mmtrain.pipelines.config import AugmentConfig
from mmtrain.pipelines.inspection import inspect_shards, iter_captions
from mmtrain.pipelines.resize import shrink
from mmtrain.pipelines.sources import resolve_shards
from mmtrain.pipelines.tar_samples import iter_raw_samples, iter_records
from tests.assets import good_sample_bytes, tar_member, write_malformed_shards


def test_every_malformed_input_is_counted_by_reason_and_good_samples_kept(tmp_path):
    expected = write_malformed_shards(tmp_path)
    report = inspect_shards([str(tmp_path)])
    assert report["total"]["good"] == expected["good"]
    assert report["total"]["bad"] == expected["bad"]
    assert len(list(iter_captions([str(tmp_path)]))) >= expected["good"]  # `data tokenizer` reads them too


def test_a_parser_failure_nobody_foresaw_costs_only_the_rest_of_its_shard(monkeypatch):
    from mmtrain.pipelines import tar_samples

    def broken(sample, limits=None):
        if sample.key == "k1":
            raise RuntimeError("a bug in a new parser")
        return original(sample, limits)

    original = tar_samples.to_record
    monkeypatch.setattr(tar_samples, "to_record", broken)
    data = good_sample_bytes("k0") + good_sample_bytes("k1") + good_sample_bytes("k2") + bytes(1024)
    results = list(iter_records(io.BytesIO(data)))
    assert [getattr(r, "reason", "good") for r in results] == ["good", bad_samples.BAD_METADATA, "good"]


class _NonSeekable(io.RawIOBase):
    """A stream like a network read: no seek, and a record of the largest read asked of it."""

    def __init__(self, data: bytes):
        self._data, self._position, self.largest_read = data, 0, 0

    def readable(self):
        return True

    def read(self, size=-1):
        self.largest_read = max(self.largest_read, size)
        chunk = self._data[self._position : self._position + size]
        self._position += len(chunk)
        return chunk


@pytest.mark.parametrize("seekable", [True, False])
def test_an_oversized_member_is_skipped_without_reading_it_into_memory(seekable):
    big = bytes(5 << 20)  # 5 MiB, over a 1 MiB limit
    data = good_sample_bytes("a") + tar_member("b.jpg", big) + tar_member("b.txt", b"c") + good_sample_bytes("c")
    stream = io.BytesIO(data + bytes(1024)) if seekable else _NonSeekable(data + bytes(1024))
    samples = list(iter_raw_samples(stream, max_member_bytes=1 << 20))
    assert [(s.key, s.bad_reason) for s in samples] == [("a", None), ("b", bad_samples.OVERSIZED_MEMBER), ("c", None)]
    if not seekable:
        assert stream.largest_read <= 1 << 20  # read past in chunks, never whole


def test_a_directory_of_compressed_shards_is_read(tmp_path):
    data = good_sample_bytes("z0") + good_sample_bytes("z1") + bytes(1024)
    (tmp_path / "part-0.tar.gz").write_bytes(gzip.compress(data))
    (tmp_path / "part-1.tar").write_bytes(data)
    assert [p.rsplit("/", 1)[1] for p in resolve_shards([str(tmp_path)]).paths] == ["part-0.tar.gz", "part-1.tar"]
    assert inspect_shards([str(tmp_path)])["total"]["good"] == 4


def _grey16_png(tmp_path):
    pixels = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)  # 0..65520: mean 8-bit value ~127
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue(), float((pixels >> 8).mean())


@pytest.mark.parametrize("decoder", ["opencv", "pil"])
def test_16_bit_greyscale_pngs_decode_to_their_grey_values(tmp_path, monkeypatch, decoder):
    """PIL's convert("RGB") clips 16-bit values at 255: the image came out all white."""
    data, mean = _grey16_png(tmp_path)
    if decoder == "pil":
        monkeypatch.setattr(images, "cv2", None)
    elif images.cv2 is None:
        pytest.skip("OpenCV is not installed")
    pixels = images.decode_eval(data, AugmentConfig(image_size=64), 10**6)
    assert abs(pixels.mean() - mean) < 2, pixels.mean()
    resized = Image.open(io.BytesIO(shrink(data, 32, 95, 10**6)))  # data convert --resize
    assert abs(np.asarray(resized).mean() - mean) < 3


def test_convert_skips_metadata_the_reader_would_refuse_and_still_writes_the_tokenizer(tmp_path):
    source = tmp_path / "folder"
    source.mkdir()
    for name, meta in (("good", {"label": 1}), ("stringy", {"conversations": "a string"}), ("huge", {"label": 2**70})):
        Image.new("RGB", (16, 16), (200, 10, 10)).save(source / f"{name}.jpg")
        (source / f"{name}.txt").write_text(f"a {name} red square")
        (source / f"{name}.json").write_text(json.dumps(meta))
    (source / "broken.jpg").write_bytes((source / "good.jpg").read_bytes())
    (source / "broken.txt").write_text("a broken square")
    (source / "broken.json").write_text("{not json")
    out = tmp_path / "shards"
    assert main(["data", "convert", str(source), "--out", str(out), "--format", "folder"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["skipped"] == {bad_samples.BAD_CONVERSATION: 1, bad_samples.BAD_METADATA: 2}
    assert (out / "tokenizer.json").is_file()
    assert inspect_shards([str(out)])["total"] == {"samples": 1, "good": 1, "bad": {}}


def test_unreachable_s3_endpoint_is_a_clear_error():
    with pytest.raises(ValueError, match="cannot list shards at 's3://bucket/prefix/'.*data.s3_endpoint"):
        resolve_shards(["s3://bucket/prefix/"], "http://127.0.0.1:1")


def test_the_pipelines_reader_names_each_skipped_sample_with_its_shard_and_offset(tmp_path, caplog):
    from mmtrain.pipelines.datasource import ShardRead, shard_tables

    expected = write_malformed_shards(tmp_path)
    path = str(tmp_path / "label_inf.tar")
    read = ShardRead(path, shard=0, epoch=0, seed=0, shuffle_buffer=0)
    with caplog.at_level("WARNING", logger="mmtrain.data"), open(path, "rb") as stream:
        tables = list(shard_tables(iter_records(stream), read, rows_per_block=64))
    assert sum(table.num_rows for table in tables) == 5 and expected["bad"]["bad_metadata"] == 2
    offset = 2 * len(good_sample_bytes("label_inf_a"))  # l0 follows the two good samples before it
    assert f"{path}: skipped 'l0' at byte {offset}: bad_metadata" in caplog.text


def test_an_unreachable_shard_source_fails_before_ray_starts(monkeypatch):
    from mmtrain.training.config.io import from_dict
    from mmtrain.training.config.schema import ClipRunConfig
    from mmtrain.training.ray_train import driver as run

    def no_ray(*args):
        raise AssertionError("Ray was started before the shards were checked")

    monkeypatch.setattr(run, "ensure_ray", no_ray)
    cfg = from_dict(
        ClipRunConfig, {"data": {"train_shards": ["s3://bucket/train/"], "s3_endpoint": "http://127.0.0.1:1"}}
    )
    with pytest.raises(ValueError, match="cannot list shards.*data.s3_endpoint"):
        run.run_training(cfg)
