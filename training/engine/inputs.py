"""What both trainers do to a batch before the model sees it, and to a model before reading it."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class ImageNormalizer:
    """uint8 [B, H, W, C] -> normalised float [B, C, H, W] on the device (the copy stays uint8).

    The mean and std tensors are made once per device: building them from Python lists every step
    is a host->device copy that makes the host wait on the GPU."""

    def __init__(self, mean: tuple[float, float, float], std: tuple[float, float, float]):
        self.mean, self.std = mean, std
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, images_BHWC: torch.Tensor, device: torch.device) -> torch.Tensor:
        images = to_tensor(images_BHWC).to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
        mean, std = self._statistics(images.device)
        return (images - mean) / std

    def _statistics(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._on_device:
            self._on_device[device] = (
                torch.tensor(self.mean, device=device).view(1, 3, 1, 1),
                torch.tensor(self.std, device=device).view(1, 3, 1, 1),
            )
        return self._on_device[device]


def to_tensor(values) -> torch.Tensor:
    """A batch column as a tensor: tensors as they are, numpy arrays shared, or copied when read-only
    (Ray's numpy batches are, and torch warns on a tensor over memory it may not write)."""
    if isinstance(values, np.ndarray) and not values.flags.writeable:
        values = values.copy()
    return torch.as_tensor(values)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DDP / torch.compile wrappers."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model
