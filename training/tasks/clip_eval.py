"""CLIP evaluation: zero-shot classification and image<->text retrieval.

Every rank embeds its share of the eval data; embeddings are gathered so that every rank
computes the same metrics over the whole eval set (no rank-0-only pass over all the data).
Shapes: N = eval samples, E = embedding size, C = classes, T = templates.
"""

from __future__ import annotations

from typing import Iterable

import torch

from mmtrain.evaluation.clip_metrics import (
    classification_metrics,
    retrieval_metrics,
    zero_shot_logits,
    zero_shot_weights,
)
from mmtrain.pipelines import contract
from mmtrain.pipelines.tokenizer import configure_fixed_length, load_tokenizer
from mmtrain.training.engine.distributed import all_gather_uneven
from mmtrain.training.engine.inputs import ImageNormalizer, to_tensor


@torch.no_grad()
def embed_eval_set(model, batches: Iterable[dict], device: torch.device, normalize: ImageNormalizer):
    """(image_NE, text_NE, labels_N) for this rank's batches (numpy or tensors), gathered across ranks."""
    images, texts, labels = [], [], []
    for batch in batches:
        images.append(model.encode_image(normalize(batch[contract.IMAGE], device)).float())
        texts.append(
            model.encode_text(
                to_tensor(batch[contract.INPUT_IDS]).to(device).long(),
                to_tensor(batch[contract.ATTENTION_MASK]).to(device).long(),
            ).float()
        )
        labels.append(to_tensor(batch[contract.LABEL]).to(device))
    if not images:  # this rank got no eval data; it still takes part in the gather
        embed_dim = model.visual.proj.out_features
        images = texts = [torch.zeros((0, embed_dim), device=device)]
        labels = [torch.zeros(0, dtype=torch.long, device=device)]
    return (
        all_gather_uneven(torch.cat(images)),
        all_gather_uneven(torch.cat(texts)),
        all_gather_uneven(torch.cat(labels)),
    )


@torch.no_grad()
def zero_shot_classifier(
    model, tokenizer_path: str, context_length: int, classes: list[str], templates: list[str], device: torch.device
) -> torch.Tensor:
    """One normalised text embedding per class, averaged over templates ("{}" or "{c}"): [C, E]."""
    tokenizer = configure_fixed_length(load_tokenizer(tokenizer_path), context_length)

    def encode_texts(texts: list[str]) -> torch.Tensor:
        encodings = tokenizer.encode_batch(texts)
        ids_TL = torch.tensor([e.ids for e in encodings], device=device)
        mask_TL = torch.tensor([e.attention_mask for e in encodings], device=device)
        return model.encode_text(ids_TL, mask_TL)

    return zero_shot_weights(encode_texts, classes, templates)


def zero_shot_accuracy(image_NE: torch.Tensor, labels_N: torch.Tensor, classifier_CE: torch.Tensor) -> dict:
    """Top-1/top-5 accuracy and mean per-class recall over the labelled samples, computed by the same
    function as `mmtrain eval clip --benchmark` (CLIP_benchmark's definitions)."""
    keep = labels_N >= 0
    if not keep.any():
        return {}
    logits_NC = zero_shot_logits(image_NE[keep].cpu(), classifier_CE.cpu())
    metrics = classification_metrics(logits_NC, labels_N[keep].cpu())
    top5 = metrics["acc5"] if classifier_CE.shape[0] >= 5 else 1.0  # every class is in a top 5 of fewer
    return {
        "zero_shot_top1": metrics["acc1"],
        "zero_shot_top5": top5,
        "zero_shot_mean_per_class_recall": metrics["mean_per_class_recall"],
    }


def zero_shot_confusion(image_NE: torch.Tensor, labels_N: torch.Tensor, classifier_CE: torch.Tensor) -> torch.Tensor:
    """Counts [C, C]: row = true class, column = predicted class (samples without a label skipped)."""
    num_classes = classifier_CE.shape[0]
    keep = (labels_N >= 0) & (labels_N < num_classes)
    predicted_N = (image_NE[keep] @ classifier_CE.T).argmax(dim=1)
    flat = labels_N[keep] * num_classes + predicted_N
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


def retrieval_recall(image_NE: torch.Tensor, text_NE: torch.Tensor, ks=(1, 5, 10)) -> dict:
    """Recall@K for image->text and text->image, where pair i is the only match of row i; ties count
    as the expected value of a random order among them (a collapsed model, every score equal, scores
    chance k/N, not 1.0). The benchmarks' function, over pairs."""
    if image_NE.shape[0] == 0:
        return {}
    pairs = retrieval_metrics(image_NE.cpu(), text_NE.cpu(), torch.arange(image_NE.shape[0]), ks)
    metrics = {}
    for k in ks:
        metrics[f"image_to_text_R_at_{k}"] = pairs[f"text_retrieval_recall@{k}"]
        metrics[f"text_to_image_R_at_{k}"] = pairs[f"image_retrieval_recall@{k}"]
    return metrics
