"""CLIP evaluation: zero-shot classification and image<->text retrieval.

Every rank embeds its share of the eval data; embeddings are gathered so that every rank
computes the same metrics over the whole eval set (no rank-0-only pass over all the data).
Shapes: N = eval samples, E = embedding size, C = classes, T = templates.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

from mmtrain.evaluation.clip_metrics import (
    classification_metrics,
    retrieval_metrics,
    zero_shot_logits,
    zero_shot_weights,
)
from mmtrain.evaluation.folder_benchmark import FolderBenchmark, kept_captions, read_benchmark_image
from mmtrain.evaluation.report import mlflow_metric_name
from mmtrain.pipelines import contract
from mmtrain.pipelines.config import DataConfig
from mmtrain.pipelines.tokenizer import configure_fixed_length, load_tokenizer
from mmtrain.training.engine.distributed import all_gather_uneven, world
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
    return zero_shot_weights(text_encoder(model, tokenizer_path, context_length, device), classes, templates)


TEXTS_PER_BATCH = 256  # a retrieval set's captions (25,000 for COCO) go through the tower in batches


def text_encoder(model, tokenizer_path: str, context_length: int, device: torch.device):
    """texts -> [T, E] normalised float embeddings from the model's text tower."""
    tokenizer = configure_fixed_length(load_tokenizer(tokenizer_path), context_length)

    @torch.no_grad()
    def encode_texts(texts: list[str]) -> torch.Tensor:
        chunks = []
        for start in range(0, len(texts), TEXTS_PER_BATCH):
            encodings = tokenizer.encode_batch(texts[start : start + TEXTS_PER_BATCH])
            ids_TL = torch.tensor([e.ids for e in encodings], device=device)
            mask_TL = torch.tensor([e.attention_mask for e in encodings], device=device)
            chunks.append(model.encode_text(ids_TL, mask_TL).float())
        return torch.cat(chunks)

    return encode_texts


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


@torch.no_grad()
def folder_benchmark_metrics(
    model, bench: FolderBenchmark, data: DataConfig, device: torch.device, normalize: ImageNormalizer, batch_size: int
) -> dict:
    """A benchmark's metrics inside a run's evaluation: each rank decodes and embeds every world-th
    image, the embeddings are gathered with their file numbers, and every rank scores the whole set
    with the functions `mmtrain eval clip --benchmark` uses. Images that cannot be read are skipped."""
    rank, size = world()
    numbers, images = [], []
    for number in range(rank, len(bench.files), size):
        image = read_benchmark_image(bench, number, data.augment, data.max_image_pixels)
        if image is not None:
            numbers.append(number)
            images.append(image)
    embed_dim = model.visual.proj.out_features
    chunks = [
        model.encode_image(normalize(np.stack(images[i : i + batch_size]), device)).float()
        for i in range(0, len(images), batch_size)
    ]
    image_NE = all_gather_uneven(torch.cat(chunks) if chunks else torch.zeros((0, embed_dim), device=device))
    number_N = all_gather_uneven(torch.tensor(numbers, dtype=torch.long, device=device))
    order = number_N.argsort()
    image_NE, number_N = image_NE[order].cpu(), number_N[order].cpu()
    encode = text_encoder(model, data.tokenizer, data.context_length, device)
    if bench.task == "zeroshot_retrieval":
        captions, caption_image = kept_captions(bench, number_N.numpy())
        metrics = retrieval_metrics(image_NE, encode(captions).cpu(), torch.tensor(caption_image), bench.recall_k)
    else:
        weights_CE = zero_shot_weights(encode, list(bench.classnames), list(bench.templates)).cpu()
        labels_N = torch.tensor(bench.labels)[number_N]
        metrics = classification_metrics(zero_shot_logits(image_NE, weights_CE), labels_N)
    return {mlflow_metric_name(bench.name, name): value for name, value in metrics.items()}
