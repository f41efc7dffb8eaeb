import hashlib
import io
import json
import tarfile

import numpy as np
import pytest

from mmtrain.jobs.cli import main
from mmtrain.pipelines.convert import ConvertOptions, convert
from mmtrain.pipelines.shard_writer import ShardWriter, write_manifest
from mmtrain.pipelines.sources import resolve_shards
from mmtrain.pipelines.synth import make_sample
from tests.assets import jpeg_bytes


def test_writer_sorts_members_caps_size_and_checksums(tmp_path):
    with ShardWriter(tmp_path, "train", max_samples=3) as writer:
        for key in ["b", "a", "d", "c", "e"]:
            writer.write({"__key__": key, "txt": key.encode(), "jpg": b"x"})
    manifest = write_manifest(tmp_path, writer.shards)
    assert [s["num_samples"] for s in manifest["shards"]] == [3, 2]
    assert manifest["splits"] == {"train": 5}
    first = tmp_path / "train-00000.tar"
    with tarfile.open(first) as tar:
        assert tar.getnames() == ["a.jpg", "a.txt", "b.jpg", "b.txt", "d.jpg", "d.txt"]
    assert hashlib.sha256(first.read_bytes()).hexdigest() == manifest["shards"][0]["sha256"]


def test_synth_is_deterministic_and_consistent():
    a, b = make_sample(7, seed=0, image_size=48), make_sample(7, seed=0, image_size=48)
    assert a == b
    meta = json.loads(a["json"])
    caption = a["txt"].decode()
    assert meta["answers"]["colour"] in caption and meta["answers"]["shape"] in caption
    assert meta["conversations"][0]["value"].startswith("<image>\n")
    assert meta["conversations"][1]["from"] == "gpt"


def test_sources_dir_glob_brace(tmp_path):
    for i in range(3):
        (tmp_path / f"s-{i:05d}.tar").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not a shard")
    assert len(resolve_shards(str(tmp_path))) == 3
    assert len(resolve_shards(str(tmp_path / "s-*.tar"))) == 3
    assert len(resolve_shards(str(tmp_path / "s-{00000..00001}.tar"))) == 2
    with pytest.raises(ValueError, match="matched no shards"):
        resolve_shards(str(tmp_path / "missing-*.tar"))


def _idx(path, array, magic_dims):
    header = bytes([0, 0, 8, magic_dims]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_convert_idx(tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "idx"
    src.mkdir()
    _idx(src / "train-images-idx3-ubyte", rng.integers(0, 255, (30, 28, 28)), 3)
    _idx(src / "train-labels-idx1-ubyte", rng.integers(0, 3, 30), 1)
    _idx(src / "t10k-images-idx3-ubyte", rng.integers(0, 255, (10, 28, 28)), 3)
    _idx(src / "t10k-labels-idx1-ubyte", rng.integers(0, 3, 10), 1)
    classes = tmp_path / "classes.txt"
    classes.write_text("cat\ndog\nbird\n")
    out = tmp_path / "out"
    assert (
        main(
            [
                "data",
                "convert",
                str(src),
                "--out",
                str(out),
                "--format",
                "idx",
                "--classes",
                str(classes),
                "--template",
                "a photo of a {}.",
                "--shard-samples",
                "16",
            ]
        )
        == 0
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["splits"] == {"train": 30, "test": 10}
    assert manifest["classes"] == ["cat", "dog", "bird"]
    assert (out / "tokenizer.json").is_file()
    with tarfile.open(out / "test-00000.tar") as tar:
        caption = tar.extractfile("000000.txt").read().decode()
        meta = json.loads(tar.extractfile("000000.json").read())
    assert caption == f"a photo of a {meta['class_name']}."


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet", "folder"])
def test_convert_tables_and_folder(tmp_path, fmt):
    import pyarrow as pa
    import pyarrow.csv
    import pyarrow.parquet

    images = tmp_path / "imgs"
    images.mkdir()
    rows = []
    for i in range(4):
        (images / f"im{i}.jpg").write_bytes(jpeg_bytes())
        (images / f"im{i}.txt").write_text(f"caption {i}")
        rows.append({"image": f"imgs/im{i}.jpg", "caption": f"caption {i}"})
    src = {
        "folder": images,
        "csv": tmp_path / "t.csv",
        "jsonl": tmp_path / "t.jsonl",
        "parquet": tmp_path / "t.parquet",
    }[fmt]
    if fmt == "csv":
        pyarrow.csv.write_csv(pa.Table.from_pylist(rows), src)
    elif fmt == "jsonl":
        src.write_text("\n".join(json.dumps(r) for r in rows))
    elif fmt == "parquet":  # bytes in the table rather than paths
        pyarrow.parquet.write_table(
            pa.Table.from_pylist([{"image": jpeg_bytes(), "caption": r["caption"]} for r in rows]), src
        )
    manifest = convert(src, tmp_path / "out", ConvertOptions(format=fmt))
    assert manifest["splits"] == {"train": 4}


def test_convert_errors_say_what_to_change(tmp_path):
    with pytest.raises(ValueError, match="--classes"):
        convert(tmp_path, tmp_path / "o", ConvertOptions(format="idx"))
    (tmp_path / "t.csv").write_text("foo,bar\n1,2\n")
    with pytest.raises(ValueError, match="--image-column"):
        convert(tmp_path / "t.csv", tmp_path / "o", ConvertOptions(format="csv"))


def _encoded(image, fmt):
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def test_convert_resize_shrinks_big_images_keeps_small_ones_and_skips_bad(tmp_path):
    from PIL import Image

    from mmtrain.pipelines.tar_samples import iter_raw_samples

    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 255, (300, 480, 3), dtype=np.uint8))  # H x W: 480 x 300
    small = jpeg_bytes()
    sources = {
        "big": _encoded(photo, "JPEG"),
        "tall_png": _encoded(Image.fromarray(rng.integers(0, 255, (640, 400, 4), dtype=np.uint8), "RGBA"), "PNG"),
        "small": small,
        "broken": _encoded(photo, "JPEG")[:2000],  # header intact, pixel data cut off
        "junk": b"not an image at all",
    }
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, data in sources.items():
        (folder / f"{name}.{'png' if name.endswith('png') else 'jpg'}").write_bytes(data)
        (folder / f"{name}.txt").write_text(f"a picture called {name}")
    out = tmp_path / "shards"

    assert (
        main(
            [
                "data",
                "convert",
                str(folder),
                "--out",
                str(out),
                "--format",
                "folder",
                "--resize",
                "128",
                "--quality",
                "90",
                "--workers",
                "2",
            ]
        )
        == 0
    )

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["splits"] == {"train": 3}
    assert manifest["skipped"] == {"not_an_image": 2}
    assert manifest["resize"] == {"shorter_side": 128, "quality": 90, "resized": 2}
    with open(out / "train-00000.tar", "rb") as stream:
        stored = {raw.key: raw.fields for raw in iter_raw_samples(stream)}
    assert set(stored) == {"big", "tall_png", "small"}
    assert stored["small"]["jpg"] == small  # already small enough: the original bytes
    big = Image.open(io.BytesIO(stored["big"]["jpg"]))
    assert (big.format, big.size) == ("JPEG", (205, 128))  # aspect ratio kept
    tall = Image.open(io.BytesIO(stored["tall_png"]["jpg"]))  # resized images are stored as JPEG
    assert (tall.format, tall.mode, tall.size) == ("JPEG", "RGB", (128, 205))
    # The content survives: the shrunk image matches the original scaled the same way.
    reference = np.asarray(photo.resize((205, 128), Image.Resampling.LANCZOS), float)
    assert np.abs(np.asarray(big.convert("RGB"), float) - reference).mean() < 30


def test_convert_resize_refuses_bad_settings(tmp_path):
    with pytest.raises(ValueError, match="--quality"):
        convert(tmp_path, tmp_path / "o", ConvertOptions(format="folder", resize=256, quality=0))


def test_convert_refuses_a_missing_source_without_an_empty_progress_bar(tmp_path, capsys):
    from mmtrain.jobs.cli import main

    assert (
        main(["data", "convert", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out"), "--format", "folder"]) == 2
    )
    err = capsys.readouterr().err
    assert err.strip() == f"mmtrain: error: source {tmp_path / 'nowhere'} does not exist"  # no "convert: 0 sample" bar
