"""Search latency over 1M random 512-d unit vectors with the index `mmtrain search` builds: exact
inner product (faiss IndexFlatIP) and the inverted-file index used past IVF_THRESHOLD vectors, with
the IVF's recall@10 against exact search. Single queries (as `mmtrain search` asks) and a batch.

    python -m benchmarks.search_latency --out benchmarks/results/search_latency_1m_2core.json
    python -m benchmarks.search_latency --clusters 10000 --out benchmarks/results/search_latency_1m_clustered_2core.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks.common import write_report
from mmtrain.inference import index as vector_index


def unit_vectors(count: int, dim: int, seed: int, clusters: int = 0) -> np.ndarray:
    """Uniform on the sphere, or (clusters > 0) scattered around that many random centres, as
    embeddings of a real corpus are: uniform vectors have no near neighbours for an IVF to find."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((count, dim), dtype=np.float32)
    if clusters:
        centres = np.random.default_rng(1234).standard_normal((clusters, dim), dtype=np.float32)
        vectors = centres[rng.integers(0, clusters, count)] + 0.5 * vectors
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def latencies_ms(index, queries: np.ndarray, k: int) -> dict:
    """One query at a time (p50/p95), then all at once (per query)."""
    single = []
    for query in queries:
        started = time.perf_counter()
        vector_index.search(index, query[None], k)
        single.append((time.perf_counter() - started) * 1e3)
    started = time.perf_counter()
    vector_index.search(index, queries, k)
    batched = (time.perf_counter() - started) * 1e3 / len(queries)
    single.sort()
    return {
        "single_p50_ms": statistics.median(single),
        "single_p95_ms": single[int(0.95 * (len(single) - 1))],
        "batched_ms_per_query": batched,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--clusters", type=int, default=0, help="0: uniform random vectors; K: around K centres")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/search_latency.json"))
    args = parser.parse_args()

    vectors = unit_vectors(args.vectors, args.dim, seed=0, clusters=args.clusters)
    queries = unit_vectors(args.queries, args.dim, seed=1, clusters=args.clusters)
    report = {
        "benchmark": "search_latency",
        "vectors": args.vectors,
        "dim": args.dim,
        "queries": args.queries,
        "k": args.k,
        "clusters": args.clusters,
        "cpus": os.cpu_count(),
        "ivf_threshold": vector_index.IVF_THRESHOLD,
    }
    results = {}
    for name, threshold in (("flat", args.vectors + 1), ("ivf", 0)):
        vector_index.IVF_THRESHOLD = threshold
        started = time.perf_counter()
        index, kind = vector_index.build_index(vectors)
        results[name] = {"kind": kind, "build_s": time.perf_counter() - started, **latencies_ms(index, queries, args.k)}
        results[name]["ids"] = vector_index.search(index, queries, args.k)[1]
        print(name, {k: v for k, v in results[name].items() if k != "ids"}, flush=True)
    exact, approximate = results["flat"].pop("ids"), results["ivf"].pop("ids")
    results["ivf"]["recall_at_k_vs_flat"] = float(
        np.mean([len(set(a) & set(b)) / args.k for a, b in zip(exact, approximate)])
    )
    report["results"] = results
    write_report(args.out, report)


if __name__ == "__main__":
    main()
