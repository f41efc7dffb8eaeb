"""`mmtrain search`: text-to-image and image-to-image search over an `mmtrain embed` directory,
printed and drawn as a contact sheet (the images read back from their shards)."""

from __future__ import annotations

import io
import json
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image

from mmtrain.inference.embed import MANIFEST_KIND
from mmtrain.inference.index import load_index, load_rows, search
from mmtrain.inference.pool import MANIFEST
from mmtrain.inference.trained import TrainedRun, decode_image_file, find_trained, load_trained_model
from mmtrain.pipelines.sources import resolve_shards
from mmtrain.pipelines.tar_samples import Record, iter_records
from mmtrain.pipelines.tokenizer import configure_fixed_length, load_tokenizer


@dataclass(frozen=True)
class Hit:
    rank: int
    score: float
    key: str
    shard: str
    caption: str
    label: int


def read_manifest(index_dir: Path) -> dict:
    path = Path(index_dir) / MANIFEST
    if not path.is_file():
        raise ValueError(
            f"--index {index_dir} has no {MANIFEST}: make the index with "
            "`mmtrain embed --checkpoint RUN --data SHARDS --out DIR`"
        )
    try:
        manifest = json.loads(path.read_bytes()) if path.stat().st_size < (1 << 26) else None
    except ValueError:
        manifest = None
    if not isinstance(manifest, dict):
        raise ValueError(f"--index {index_dir}: {MANIFEST} is not a JSON object: re-run `mmtrain embed`")
    index = manifest.get("index")
    valid = (
        isinstance(manifest.get("embed_dim"), int)
        and isinstance(index, dict)
        and isinstance(index.get("rows"), int)
        and isinstance(manifest.get("data"), list)
        and isinstance(manifest.get("model"), dict)
    )
    if manifest.get("kind") == MANIFEST_KIND and not valid:
        raise ValueError(
            f"--index {index_dir}: {MANIFEST} lacks embed_dim, index.rows, data or model: re-run `mmtrain embed`"
        )
    if manifest.get("kind") != MANIFEST_KIND:
        raise ValueError(
            f"--index {index_dir} is not an embedding directory (its manifest says "
            f"{manifest.get('kind')!r}): make one with `mmtrain embed`"
        )
    return manifest


def index_model(manifest: dict, index_dir: Path, checkpoint: str | Path | None) -> TrainedRun:
    """The CLIP run that embeds the query: the one that built the index. A --checkpoint holding other
    weights is refused: its embeddings would not be comparable with the index's."""
    run = find_trained(checkpoint or manifest["model"]["checkpoint"], "clip", "search")
    built_by = manifest["model"]["model_sha256"]
    if run.fingerprint != built_by:
        raise ValueError(
            f"--index {index_dir} was built by another model ({manifest['model']['checkpoint']}, "
            f"weights {built_by[:12]}), not by {run.checkpoint} (weights "
            f"{run.fingerprint[:12]}): search with the model that built it, or re-run `mmtrain embed` "
            "with this one"
        )
    return run


@torch.inference_mode()
def embed_query(run: TrainedRun, text: str = "", image: Path | None = None) -> np.ndarray:
    """One unit query vector [1, E] from a caption or an image file."""
    if image is None and not text.strip():
        raise ValueError("the query is empty: give text to search for, or --image PATH")
    data = run.cfg.data
    pixels = decode_image_file(image, data) if image is not None else None
    device = torch.device("cpu")
    task, model = load_trained_model(run, device)
    if pixels is not None:
        vector = model.encode_image(task.normalize(torch.from_numpy(pixels[None]), device))
    else:
        tokenizer = configure_fixed_length(load_tokenizer(data.tokenizer), data.context_length)
        encoding = tokenizer.encode(text)
        vector = model.encode_text(torch.tensor([encoding.ids]), torch.tensor([encoding.attention_mask]))
    return vector.float().numpy()


def search_index(
    index_dir: Path, text: str = "", image: Path | None = None, k: int = 10, checkpoint: str | Path | None = None
) -> list[Hit]:
    if k < 1:
        raise ValueError(f"-k {k}: ask for at least 1 result")
    manifest = read_manifest(index_dir)
    query = embed_query(index_model(manifest, index_dir, checkpoint), text, image)
    dim, count = manifest["embed_dim"], manifest["index"]["rows"]
    index = load_index(index_dir, dim, count)
    if query.shape[1] != dim:
        raise ValueError(f"--index {index_dir} holds {dim}-d embeddings, the query model makes {query.shape[1]}-d")
    table = load_rows(index_dir, ["key", "shard", "caption", "label"])
    if table.num_rows != count:
        raise ValueError(
            f"--index {index_dir}: {table.num_rows} Parquet rows for {count} indexed vectors: re-run `mmtrain embed`"
        )
    scores, ids = search(index, query, k)
    found = ids[0] >= 0
    rows = table.take(ids[0][found]).to_pylist()
    return [
        Hit(rank + 1, float(score), row["key"], row["shard"], row["caption"], int(row["label"]))
        for rank, (score, row) in enumerate(zip(scores[0][found], rows))
    ]


def format_hits(hits: list[Hit]) -> str:
    lines = [f"{'rank':>4}  {'score':>6}  {'key':<14} caption"]
    lines += [f"{h.rank:>4}  {h.score:6.3f}  {h.key:<14} {h.caption}" for h in hits]
    return "\n".join(lines)


def read_images(hits: list[Hit], specs: list[str], s3_endpoint: str = "") -> dict[tuple[str, str], bytes]:
    """The hits' image bytes, read from their shards (each shard once). Only shards the index's
    manifest lists are opened: a row naming any other file (a device, a system file) is not read."""
    shards = resolve_shards(specs, s3_endpoint)
    listed = set(shards.paths)
    filesystem = shards.filesystem
    wanted: dict[str, set[str]] = {}
    for hit in hits:
        if hit.shard not in listed:
            print(
                f"mmtrain: warning: hit {hit.key!r} names {hit.shard!r}, which is not among the shards the "
                "index was built from: not read"
            )
            continue
        wanted.setdefault(hit.shard, set()).add(hit.key)
    found = {}
    for shard, keys in wanted.items():
        with filesystem.open_input_file(shard) as stream:
            for record in iter_records(stream):
                if isinstance(record, Record) and record.key in keys:
                    found[(shard, record.key)] = record.image_bytes
    return found


def contact_sheet(
    hits: list[Hit], images: dict[tuple[str, str], bytes], title: str, path: Path, columns: int = 5
) -> Path:
    """The hits as a grid of thumbnails, each with rank, score and caption; the query as the title."""

    rows = max(1, -(-len(hits) // columns))
    figure = Figure(figsize=(2.6 * columns, 3.0 * rows + 0.6), layout="constrained")
    for cell, axes in enumerate(figure.subplots(rows, columns, squeeze=False).flat):
        axes.axis("off")
        if cell >= len(hits):
            continue
        hit = hits[cell]
        data = images.get((hit.shard, hit.key))
        if data is not None:
            axes.imshow(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), interpolation="nearest")
        caption = "\n".join(textwrap.wrap(hit.caption, 30)[:2])
        axes.set_title(f"#{hit.rank}  {hit.score:.3f}  {hit.key}\n{caption}", fontsize=7)
    figure.suptitle(title)
    figure.savefig(path, dpi=100)
    return Path(path)
