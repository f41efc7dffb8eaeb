"""CLIP evaluation: zero-shot classification and image<->text retrieval.

Every rank embeds its share of the eval data; embeddings are gathered so that every rank
computes the same metrics over the whole eval set (no rank-0-only pass over all the data).
Shapes: N = eval samples, E = embedding size, C = classes, T = templates.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F

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
    """One normalised text embedding per class, averaged over templates: [C, E]."""
    tokenizer = configure_fixed_length(load_tokenizer(tokenizer_path), context_length)
    weights = []
    for name in classes:
        encodings = tokenizer.encode_batch([t.format(name) for t in templates])
        ids_TL = torch.tensor([e.ids for e in encodings], device=device)
        mask_TL = torch.tensor([e.attention_mask for e in encodings], device=device)
        weights.append(F.normalize(model.encode_text(ids_TL, mask_TL).float().mean(0), dim=0))
    return torch.stack(weights)


def zero_shot_accuracy(image_NE: torch.Tensor, labels_N: torch.Tensor, classifier_CE: torch.Tensor) -> dict:
    keep = labels_N >= 0
    if not keep.any():
        return {}
    logits_NC = image_NE[keep] @ classifier_CE.T
    top = logits_NC.topk(min(5, classifier_CE.shape[0]), dim=1).indices
    labels = labels_N[keep].unsqueeze(1)
    return {
        "zero_shot_top1": float((top[:, :1] == labels).any(1).float().mean()),
        "zero_shot_top5": float((top == labels).any(1).float().mean()),
    }


def zero_shot_confusion(image_NE: torch.Tensor, labels_N: torch.Tensor, classifier_CE: torch.Tensor) -> torch.Tensor:
    """Counts [C, C]: row = true class, column = predicted class (samples without a label skipped)."""
    num_classes = classifier_CE.shape[0]
    keep = (labels_N >= 0) & (labels_N < num_classes)
    predicted_N = (image_NE[keep] @ classifier_CE.T).argmax(dim=1)
    flat = labels_N[keep] * num_classes + predicted_N
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


def retrieval_recall(image_NE: torch.Tensor, text_NE: torch.Tensor, ks=(1, 5, 10)) -> dict:
    """Recall@K for image->text and text->image, where pair i is the only match of row i; ties
    count as the expected value of a random order among them."""
    if image_NE.shape[0] == 0:
        return {}
    similarity_NN = image_NE @ text_NE.T
    target = torch.arange(similarity_NN.shape[0], device=similarity_NN.device)
    metrics = {}
    for direction, sims in (("image_to_text", similarity_NN), ("text_to_image", similarity_NN.T)):
        # Candidates scoring higher than the true match rank above it; those scoring the same are
        # ordered at random: the true match is at each place of its tied block with equal chance.
        # Counting ties as hits scored a collapsed model (every score equal) R@1 = 1.0; this scores
        # it exactly chance, k/N.
        true_score = sims[target, target].unsqueeze(1)
        above_N = (sims > true_score).sum(dim=1).float()
        tied_N = (sims == true_score).sum(dim=1).float()  # the true match included
        for k in ks:
            metrics[f"{direction}_R_at_{k}"] = float(((k - above_N) / tied_N).clamp(0, 1).mean())
    return metrics
