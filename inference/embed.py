"""`mmtrain embed`: a CLIP run's image and caption embeddings for every good sample of some shards,
as Parquet (Ray Data's writer), with a faiss index over the images and a manifest."""

from __future__ import annotations

from pathlib import Path

from mmtrain.inference.clip_stages import ClipEmbedder
from mmtrain.inference.index import INDEX_FILE, build_index, embedding_matrix, load_rows, save_index
from mmtrain.inference.pool import (
    PoolOptions,
    parquet_files,
    run_summary,
    start_inference,
    write_manifest,
    write_parquet,
)
from mmtrain.inference.trained import find_trained

MANIFEST_KIND = "mmtrain-embeddings"


def embed(checkpoint: str | Path, specs: list[str], out_dir: Path, options: PoolOptions) -> dict:
    """Writes OUT/*.parquet (key, shard, caption, label, image_embedding, text_embedding, clip_score),
    OUT/_image.faiss and OUT/_manifest.json; returns the manifest."""
    run = find_trained(checkpoint, "clip", "embed")
    inference = start_inference(run, specs, ClipEmbedder, {}, options)
    rows = write_parquet(inference, out_dir, "embed")
    vectors_NE = embedding_matrix(load_rows(out_dir, ["image_embedding"]), "image_embedding")
    index, index_kind = build_index(vectors_NE)
    save_index(index, out_dir)
    manifest = {
        "kind": MANIFEST_KIND,
        **run_summary(inference, run, specs, rows),
        "embed_dim": int(vectors_NE.shape[1]) if rows else 0,
        "index": {"file": INDEX_FILE, "type": index_kind, "rows": int(index.ntotal)},
        "files": [path.name for path in parquet_files(out_dir)],
    }
    write_manifest(out_dir, manifest)
    return manifest
