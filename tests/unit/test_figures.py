"""The pictures logged to MLflow: they render to real PNGs, and the confusion counts are right."""

import io

import numpy as np
import torch
from PIL import Image

from mmtrain.training.tasks.clip_eval import zero_shot_confusion
from mmtrain.training.tracking.figures import heatmap, sample_grid


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


def test_the_retrieval_figure_is_labelled_with_the_captions(synth_dir):
    """Rows and columns read as captions (they were numbered 0..15)."""
    import dataclasses

    from mmtrain.pipelines import contract
    from mmtrain.pipelines.tokenizer import configure_fixed_length, load_tokenizer
    from mmtrain.training.tasks.clip import ClipTask
    from mmtrain.training.tasks.protocol import EvalAssets
    from tests.unit.test_loop_and_checkpoint import _cfg

    tokenizer_path = str(synth_dir / "tokenizer.json")
    cfg = _cfg()
    vocab = load_tokenizer(tokenizer_path).get_vocab_size()
    cfg = dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, tokenizer=tokenizer_path, context_length=16),
        model=dataclasses.replace(cfg.model, text=dataclasses.replace(cfg.model.text, vocab_size=vocab)),
    )
    captions = ["a red circle", "two blue squares on the left of the picture, large ones", "a green triangle"]
    encodings = configure_fixed_length(load_tokenizer(tokenizer_path), 16).encode_batch(captions)
    batch = {
        contract.IMAGE: np.zeros((3, 16, 16, 3), dtype=np.uint8),
        contract.LABEL: np.array([0, 1, 2]),
        contract.INPUT_IDS: np.array([e.ids for e in encodings]),
        contract.ATTENTION_MASK: np.array([e.attention_mask for e in encodings]),
    }
    task = ClipTask(cfg)
    evaluation = task.evaluate(task.build_model(), [batch], torch.device("cpu"), EvalAssets(tokenizer_path))
    spec = evaluation.pictures["retrieval_similarity"]
    assert spec.column_labels[0] == "a red circle" and spec.row_labels[2] == "image of: a green triangle"
    assert spec.column_labels[1].startswith("two blue squares") and spec.column_labels[1].endswith("…")
    assert (
        _png(heatmap(spec.matrix, spec.row_labels, spec.column_labels, spec.title, spec.xlabel, spec.ylabel)).size[0]
        > 100
    )
