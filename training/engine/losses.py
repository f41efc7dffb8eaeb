"""Contrastive losses with global negatives.

Each rank scores its own B rows against all G = world x B columns gathered with gradient
(open_clip's local loss): the same result as one process on the concatenated batch, at
O(B x G) memory per rank instead of O(G x G).
Shapes: B = local batch, G = global batch, E = embedding size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmtrain.training.engine.distributed import all_gather_with_grad, world


def infonce_loss(image_BE: torch.Tensor, text_BE: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric cross-entropy over image->text and text->image similarities."""
    rank, _ = world()
    image_GE, text_GE = all_gather_with_grad(image_BE), all_gather_with_grad(text_BE)
    scale = logit_scale.exp()
    logits_image_BG = scale * image_BE @ text_GE.T
    logits_text_BG = scale * text_BE @ image_GE.T
    batch = image_BE.shape[0]
    targets_B = torch.arange(batch, device=image_BE.device) + rank * batch
    return (F.cross_entropy(logits_image_BG, targets_B) + F.cross_entropy(logits_text_BG, targets_B)) / 2


def siglip_loss(
    image_BE: torch.Tensor, text_BE: torch.Tensor, logit_scale: torch.Tensor, logit_bias: torch.Tensor
) -> torch.Tensor:
    """Sigmoid loss: every image-text pair is an independent binary match / no-match."""
    rank, _ = world()
    text_GE = all_gather_with_grad(text_BE)
    logits_BG = logit_scale.exp() * image_BE @ text_GE.T + logit_bias
    batch = image_BE.shape[0]
    labels_BG = -torch.ones_like(logits_BG)
    labels_BG[torch.arange(batch), torch.arange(batch) + rank * batch] = 1.0
    return -F.logsigmoid(labels_BG * logits_BG).sum() / batch
