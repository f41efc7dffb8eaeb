"""Benchmark results as one table: written as report.json and report.md, read back to put runs side
by side (`--compare`)."""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPORT_JSON, REPORT_MD = "report.json", "report.md"
REPORT_KIND = "mmtrain-benchmark-report"
MAX_REPORT_BYTES = 64 << 20


@dataclass
class BenchmarkResult:
    benchmark: str
    task: str
    metrics: dict[str, float]
    samples: int  # images (CLIP) or questions (VLM) the metrics are over
    config_hash: str  # Benchmark.config_hash(): same hash, same settings
    settings: dict
    examples: list[dict] = field(default_factory=list)  # VLM: question, expected, generated, score

    def rows(self) -> list[dict]:
        """The table rows: benchmark, metric, value, samples, config hash."""
        return [
            {"benchmark": self.benchmark, "task": self.task, "metric": metric, "value": value,
             "samples": self.samples, "config_hash": self.config_hash}
            for metric, value in self.metrics.items()
        ]  # fmt: skip


def mlflow_metric_name(benchmark: str, metric: str) -> str:
    """`cifar10/text_retrieval_recall_at_5`: MLflow metric names allow no `@`."""
    return re.sub(r"[^\w./ -]", "_", f"{benchmark}/{metric.replace('@', '_at_')}")


def write_report(out_dir: Path, model: dict, results: list[BenchmarkResult]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {"kind": REPORT_KIND, "model": model, "results": [asdict(r) for r in results]}
    (out_dir / REPORT_JSON).write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / REPORT_MD).write_text(markdown_table([report]) + "\n")
    return out_dir / REPORT_JSON


def load_report(path: str | Path) -> dict:
    """A report.json, the folder holding it, or a run directory (RUN/benchmarks/report.json)."""
    path = Path(path)
    for candidate in (path, path / REPORT_JSON, path / "benchmarks" / REPORT_JSON):
        if candidate.is_file():
            if candidate.stat().st_size > MAX_REPORT_BYTES:
                raise ValueError(f"{candidate} is over {MAX_REPORT_BYTES} bytes: not a benchmark report")
            report = json.loads(candidate.read_text())
            if not isinstance(report, dict) or report.get("kind") != REPORT_KIND:
                raise ValueError(f"{candidate} is not a benchmark report (`mmtrain eval ... --benchmark` writes them)")
            return report
    raise ValueError(
        f"--compare {path}: no {REPORT_JSON} there or under {path}/benchmarks/; "
        "run `mmtrain eval ... --benchmark` on it first"
    )


def _format(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def markdown_table(reports: list[dict]) -> str:
    """One row per benchmark metric, one column per report (a run), values side by side."""
    columns = [report["model"].get("name") or report["model"].get("checkpoint", "?") for report in reports]
    values: dict[tuple[str, str], list] = {}
    hashes: dict[tuple[str, str], set] = {}
    for column, report in enumerate(reports):
        for result in report["results"]:
            for metric, value in result["metrics"].items():
                key = (result["benchmark"], metric)
                values.setdefault(key, [None] * len(reports))[column] = value
                hashes.setdefault(key, set()).add(result["config_hash"])
    lines = ["| benchmark | metric | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    for (benchmark, metric), row in values.items():
        # Numbers from different settings (class names, prompts, ...) are not comparable: say so.
        mark = "" if len(hashes[(benchmark, metric)]) == 1 else " (settings differ)"
        lines.append(f"| {benchmark} | {metric}{mark} | " + " | ".join(_format(v) for v in row) + " |")
    return "\n".join(lines)
