"""`mmtrain classify`: zero-shot predictions of a CLIP run over shards, as Parquet; accuracy and a
confusion matrix when the samples carry labels (the label indexes the class list)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mmtrain.inference.clip_stages import ZeroShotClassifier
from mmtrain.inference.index import load_rows
from mmtrain.inference.pool import PoolOptions, run_summary, start_inference, write_manifest, write_parquet
from mmtrain.inference.trained import find_trained
from mmtrain.training.tasks.resolve import manifest_near
from mmtrain.training.tracking.figures import heatmap

DEFAULT_TEMPLATE = "a photo of a {}."
CONFUSION_FIGURE = "_confusion_matrix.png"


def parse_classes(spec: str) -> list[str]:
    """A file with one class name per line, or names separated by commas."""
    path = Path(spec)
    names = path.read_text().splitlines() if path.is_file() else spec.split(",")
    classes = [name.strip() for name in names if name.strip()]
    if len(classes) < 2:
        raise ValueError(
            f"--classes {spec!r} names {len(classes)} class(es): give a file with one class per "
            "line or at least two names separated by commas"
        )
    return classes


def check_templates(templates: list[str]) -> list[str]:
    for template in templates:
        if "{}" not in template:
            raise ValueError(f"--template {template!r} has no {{}} where the class name goes")
    return templates


def classify(
    checkpoint: str | Path, specs: list[str], class_spec: str, templates: list[str], out_dir: Path, options: PoolOptions
) -> dict:
    """Writes OUT/*.parquet (key, shard, caption, label, predicted, predicted_class, score, class_scores),
    OUT/_manifest.json and, with labels, OUT/_confusion_matrix.png; returns the manifest."""
    classes = parse_classes(class_spec)
    templates = check_templates(templates or data_templates(specs) or [DEFAULT_TEMPLATE])
    run = find_trained(checkpoint, "clip", "classify")
    inference = start_inference(
        run, specs, ZeroShotClassifier, {"classes": classes, "templates": templates}, options, classes=classes
    )
    rows = write_parquet(inference, out_dir, "classify")
    manifest = {
        "kind": "mmtrain-zero-shot-predictions",
        **run_summary(inference, run, specs, rows),
        "classes": classes,
        "templates": templates,
    }
    table = load_rows(out_dir, ["label", "predicted"]) if rows else None
    if table is not None:
        labels, predicted = table.column("label").to_numpy(), table.column("predicted").to_numpy()
        labelled = (labels >= 0) & (labels < len(classes))
        if labelled.any():
            manifest["labelled_samples"] = int(labelled.sum())
            manifest["accuracy"] = float((predicted[labelled] == labels[labelled]).mean())
            confusion = confusion_matrix(labels[labelled], predicted[labelled], len(classes))
            figure = heatmap(
                confusion,
                classes,
                classes,
                f"zero-shot confusion ({labelled.sum()} samples, accuracy {manifest['accuracy']:.1%})",
                "predicted class",
                "true class",
                annotate=len(classes) <= 20,
            )
            figure.savefig(Path(out_dir) / CONFUSION_FIGURE, dpi=100)
            manifest["confusion_matrix"] = confusion.tolist()
    write_manifest(out_dir, manifest)
    return manifest


def confusion_matrix(labels_N: np.ndarray, predicted_N: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts [C, C]: row = true class, column = predicted class."""
    flat = labels_N.astype(np.int64) * num_classes + predicted_N
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def data_templates(specs: list[str]) -> list[str]:
    """The caption templates `data synth`/`data convert` recorded beside the shards, if any."""

    return list(manifest_near(specs[0]).get("templates") or [])
