"""A vector index over an embedding directory's image embeddings, with faiss.

Exact inner-product search (the embeddings are L2-normalised, so this is cosine) up to
IVF_THRESHOLD vectors; past it an inverted-file index, which searches `nprobe` of its clusters and
trades a little recall for time that grows far slower than the corpus. The index numbers rows in the
order of `pool.parquet_files`, the same order `load_rows` reads them back in.
"""

from __future__ import annotations

import math
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mmtrain.inference.pool import parquet_files

INDEX_FILE = "_image.faiss"  # "_": Parquet readers of the directory skip it
IVF_THRESHOLD = 200_000
IVF_NPROBE = 32


def build_index(vectors_NE: np.ndarray) -> tuple[faiss.Index, str]:
    """(index, its kind) over float32 unit vectors."""
    vectors_NE = np.ascontiguousarray(vectors_NE, dtype=np.float32)
    count, dim = vectors_NE.shape
    if count < IVF_THRESHOLD:
        index = faiss.IndexFlatIP(dim)
        kind = "flat_inner_product"
    else:
        clusters = int(4 * math.sqrt(count))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, clusters, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(0)
        index.train(vectors_NE[rng.choice(count, size=min(count, 64 * clusters), replace=False)])
        index.nprobe = IVF_NPROBE
        kind = f"ivf_flat_inner_product(nlist={clusters},nprobe={IVF_NPROBE})"
    index.add(vectors_NE)
    return index, kind


def save_index(index: faiss.Index, out_dir: Path) -> Path:
    path = Path(out_dir) / INDEX_FILE
    faiss.write_index(index, str(path))
    return path


_KINDS = {b"IxFI": "flat_inner_product", b"IwFl": "ivf_flat_inner_product"}  # faiss's own fourcc codes


def load_index(index_dir: Path, dim: int, rows: int) -> faiss.Index:
    """The index, after checking from its header that it is of a kind `build_index` makes, over
    `rows` vectors of `dim` (the manifest's), and that the file holds their bytes: a damaged or
    crafted file is refused before faiss allocates what its header claims."""
    path = Path(index_dir) / INDEX_FILE
    if not path.is_file():
        raise ValueError(f"--index {index_dir} has no {INDEX_FILE}: re-run `mmtrain embed`")
    with open(path, "rb") as file:
        header = file.read(16)
    kind = _KINDS.get(header[:4])
    header_dim = int.from_bytes(header[4:8], "little", signed=True) if len(header) == 16 else -1
    header_rows = int.from_bytes(header[8:16], "little", signed=True) if len(header) == 16 else -1
    problem = (
        f"is not an index mmtrain builds (starts {header[:4]!r})"
        if kind is None
        else f"holds {header_rows} vectors of {header_dim}, the manifest {rows} of {dim}"
        if (header_dim, header_rows) != (dim, rows)
        else "is shorter than its vectors"
        if path.stat().st_size < 4 * dim * rows
        else None
    )
    if problem is None:
        try:
            index = faiss.read_index(str(path))
        except (RuntimeError, MemoryError) as err:
            problem = f"does not load ({str(err).splitlines()[0] if str(err) else type(err).__name__})"
    if problem:
        raise ValueError(f"--index {index_dir}: {INDEX_FILE} {problem}: re-run `mmtrain embed` to rebuild it")
    if isinstance(index, faiss.IndexIVF):
        index.nprobe = IVF_NPROBE
    return index


def load_rows(directory: Path, columns: list[str]) -> pa.Table:
    """Columns of every row of an output directory, in index order."""
    files = parquet_files(directory)
    if not files:
        raise ValueError(f"{directory} holds no Parquet files: make it with `mmtrain embed`")
    try:
        return pa.concat_tables(pq.read_table(path, columns=columns) for path in files)
    except (OSError, pa.ArrowException) as err:
        raise ValueError(f"{directory}: its Parquet rows do not read ({err}); re-run `mmtrain embed`") from None


def embedding_matrix(table: pa.Table, column: str) -> np.ndarray:
    """A fixed-size list (or tensor) column as a float32 [N, E] array."""
    values = table.column(column).combine_chunks()
    if isinstance(values.type, pa.ExtensionType):  # Ray Data's tensor extension type
        values = values.storage
    flat = values.flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(len(table), -1).astype(np.float32, copy=False)


def search(index: faiss.Index, queries_QE: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores [Q, k], row ids [Q, k]); ids are -1 where the index holds fewer than k rows."""
    return index.search(np.ascontiguousarray(queries_QE, dtype=np.float32), k)
