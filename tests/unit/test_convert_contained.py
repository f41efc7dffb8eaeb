"""`data convert` is contained per file: links and paths leaving the source, FIFOs, unreadable
captions, deep JSON and oversized members are skipped and counted by reason, the rest converted,
and nothing is written that the reader would refuse."""

import json
import os

import pytest

from mmtrain.pipelines import convert as convert_module
from mmtrain.pipelines.convert import ConvertOptions, convert
from mmtrain.pipelines.tar_samples import Bad, iter_records
from tests.assets import jpeg_bytes


def _read_back(out_dir):
    records = [r for shard in sorted(out_dir.glob("*.tar")) for r in iter_records(open(shard, "rb"))]
    assert not [r for r in records if isinstance(r, Bad)], "convert wrote a sample the reader refuses"
    return sorted(r.key for r in records)


def test_a_folder_source_skips_what_leaves_it_or_cannot_be_read(tmp_path, monkeypatch):
    monkeypatch.setattr(convert_module, "MAX_MEMBER_BYTES", 50_000)
    src, outside = tmp_path / "src", tmp_path / "outside"
    src.mkdir(), outside.mkdir()
    (outside / "secret.jpg").write_bytes(b"private key material")
    (outside / "secret.txt").write_text("a caption from elsewhere")

    def sample(name, caption=b"a red square", image=None):
        (src / f"{name}.jpg").write_bytes(image if image is not None else jpeg_bytes())
        (src / f"{name}.txt").write_bytes(caption)

    sample("good")
    os.symlink(outside / "secret.jpg", src / "linked.jpg")  # an image link out of the source
    (src / "linked.txt").write_text("caption")
    sample("caption_link")
    (src / "caption_link.txt").unlink()
    os.symlink(outside / "secret.txt", src / "caption_link.txt")  # a caption link out of the source
    os.mkfifo(src / "pipe.jpg")  # reading it would block forever
    (src / "pipe.txt").write_text("caption")
    sample("latin1", caption="café".encode("latin-1"))
    sample("deep")
    (src / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    sample("huge_image", image=jpeg_bytes() + bytes(60_000))
    sample("long_caption", caption=b"word " * 20_000)
    sample("empty_caption", caption=b"   ")

    manifest = convert(src, tmp_path / "out", ConvertOptions(format="folder"))
    assert manifest["skipped"] == {
        "outside_source": 2,
        "unreadable_file": 1,
        "unreadable_caption": 1,
        "bad_metadata": 1,
        "oversized_member": 1,
        "caption_too_long": 1,
        "empty_caption": 1,
    }
    assert _read_back(tmp_path / "out") == ["good"]
    assert b"private key" not in b"".join(p.read_bytes() for p in (tmp_path / "out").glob("*.tar"))


def test_a_table_may_only_name_images_under_its_image_root(tmp_path):
    (tmp_path / "data" / "images").mkdir(parents=True)
    (tmp_path / "data" / "images" / "a.jpg").write_bytes(jpeg_bytes())
    (tmp_path / "elsewhere.jpg").write_bytes(jpeg_bytes())
    table = tmp_path / "data" / "captions.csv"
    table.write_text(
        "image,caption\nimages/a.jpg,inside\n../elsewhere.jpg,up and out\n"
        f"{tmp_path / 'elsewhere.jpg'},absolute\n/etc/hostname,a system file\n"
    )
    manifest = convert(table, tmp_path / "out", ConvertOptions(format="csv"))
    assert manifest["skipped"] == {"outside_source": 3} and manifest["splits"]["train"] == 1
    # --image-root: relative paths start there (LLaVA's image folder), and nothing may leave it
    table.write_text(
        f"image,caption\ndata/images/a.jpg,inside\nelsewhere.jpg,beside\n"
        f"{tmp_path / 'elsewhere.jpg'},absolute\n/etc/hostname,a system file\n"
    )
    widened = convert(table, tmp_path / "out2", ConvertOptions(format="csv", image_root=tmp_path))
    assert widened["skipped"] == {"outside_source": 1} and widened["splits"]["train"] == 3


def test_one_bad_jsonl_line_is_one_skip(tmp_path):
    (tmp_path / "a.jpg").write_bytes(jpeg_bytes())
    lines = [
        json.dumps({"image": "a.jpg", "caption": "first"}),
        "{not json",
        "[" * 100_000,
        json.dumps({"image": "a.jpg", "caption": 5}),
        json.dumps(["a list"]),
        json.dumps({"image": "a.jpg", "caption": {"nested": 1}}),
        json.dumps({"image": "a.jpg", "caption": "last"}),
    ]
    (tmp_path / "rows.jsonl").write_text("\n".join(lines) + "\n")
    manifest = convert(tmp_path / "rows.jsonl", tmp_path / "out", ConvertOptions(format="jsonl"))
    assert manifest["skipped"] == {"bad_metadata": 3, "unreadable_caption": 1}
    assert manifest["splits"]["train"] == 3


def test_an_unparseable_table_names_its_file(tmp_path):
    (tmp_path / "t.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(ValueError, match="t.parquet cannot be read as parquet"):
        convert(tmp_path / "t.parquet", tmp_path / "out", ConvertOptions(format="parquet"))
