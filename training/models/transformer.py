"""A pre-norm transformer shared by the image and text towers.

Shapes: B = batch, T = tokens, D = width, H = heads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x_BTD: torch.Tensor, causal: bool) -> torch.Tensor:
        batch, tokens, width = x_BTD.shape
        qkv = self.qkv(x_BTD).view(batch, tokens, 3, self.heads, width // self.heads)
        q_BHTd, k_BHTd, v_BHTd = qkv.permute(2, 0, 3, 1, 4)
        y_BHTd = F.scaled_dot_product_attention(q_BHTd, k_BHTd, v_BHTd, is_causal=causal)
        return self.out(y_BHTd.transpose(1, 2).reshape(batch, tokens, width))


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the activation OpenAI's CLIP checkpoints were trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


ACTIVATIONS = {"gelu": nn.GELU, "quick_gelu": QuickGELU}


class Block(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float, activation: str = "gelu"):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        hidden = round(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), ACTIVATIONS[activation](), nn.Linear(hidden, width))

    def forward(self, x_BTD: torch.Tensor, causal: bool = False) -> torch.Tensor:
        x_BTD = x_BTD + self.attn(self.ln_1(x_BTD), causal)
        return x_BTD + self.mlp(self.ln_2(x_BTD))


class Transformer(nn.Module):
    # As Hugging Face models name theirs: the repeated unit that sharding and activation
    # checkpointing treat as one (training/engine/parallelize.py finds blocks by this name).
    _no_split_modules = ("Block",)

    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float, activation: str = "gelu"):
        super().__init__()
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio, activation) for _ in range(layers))

    def forward(self, x_BTD: torch.Tensor, causal: bool = False, stop_after: int | None = None):
        """Run all blocks, or only the first `stop_after` (for features from an inner layer)."""
        for block in self.blocks[:stop_after]:
            x_BTD = block(x_BTD, causal)
        return x_BTD
