"""Pictures for an MLflow run, where people would rather look than read: a grid of augmented
training samples with their captions, and labelled heat maps (retrieval similarity, zero-shot
confusion). Built with matplotlib's object API, so no backend or global state is touched.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure


@dataclass
class HeatmapSpec:
    """What an evaluation wants drawn as a heat map (figures.heatmap draws it)."""

    matrix: np.ndarray
    row_labels: list[str]
    column_labels: list[str]
    title: str
    xlabel: str
    ylabel: str


def sample_grid(images_NHWC: np.ndarray, captions: list[str], columns: int = 4) -> Figure:
    """uint8 images as the model receives them (after augmentation), each titled with its caption."""
    count = len(images_NHWC)
    rows = max(1, -(-count // columns))
    figure = Figure(figsize=(3 * columns, 3.4 * rows), layout="constrained")
    for index, axes in enumerate(figure.subplots(rows, columns, squeeze=False).flat):
        axes.axis("off")
        if index < count:
            axes.imshow(images_NHWC[index], interpolation="nearest")
            axes.set_title("\n".join(textwrap.wrap(captions[index], 28)[:3]), fontsize=8)
    figure.suptitle("augmented training samples (first batch)")
    return figure


def heatmap(
    matrix: np.ndarray,
    row_labels: list[str],
    column_labels: list[str],
    title: str,
    xlabel: str,
    ylabel: str,
    annotate: bool = False,
) -> Figure:
    """A labelled heat map with a colour bar; `annotate` writes each cell's value (small matrices)."""
    rows, columns = matrix.shape
    figure = Figure(figsize=(max(5.0, 0.45 * columns + 3), max(4.0, 0.4 * rows + 2)), layout="constrained")
    axes = figure.subplots()
    image = axes.imshow(matrix, cmap="viridis", aspect="auto")
    figure.colorbar(image, ax=axes)
    axes.set_xticks(range(columns), column_labels, rotation=60, ha="right", fontsize=7)
    axes.set_yticks(range(rows), row_labels, fontsize=7)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    if annotate:
        threshold = (matrix.max() + matrix.min()) / 2
        for (row, column), value in np.ndenumerate(matrix):
            text = f"{value:.0f}" if float(value).is_integer() else f"{value:.2f}"
            axes.text(
                column, row, text, ha="center", va="center", fontsize=6, color="black" if value > threshold else "white"
            )
    return figure
