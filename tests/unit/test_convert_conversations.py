"""`data convert` on the conversation data VLM users have: LLaVA JSON (array and JSONL), ShareGPT
`messages` with typed content, and a Hugging Face-style Parquet table with image bytes. Every row
kind (one image, several, none, a system turn, an image with no placeholder) becomes a sample the
reader accepts, with its images in placeholder order; a missing image or a placeholder mismatch skips
that row, counted by reason, never the file."""

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from mmtrain.jobs.cli import main
from mmtrain.pipelines.chat_rendering import IMAGE_PLACEHOLDER
from mmtrain.pipelines.tar_samples import Record, iter_records


def _png(colour: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), colour, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _converted(out) -> tuple[dict[str, Record], dict]:
    records = {}
    for shard in sorted(out.glob("*.tar")):
        with open(shard, "rb") as stream:
            records.update({json.loads(r.conversation) and r.key: r for r in iter_records(stream)})
    return records, json.loads((out / "manifest.json").read_text())


LLAVA_ROWS = [
    {"id": "one", "image": "coco/a.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "red"}]},
    {"id": "two", "image": ["coco/a.png", "coco/b.png"], "conversations": [
        {"from": "human", "value": "<image> and <image>: same?"}, {"from": "gpt", "value": "no"}]},
    {"id": "text", "conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}]},
    {"id": "system", "image": "coco/b.png", "conversations": [
        {"from": "system", "value": "Be brief."}, {"from": "human", "value": "Colour?"},
        {"from": "gpt", "value": "blue"}]},
    {"id": "missing", "image": "coco/nowhere.png", "conversations": [
        {"from": "human", "value": "<image>\nHi"}, {"from": "gpt", "value": "hello"}]},
    {"id": "mismatch", "image": "coco/a.png", "conversations": [
        {"from": "human", "value": "<image><image>"}, {"from": "gpt", "value": "x"}]},
    {"id": "escape", "image": "../outside.png", "conversations": [
        {"from": "human", "value": "<image>"}, {"from": "gpt", "value": "x"}]},
]  # fmt: skip


def _image_root(tmp_path):
    (tmp_path / "images" / "coco").mkdir(parents=True)
    (tmp_path / "images" / "coco" / "a.png").write_bytes(_png(200))
    (tmp_path / "images" / "coco" / "b.png").write_bytes(_png(30))
    (tmp_path / "outside.png").write_bytes(_png(1))  # a real file the table may not reach
    return tmp_path / "images"


def _check_llava(records, manifest):
    assert manifest["skipped"] == {"missing_image": 1, "image_placeholders": 1, "outside_source": 1}
    by_id = {json.loads(r.conversation)[0]["value"]: r for r in records.values()}
    assert len(records) == 4
    one = by_id["<image>\nWhat colour?"]
    assert one.images == (_png(200),) and one.caption == "red"
    two = by_id["<image> and <image>: same?"]
    assert two.images == (_png(200), _png(30))  # placeholder order
    assert by_id["2+2?"].images == ()  # text-only
    system = next(r for r in records.values() if json.loads(r.conversation)[0]["from"] == "system")
    assert system.images == (_png(30),)
    assert json.loads(system.conversation)[1]["value"] == f"{IMAGE_PLACEHOLDER}\nColour?"  # placed before the question


def test_llava_json_array_and_jsonl_convert_every_row_kind(tmp_path, capsys):
    root = _image_root(tmp_path)
    (tmp_path / "mix.json").write_text(json.dumps(LLAVA_ROWS))
    (tmp_path / "mix.jsonl").write_text("\n".join(json.dumps(row) for row in LLAVA_ROWS) + "\nnot json\n")
    for name in ("mix.json", "mix.jsonl"):
        out = tmp_path / name.replace(".", "_")
        args = [
            "data",
            "convert",
            str(tmp_path / name),
            "--out",
            str(out),
            "--format",
            "llava",
            "--image-root",
            str(root),
        ]
        assert main(args) == 0
        records, manifest = _converted(out)
        if name.endswith("jsonl"):
            assert manifest["skipped"].pop("bad_metadata") == 1  # the line that is not JSON
        _check_llava(records, manifest)
    capsys.readouterr()
    assert main(["data", "inspect", "--data", str(tmp_path / "mix_json"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["total"]["good"] == 4 and not report["total"]["bad"]  # multi-image and text-only are good


def test_sharegpt_messages_with_typed_content_and_parquet_image_bytes(tmp_path):
    root = _image_root(tmp_path)
    messages = [
        {"role": "system", "content": "You look at pictures."},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
    ]
    (tmp_path / "chat.jsonl").write_text(json.dumps({"images": ["coco/a.png"], "messages": messages}) + "\n")
    args = ["data", "convert", str(tmp_path / "chat.jsonl"), "--out", str(tmp_path / "b"), "--format", "jsonl"]
    assert main(args + ["--image-root", str(root)]) == 0
    (record,) = _converted(tmp_path / "b")[0].values()
    turns = json.loads(record.conversation)
    assert [t["from"] for t in turns] == ["system", "human", "gpt"]
    assert turns[1]["value"] == f"{IMAGE_PLACEHOLDER}\nWhat colour?" and record.images == (_png(200),)

    table = pa.table(
        {
            "images": [[{"bytes": _png(9), "path": None}, {"bytes": _png(99), "path": None}], []],
            "conversations": [
                [{"from": "human", "value": "<image><image> differ?"}, {"from": "gpt", "value": "yes"}],
                [{"from": "human", "value": "hello"}, {"from": "gpt", "value": "hi"}],
            ],
        }
    )
    pq.write_table(table, tmp_path / "hf.parquet")
    assert (
        main(["data", "convert", str(tmp_path / "hf.parquet"), "--out", str(tmp_path / "c"), "--format", "parquet"])
        == 0
    )
    records = sorted(_converted(tmp_path / "c")[0].values(), key=lambda r: r.key)
    assert [r.images for r in records] == [(_png(9), _png(99)), ()]
