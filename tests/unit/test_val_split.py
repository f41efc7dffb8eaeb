"""`data convert --val-fraction F`: a held-out split chosen by a hash of each sample's key, so the
same samples are held out in every run and whatever order the source lists them in."""

import json

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from mmtrain.jobs.cli import main
from mmtrain.pipelines.convert import held_out
from mmtrain.pipelines.tar_samples import iter_records


@settings(max_examples=30, deadline=None)
@given(st.floats(0.05, 0.95), st.integers(0, 2**31))
def test_about_the_fraction_of_any_keys_is_held_out(fraction, salt):
    keys = [f"{salt}/{index}" for index in range(4000)]
    share = sum(held_out(key, fraction) for key in keys) / len(keys)
    assert abs(share - fraction) < 0.04, (share, fraction)  # binomial sd at n=4000 is at most 0.008


def write_folder(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(names):
        Image.fromarray(np.full((8, 8, 3), index % 255, np.uint8)).save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text(f"picture {name}")


def keys_by_split(out):
    splits = {}
    for shard in sorted(out.glob("*.tar")):
        with shard.open("rb") as stream:
            for record in iter_records(stream):
                splits.setdefault(shard.name.split("-")[0], set()).add(record.key)
    return splits


def test_convert_holds_out_the_same_keys_on_every_run_and_as_data_grows(tmp_path):
    names = [f"img{index:03d}" for index in range(120)]
    write_folder(tmp_path / "photos", names)
    convert = ["data", "convert", str(tmp_path / "photos"), "--format", "folder", "--val-fraction", "0.25"]
    assert main(convert + ["--out", str(tmp_path / "a")]) == 0
    first = keys_by_split(tmp_path / "a")
    assert first["train"].isdisjoint(first["val"]) and len(first["train"] | first["val"]) == 120
    assert 15 <= len(first["val"]) <= 45
    assert json.loads((tmp_path / "a/manifest.json").read_text())["val_fraction"] == 0.25
    write_folder(tmp_path / "photos", [f"new{index:03d}" for index in range(40)])  # more data later
    assert main(convert + ["--out", str(tmp_path / "b")]) == 0
    grown = keys_by_split(tmp_path / "b")
    assert first["val"] <= grown["val"] and first["train"] <= grown["train"]  # nothing changed sides


def test_a_fraction_that_cannot_work_is_refused(tmp_path, capsys):
    write_folder(tmp_path / "photos", ["a"])
    base = ["data", "convert", str(tmp_path / "photos"), "--format", "folder", "--out", str(tmp_path / "o")]
    assert main(base + ["--val-fraction", "1"]) == 2
    assert "--val-fraction 1.0: give a fraction from 0" in capsys.readouterr().err
    assert main(base + ["--val-fraction", "0.1", "--split", "val"]) == 2
    assert "name it apart" in capsys.readouterr().err
