"""AdamW with weight decay only where it helps, and a warmup + cosine schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from mmtrain.training.config.schema import OptimConfig


def exempt_from_weight_decay(model: nn.Module) -> set[int]:
    """The parameters (by id) that modules declare exempt in a `no_weight_decay()` method returning
    names relative to themselves (open_clip's and nanoGPT's convention): embeddings, the temperature."""
    exempt = set()
    for module in model.modules():
        declared = getattr(module, "no_weight_decay", None)
        if callable(declared):
            params = dict(module.named_parameters())
            exempt.update(id(params[name]) for name in declared())
    return exempt


def param_groups(module: nn.Module, weight_decay: float, lr: float, exempt: set[int] = frozenset()) -> list[dict]:
    """AdamW groups for the trainable parameters of `module`: matrices decay (ndim >= 2), vectors
    and scalars (biases, norm gains) do not, nor do the parameters in `exempt`."""
    decay, no_decay = [], []
    for param in module.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 and id(param) not in exempt else no_decay).append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "lr": lr},
        {"params": no_decay, "weight_decay": 0.0, "lr": lr},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(groups: list[dict], cfg: OptimConfig, fused: bool = False) -> torch.optim.AdamW:
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=fused or None)


def warmup_cosine(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int, start_step: int = 0, current_step: int = 0
):
    """Linear warmup to each group's lr over cfg.warmup_steps, then cosine to lr * min_lr_ratio at
    `start_step + total_steps` (and there it stays). A schedule that starts later (a resumed run
    that asked for a new one) warms up again from there. `current_step` optimizer steps have been
    taken: the next one runs at the schedule's lr for that step. Each group's peak lr is its
    "initial_lr" when set (as a loaded optimizer state has it), else its "lr"."""
    warmup = max(cfg.warmup_steps, 0)

    def factor(step: int) -> float:
        step -= start_step
        if step < warmup:
            return (step + 1) / warmup
        progress = min((step - warmup) / max(total_steps - warmup, 1), 1.0)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    if current_step:
        scheduler.last_epoch = current_step
        for group, peak in zip(optimizer.param_groups, scheduler.base_lrs):
            group["lr"] = peak * factor(current_step)
        scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
    return scheduler
