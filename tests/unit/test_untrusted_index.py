"""An embedding directory from elsewhere: a damaged faiss file, Parquet rows or manifest gives a
clear error, and a row can only make search read shards the manifest lists."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmtrain.inference.index import INDEX_FILE, build_index, load_index, load_rows, save_index
from mmtrain.inference.search import Hit, read_images, read_manifest
from tests.assets import good_members, write_tar


def _index_dir(tmp_path, rows=6, dim=8):
    vectors = np.random.default_rng(0).normal(size=(rows, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index, kind = build_index(vectors)
    save_index(index, tmp_path)
    pq.write_table(
        pa.table(
            {
                "key": [f"k{i}" for i in range(rows)],
                "shard": ["s.tar"] * rows,
                "caption": ["c"] * rows,
                "label": [0] * rows,
            }
        ),
        tmp_path / "part-0.parquet",
    )
    return tmp_path


def test_an_intact_index_loads_and_checks_its_shape(tmp_path):
    index = load_index(_index_dir(tmp_path), 8, 6)
    assert index.ntotal == 6 and index.d == 8
    with pytest.raises(ValueError, match="holds 6 vectors of 8, the manifest 7 of 8"):
        load_index(tmp_path, 8, 7)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: d[:4] + d[4:40], "shorter than its vectors"),
        (
            lambda d: b"IxFI" + (8).to_bytes(4, "little") + (10**12).to_bytes(8, "little") + d[16:],
            "holds 1000000000000",
        ),
        (lambda d: b"PK\x03\x04" + d[4:], "not an index mmtrain builds"),
        (lambda d: b"", "not an index"),
        (lambda d: d[:16] + bytes(len(d) - 16), "does not load"),
    ],
)
def test_a_damaged_faiss_file_is_a_clear_error(tmp_path, damage, message):
    path = _index_dir(tmp_path) / INDEX_FILE
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ValueError, match=message):
        load_index(tmp_path, 8, 6)


def test_damaged_parquet_rows_and_manifest_are_clear_errors(tmp_path):
    _index_dir(tmp_path)
    (tmp_path / "part-0.parquet").write_bytes(b"PAR1" + bytes(100) + b"PAR1")
    with pytest.raises(ValueError, match="Parquet rows do not read"):
        load_rows(tmp_path, ["key"])
    (tmp_path / "_manifest.json").write_text("[1, 2")
    with pytest.raises(ValueError, match="not a JSON object"):
        read_manifest(tmp_path)
    (tmp_path / "_manifest.json").write_text(json.dumps({"kind": "mmtrain-embeddings", "embed_dim": "8"}))
    with pytest.raises(ValueError, match="lacks embed_dim"):
        read_manifest(tmp_path)


def test_a_row_naming_a_file_the_manifest_does_not_list_is_not_read(tmp_path, capsys):
    (tmp_path / "shards").mkdir()
    shard = write_tar(tmp_path / "shards" / "train-00000.tar", good_members("g", 2))
    hits = [
        Hit(1, 0.9, "g0000", str(shard), "c", 0),
        Hit(2, 0.8, "x", "/dev/zero", "c", 0),
        Hit(3, 0.7, "y", "/etc/hostname", "c", 0),
    ]
    images = read_images(hits, [str(tmp_path / "shards")])
    assert list(images) == [(str(shard), "g0000")]
    assert "names '/dev/zero', which is not among the shards" in capsys.readouterr().out
