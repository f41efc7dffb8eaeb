"""The pictures logged to MLflow: they render to real PNGs, and the confusion counts are right."""

import io

import numpy as np
import torch
from PIL import Image

from training.evaluate import zero_shot_confusion
from training.figures import heatmap, sample_grid


def _png(figure) -> Image.Image:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return Image.open(io.BytesIO(buffer.getvalue()))


def test_sample_grid_and_heatmap_render():
    images = np.random.default_rng(0).integers(0, 255, (6, 32, 32, 3), dtype=np.uint8)
    grid = _png(sample_grid(images, [f"caption {i}" for i in range(6)], columns=4))
    assert grid.format == "PNG" and grid.size[0] > grid.size[1]  # 4 columns x 2 rows
    matrix = np.arange(9, dtype=float).reshape(3, 3)
    assert _png(heatmap(matrix, list("abc"), list("xyz"), "t", "x", "y", annotate=True)).size[0] > 100


def test_zero_shot_confusion_counts_rows_as_true_classes():
    classifier_CE = torch.eye(3)
    image_NE = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [1.0, 0, 0], [0, 0, 1.0], [0, 1.0, 0]])
    labels_N = torch.tensor([0, 1, 2, 2, -1])  # the last sample has no label and is skipped
    confusion = zero_shot_confusion(image_NE, labels_N, classifier_CE)
    assert confusion.tolist() == [[1, 0, 0], [0, 1, 0], [1, 0, 1]]
