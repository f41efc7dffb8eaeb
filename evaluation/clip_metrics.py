"""Zero-shot classification and image-text retrieval metrics, named and computed as LAION's
CLIP_benchmark computes them (clip_benchmark/metrics/zeroshot_classification.py and
zeroshot_retrieval.py), so that a number here compares with a published one. Checked against that
package's own functions in tests/unit/test_benchmark_metrics.py.

One deliberate difference: where scores tie, CLIP_benchmark's top-k takes whichever the sort
returns first; here a tie counts as the expected value of a random order among the tied. The two are
equal whenever no scores tie (any real model); a collapsed model (every score equal) gets chance,
k/N, here, where a sort would hand it whatever order the memory held.

Shapes: N = images, T = texts, E = embedding size, C = classes.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

# CLIP_benchmark's logit scale for zero-shot classification (no effect on any metric here).
LOGIT_SCALE = 100.0
QUERIES_PER_CHUNK = 1024  # bounds the [chunk, candidates] score matrix of a retrieval set


def fill_template(template: str, classname: str) -> str:
    """CLIP_benchmark writes templates with "{c}", OpenAI's notebooks and mmtrain's manifests "{}"."""
    return template.replace("{c}", classname) if "{c}" in template else template.replace("{}", classname)


def zero_shot_weights(
    encode_texts: Callable[[list[str]], torch.Tensor], classnames: list[str], templates: list[str]
) -> torch.Tensor:
    """[C, E]: per class, the mean of its prompts' normalised text embeddings, normalised."""
    weights = []
    for name in classnames:
        prompts_TE = F.normalize(encode_texts([fill_template(t, name) for t in templates]).float(), dim=-1)
        weights.append(F.normalize(prompts_TE.mean(dim=0), dim=0))
    return torch.stack(weights)


def zero_shot_logits(image_NE: torch.Tensor, weights_CE: torch.Tensor) -> torch.Tensor:
    return LOGIT_SCALE * F.normalize(image_NE.float(), dim=-1) @ weights_CE.T


def classification_metrics(logits_NC: torch.Tensor, labels_N: torch.Tensor) -> dict:
    """acc1, acc5 (NaN below five classes, as CLIP_benchmark reports it) and mean_per_class_recall
    (scikit-learn's balanced accuracy: recall averaged over the classes that have test images)."""
    num_samples, num_classes = logits_NC.shape
    top_NK = logits_NC.topk(min(5, num_classes), dim=1).indices
    hit_NK = top_NK == labels_N.unsqueeze(1)
    # Counts over N in float64, as the references divide them (a float32 mean differs in the 8th digit).
    confusion_CC = np.bincount(
        (labels_N * num_classes + logits_NC.argmax(dim=1)).numpy(), minlength=num_classes * num_classes
    ).reshape(num_classes, num_classes)
    per_class = np.diag(confusion_CC)[confusion_CC.sum(1) > 0] / confusion_CC.sum(1)[confusion_CC.sum(1) > 0]
    return {
        "acc1": int(hit_NK[:, :1].sum()) / num_samples,
        "acc5": int(hit_NK.sum()) / num_samples if num_classes >= 5 else float("nan"),
        "mean_per_class_recall": float(np.mean(per_class)),
    }


def retrieval_metrics(image_NE: torch.Tensor, text_TE: torch.Tensor, text_image_T: torch.Tensor, ks=(1, 5, 10)) -> dict:
    """image_retrieval_recall@k: the share of texts whose image is among the k images nearest them;
    text_retrieval_recall@k: the share of images with one of their texts among the k nearest texts.
    `text_image_T` is each text's image (an image has one or more texts)."""
    image_NE, text_TE = F.normalize(image_NE.float(), dim=-1), F.normalize(text_TE.float(), dim=-1)
    positive_TN = torch.zeros(text_TE.shape[0], image_NE.shape[0], dtype=torch.bool)
    positive_TN[torch.arange(text_TE.shape[0]), text_image_T.long()] = True
    metrics = {}
    for k in ks:
        metrics[f"image_retrieval_recall@{k}"] = float(recall_at_k(text_TE, image_NE, positive_TN, k).mean())
        metrics[f"text_retrieval_recall@{k}"] = float(recall_at_k(image_NE, text_TE, positive_TN.T, k).mean())
    return metrics


def recall_at_k(query_QE: torch.Tensor, candidate_KE: torch.Tensor, positive_QK: torch.Tensor, k: int) -> torch.Tensor:
    """[Q]: the chance that one of a query's positives is among its k best-scoring candidates, the
    tied ones in random order (1 or 0 where nothing ties)."""
    hits = []
    for start in range(0, query_QE.shape[0], QUERIES_PER_CHUNK):
        scores = query_QE[start : start + QUERIES_PER_CHUNK] @ candidate_KE.T
        positive = positive_QK[start : start + QUERIES_PER_CHUNK]
        best = scores.masked_fill(~positive, float("-inf")).max(dim=1, keepdim=True).values
        above = ((scores > best) & ~positive).sum(dim=1)  # negatives ranked above every positive
        tied_pos = ((scores == best) & positive).sum(dim=1)
        tied_neg = ((scores == best) & ~positive).sum(dim=1)
        hits.append(_hit_chance(k - above, tied_pos, tied_neg))
    return torch.cat(hits) if hits else torch.zeros(0)


def _hit_chance(places: torch.Tensor, tied_pos: torch.Tensor, tied_neg: torch.Tensor) -> torch.Tensor:
    """P(a positive among the first `places` of a block of tied_pos positives and tied_neg negatives
    in random order) = 1 - C(neg, places) / C(pos + neg, places)."""
    places = places.clamp(min=0).double()
    pos, neg = tied_pos.double(), tied_neg.double()
    m = torch.minimum(places, pos + neg)
    log_all_negative = _log_comb(neg, m) - _log_comb(pos + neg, m)
    chance = 1 - torch.where(m > neg, torch.zeros_like(m), log_all_negative.exp())
    return torch.where(places <= 0, torch.zeros_like(chance), chance).float()


def _log_comb(n: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    r = torch.minimum(r, n)
    return torch.lgamma(n + 1) - torch.lgamma(r + 1) - torch.lgamma(n - r + 1)
