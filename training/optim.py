"""AdamW with weight decay only where it helps, and a warmup + cosine schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from training.config import OptimConfig

NO_DECAY_NAME_PARTS = ("embedding", "logit_scale", "logit_bias")


def decays(name: str, param: nn.Parameter) -> bool:
    """Matrices decay; biases, norm gains, embeddings and the temperature do not (as open_clip)."""
    return param.ndim >= 2 and not any(part in name for part in NO_DECAY_NAME_PARTS)


def param_groups(named_params, weight_decay: float, lr: float) -> list[dict]:
    decay, no_decay = [], []
    for name, param in named_params:
        if param.requires_grad:
            (decay if decays(name, param) else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay, "lr": lr},
              {"params": no_decay, "weight_decay": 0.0, "lr": lr}]
    return [g for g in groups if g["params"]]


def build_optimizer(groups: list[dict], cfg: OptimConfig, fused: bool = False) -> torch.optim.AdamW:
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=fused or None)


def warmup_cosine(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int):
    """Linear warmup to each group's lr over cfg.warmup_steps, then cosine to lr * min_lr_ratio."""
    warmup = max(cfg.warmup_steps, 0)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min((step - warmup) / max(total_steps - warmup, 1), 1.0)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
