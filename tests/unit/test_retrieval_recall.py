"""Recall@K: equal to CLIP_benchmark's definition where scores are distinct, and ties count as a
random order among them, so a collapsed model scores chance (it once scored R@1 = 1.0). The
reference is the clip-benchmark package's own recall_at_k."""

import torch
import torch.nn.functional as F
from clip_benchmark.metrics.zeroshot_retrieval import recall_at_k as clip_benchmark_recall_at_k

from mmtrain.training.tasks.clip_eval import retrieval_recall


def test_distinct_scores_match_clip_benchmark():
    generator = torch.Generator().manual_seed(0)
    image = F.normalize(torch.randn(50, 16, generator=generator), dim=1)
    text = F.normalize(image + 0.8 * torch.randn(50, 16, generator=generator), dim=1)
    metrics = retrieval_recall(image, text)
    positives = torch.eye(50)
    scores = text @ image.T  # texts x images: text retrieves images = CLIP_benchmark's image_retrieval
    for k in (1, 5, 10):
        image_retrieval = float((clip_benchmark_recall_at_k(scores, positives, k) > 0).float().mean())
        text_retrieval = float((clip_benchmark_recall_at_k(scores.T, positives.T, k) > 0).float().mean())
        assert metrics[f"text_to_image_R_at_{k}"] == image_retrieval
        assert metrics[f"image_to_text_R_at_{k}"] == text_retrieval
    assert 0 < metrics["image_to_text_R_at_1"] < 1


def test_a_collapsed_model_scores_chance():
    same = F.normalize(torch.ones(40, 8), dim=1)
    metrics = retrieval_recall(same, same)
    for k in (1, 5, 10):
        assert abs(metrics[f"image_to_text_R_at_{k}"] - k / 40) < 1e-6
        assert abs(metrics[f"text_to_image_R_at_{k}"] - k / 40) < 1e-6


def test_templated_captions_tie_and_count_as_a_random_order():
    # 4 images of two classes, captions that are the class template: each caption ties with its twin
    image = F.normalize(torch.tensor([[1.0, 0.1], [1.0, -0.1], [0.1, 1.0], [-0.1, 1.0]]), dim=1)
    text = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]), dim=1)
    metrics = retrieval_recall(image, text)
    assert metrics["image_to_text_R_at_1"] == 0.5 and metrics["image_to_text_R_at_5"] == 1.0
