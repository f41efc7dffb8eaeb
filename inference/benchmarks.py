"""`mmtrain eval clip|vlm --benchmark`: run a checkpoint on benchmarks (one, or a suite), write
the report (report.json, report.md) and log it to MLflow."""

from __future__ import annotations

from pathlib import Path

from mmtrain.evaluation.benchmark import resolve_benchmarks
from mmtrain.evaluation.report import BenchmarkResult, write_report
from mmtrain.inference.clip_benchmarks import SuiteImages, run_clip_benchmark, text_encoder
from mmtrain.inference.pool import PoolOptions
from mmtrain.inference.trained import TrainedRun, find_trained
from mmtrain.inference.vlm_benchmarks import BenchmarkAnswerer, run_vlm_benchmark
from mmtrain.training.checkpoint.store import load_tracking_run_id


def run_benchmarks(
    kind: str, checkpoint: Path, specs: list[str], options: PoolOptions
) -> tuple[TrainedRun, list[BenchmarkResult]]:
    benchmarks = [bench for spec in specs for bench in resolve_benchmarks(spec)]
    wrong = [bench.name for bench in benchmarks if bench.kind != kind]
    if wrong:
        other = "vlm" if kind == "clip" else "clip"
        raise ValueError(
            f"benchmark(s) {', '.join(wrong)} are for a {other} model: run them with `mmtrain eval {other}`"
        )
    run = find_trained(checkpoint, kind, f"eval {kind}")
    if kind == "clip":
        encode, images = text_encoder(run), SuiteImages(run, options)
        return run, [run_clip_benchmark(bench, images, encode) for bench in benchmarks]
    answerer = BenchmarkAnswerer(run)
    return run, [run_vlm_benchmark(answerer, bench) for bench in benchmarks]


def model_summary(run: TrainedRun) -> dict:
    return {
        "name": run.cfg.run.name,
        "kind": run.kind,
        "checkpoint": str(run.checkpoint),
        "model_sha256": run.fingerprint,
    }


def default_report_dir(run: TrainedRun) -> Path:
    """RUN/benchmarks/ beside the run's checkpoints (what --compare RUN reads)."""
    return run.checkpoint.parent / "benchmarks"


def report_and_log(run: TrainedRun, results: list[BenchmarkResult], out_dir: Path | None) -> tuple[Path, str]:
    """(the report.json written, the MLflow run id it went to, "" with tracking off)."""
    from mmtrain.training.tracking.benchmark_results import log_benchmark_results
    from mmtrain.training.tracking.tracker import default_experiment, default_tracking_uri

    path = write_report(out_dir or default_report_dir(run), model_summary(run), results)
    tracking = run.cfg.tracking
    if tracking.tracking_uri == "none":
        return path, ""
    uri = default_tracking_uri(tracking.tracking_uri, run.cfg.run.output_dir)
    experiment = default_experiment(tracking.experiment, run.kind)
    run_id = log_benchmark_results(
        uri, experiment, load_tracking_run_id(run.checkpoint), run.cfg.run.name, results, path.parent
    )
    return path, run_id
