"""A new user's first day, as the README tells it: a folder of 120 captioned images goes through
convert -> inspect -> train -> eval -> export -> embed -> search, by running the README's own block
of commands, line by line, unchanged, in a directory that holds only the folder."""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from mmtrain.pipelines.synth import write_synth
from mmtrain.pipelines.tar_samples import iter_records

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def readme_block(heading: str) -> list[str]:
    """The commands of the first ```bash block under `heading` in the README."""
    text = (REPO / "README.md").read_text()
    section = text[text.index(heading) :]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def write_photo_folder(folder: Path, count: int) -> None:
    """`count` captioned images (the synthetic shapes, 64 px JPEGs) as cat.jpg + cat.txt pairs."""
    shards = folder.parent / "made"
    write_synth(shards, num_train=count, num_val=0, image_size=64, shard_size=count)
    folder.mkdir()
    for shard in sorted(shards.glob("train-*.tar")):
        with shard.open("rb") as stream:
            for record in iter_records(stream):
                (folder / f"{record.key}.jpg").write_bytes(record.image_bytes)
                (folder / f"{record.key}.txt").write_text(record.caption)


def test_the_readme_takes_a_folder_of_120_images_to_a_search(tmp_path):
    day = tmp_path / "day"
    day.mkdir()
    write_photo_folder(day / "photos", 120)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    outputs = {}
    for line in readme_block("## Your own images, start to finish"):
        args = shlex.split(line, comments=True)
        assert args[0] == "mmtrain", line
        done = subprocess.run(args, cwd=day, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{line}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        outputs[args[1]] = done.stdout
    manifest = json.loads((day / "shards/manifest.json").read_text())
    assert manifest["val_fraction"] == 0.05 and sum(manifest["splits"].values()) == 120
    assert 0 < manifest["splits"]["val"] < 20
    assert "image_to_text_R_at_5: " in outputs["eval"]
    assert (day / "exported/clip-custom/model.safetensors").is_file()
    hits = [line for line in outputs["search"].splitlines() if re.match(r"\s*\d+\s+-?\d\.\d{3}\s", line)]
    assert len(hits) == 8, outputs["search"]
    assert (day / "search.png").is_file()
