"""Benchmark results into MLflow: one table per run (benchmark, task, metric, value, samples,
config hash), each value also as a metric `BENCHMARK/METRIC`, and the report files as artifacts.

They go into the run that trained the checkpoint when the store still has it (its curves and its
benchmark numbers in one place), else into a new run named after the checkpoint's run. Through an
MlflowClient only, as every driver-side MLflow write in mmtrain."""

from __future__ import annotations

import math
from pathlib import Path

from mmtrain.evaluation.report import BenchmarkResult, mlflow_metric_name

TABLE_FILE = "benchmarks/results.json"


def log_benchmark_results(
    tracking_uri: str,
    experiment: str,
    training_run_id: str,
    run_name: str,
    results: list[BenchmarkResult],
    report_dir: Path,
) -> str:
    """Returns the id of the MLflow run the results went into."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from mmtrain.training.tracking.tracker import create_experiment

    client = MlflowClient(tracking_uri)
    run_id = ""
    if training_run_id:
        try:
            run_id = client.get_run(training_run_id).info.run_id
        except MlflowException:  # another store, or the run was deleted
            run_id = ""
    if not run_id:
        found = client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else create_experiment(client, experiment, tracking_uri)
        run_id = client.create_run(experiment_id, run_name=f"{run_name}-benchmarks").info.run_id
        client.set_terminated(run_id)
    rows = [row for result in results for row in result.rows()]
    client.log_table(run_id, {key: [row[key] for row in rows] for key in rows[0]}, TABLE_FILE)
    for result in results:
        for metric, value in result.metrics.items():
            if not math.isnan(value):
                client.log_metric(run_id, mlflow_metric_name(result.benchmark, metric), value)
        client.set_tag(run_id, f"mmtrain.benchmark.{result.benchmark}.{result.task}", result.config_hash)
    client.log_artifacts(run_id, str(report_dir), "benchmarks")
    return run_id
