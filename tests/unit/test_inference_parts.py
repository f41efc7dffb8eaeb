"""The pieces of the inference commands that need no Ray: thresholds, class lists, progress lines,
output names and the faiss index."""

import numpy as np
import pytest

from mmtrain.inference import index as vector_index
from mmtrain.inference.classify import check_templates, confusion_matrix, parse_classes
from mmtrain.inference.filter import fraction_threshold, output_name
from mmtrain.inference.progress import format_progress


def test_keep_fraction_threshold_keeps_that_fraction_and_ties_keep_more():
    scores = np.array([0.1, 0.9, 0.5, 0.7, 0.3, 0.2, 0.8, 0.6, 0.4, 0.0], dtype=np.float32)
    threshold = fraction_threshold(scores, 0.3)
    assert (scores >= threshold).sum() == 3 and threshold == pytest.approx(0.7)
    assert (np.array([0.5, 0.5, 0.5, 0.1]) >= fraction_threshold(np.array([0.5, 0.5, 0.5, 0.1]), 0.25)).sum() == 3
    assert fraction_threshold(scores, 1.0) == pytest.approx(0.0)


def test_classes_from_a_file_or_commas_and_templates_need_a_slot(tmp_path):
    (tmp_path / "classes.txt").write_text("cat\n\n dog \nbird\n")
    assert parse_classes(str(tmp_path / "classes.txt")) == ["cat", "dog", "bird"]
    assert parse_classes("a, b,c") == ["a", "b", "c"]
    with pytest.raises(ValueError, match="at least two"):
        parse_classes("onlyone")
    with pytest.raises(ValueError, match="has no {} where the class name goes"):
        check_templates(["a photo of a cat"])


def test_confusion_counts_true_rows_and_predicted_columns():
    matrix = confusion_matrix(np.array([0, 0, 1, 2, 2]), np.array([0, 1, 1, 2, 0]), 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]


def test_progress_line_has_count_share_rate_and_eta():
    line = format_progress("embed", 250, 1000, 10.0)
    assert line == "embed: 250/1,000 samples (25%), 25/s, ETA 30 s"
    assert format_progress("embed", 1000, 1000, 40.0, final=True) == "embed: 1,000/1,000 samples (100%), 25/s, 40 s"


def test_filtered_shards_keep_their_names_as_plain_tars():
    assert output_name("bucket/x/train-00003.tar.gz") == "train-00003.tar"
    assert output_name("/data/val-00000.tar") == "val-00000.tar"


def test_past_the_threshold_the_index_is_ivf_and_finds_what_exact_search_finds(monkeypatch):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(50, 64))
    vectors = centres[rng.integers(0, 50, 20_000)] + 0.3 * rng.normal(size=(20_000, 64))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = vectors[:200] + 0.05 * rng.normal(size=(200, 64))
    exact, kind = vector_index.build_index(vectors)
    assert kind == "flat_inner_product"
    monkeypatch.setattr(vector_index, "IVF_THRESHOLD", 10_000)
    approximate, kind = vector_index.build_index(vectors)
    assert kind.startswith("ivf_flat_inner_product")
    _, exact_ids = vector_index.search(exact, queries, 10)
    _, ivf_ids = vector_index.search(approximate, queries, 10)
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact_ids, ivf_ids)])
    assert overlap >= 0.9, overlap
    assert (exact_ids[:, 0] == np.arange(200)).mean() >= 0.95  # a query near a vector finds it first
