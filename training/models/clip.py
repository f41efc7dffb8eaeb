"""CLIP dual encoder: a ViT image tower and a causal text transformer, both L2-normalised.

Shapes: B = batch, H/W = image size, C = channels, P = patches, L = context length,
D = tower width, E = shared embedding size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mmtrain.training.config.schema import ClipModelConfig, LossConfig, TextConfig, VisionConfig
from mmtrain.training.models.transformer import Transformer


class VisionTower(nn.Module):
    def __init__(self, cfg: VisionConfig, embed_dim: int):
        super().__init__()
        if cfg.image_size % cfg.patch_size:
            raise ValueError(f"image_size {cfg.image_size} is not a multiple of patch_size {cfg.patch_size}")
        num_patches = (cfg.image_size // cfg.patch_size) ** 2
        scale = cfg.width**-0.5
        self.patch_proj = nn.Conv2d(3, cfg.width, cfg.patch_size, cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(cfg.width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(num_patches + 1, cfg.width))
        self.ln_pre = nn.LayerNorm(cfg.width)
        self.transformer = Transformer(cfg.width, cfg.layers, cfg.heads, cfg.mlp_ratio, cfg.activation)
        self.ln_post = nn.LayerNorm(cfg.width)
        self.proj = nn.Linear(cfg.width, embed_dim, bias=False)

    def no_weight_decay(self) -> set[str]:
        return {"class_embedding", "positional_embedding"}

    def tokens(self, images_BCHW: torch.Tensor, stop_after: int | None = None) -> torch.Tensor:
        """[CLS] + patch tokens after `stop_after` blocks (all blocks if None): [B, 1+P, D]."""
        patches_BDP = self.patch_proj(images_BCHW).flatten(2)
        x_BPD = patches_BDP.transpose(1, 2)
        cls_B1D = self.class_embedding.to(x_BPD.dtype).expand(x_BPD.shape[0], 1, -1)
        x_BTD = torch.cat([cls_B1D, x_BPD], dim=1) + self.positional_embedding.to(x_BPD.dtype)
        return self.transformer(self.ln_pre(x_BTD), stop_after=stop_after)

    def forward(self, images_BCHW: torch.Tensor) -> torch.Tensor:
        return self.proj(self.ln_post(self.tokens(images_BCHW)[:, 0]))


class TextTower(nn.Module):
    def __init__(self, cfg: TextConfig, context_length: int, embed_dim: int):
        super().__init__()
        if cfg.vocab_size < 1:
            raise ValueError("model.text.vocab_size must be set (0 is resolved from the tokenizer by the job)")
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.positional_embedding = nn.Parameter(0.01 * torch.randn(context_length, cfg.width))
        self.transformer = Transformer(cfg.width, cfg.layers, cfg.heads, cfg.mlp_ratio, cfg.activation)
        self.ln_final = nn.LayerNorm(cfg.width)
        self.proj = nn.Linear(cfg.width, embed_dim, bias=False)

    def no_weight_decay(self) -> set[str]:
        return {"token_embedding.weight", "positional_embedding"}

    def forward(self, input_ids_BL: torch.Tensor, attention_mask_BL: torch.Tensor) -> torch.Tensor:
        x_BLD = self.token_embedding(input_ids_BL) + self.positional_embedding
        x_BLD = self.ln_final(self.transformer(x_BLD, causal=True))
        # Right padding + causal attention: the last real token (end-of-text) has seen the whole caption.
        last_B = attention_mask_BL.sum(dim=1).clamp(min=1) - 1
        return self.proj(x_BLD[torch.arange(x_BLD.shape[0], device=x_BLD.device), last_B])


class ClipModel(nn.Module):
    def __init__(self, cfg: ClipModelConfig, context_length: int, loss: LossConfig):
        super().__init__()
        self.visual = VisionTower(cfg.vision, cfg.embed_dim)
        self.text = TextTower(cfg.text, context_length, cfg.embed_dim)
        # One-element vectors, not scalars: FSDP2 shards parameters along their first dimension and
        # refuses 0-d ones. Checkpoints and CLIPModels with 0-d values still load (_scalars_as_vectors).
        self.logit_scale = nn.Parameter(
            torch.full((1,), math.log(1.0 / loss.init_temperature)), requires_grad=loss.learnable_temperature
        )
        # SigLIP's learnable bias; unused (and untouched) by InfoNCE.
        self.logit_bias = nn.Parameter(torch.full((1,), loss.siglip_init_bias), requires_grad=loss.kind == "siglip")
        self._register_load_state_dict_pre_hook(_scalars_as_vectors)

    def no_weight_decay(self) -> set[str]:
        return {"logit_scale", "logit_bias"}  # the towers declare their embeddings

    def encode_image(self, images_BCHW: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.visual(images_BCHW), dim=-1)

    def encode_text(self, input_ids_BL: torch.Tensor, attention_mask_BL: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text(input_ids_BL, attention_mask_BL), dim=-1)

    def forward(self, images_BCHW, input_ids_BL, attention_mask_BL):
        return self.encode_image(images_BCHW), self.encode_text(input_ids_BL, attention_mask_BL)

    @torch.no_grad()
    def clamp_logit_scale(self, max_logit_scale: float) -> None:
        self.logit_scale.clamp_(0, math.log(max_logit_scale))


def _scalars_as_vectors(state: dict, prefix: str, *args) -> None:
    """Checkpoints from before the temperature and bias were one-element vectors held them as 0-d."""
    for name in ("logit_scale", "logit_bias"):
        value = state.get(prefix + name)
        if value is not None and value.dim() == 0:
            state[prefix + name] = value.reshape(1)
