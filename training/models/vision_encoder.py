"""The VLM's vision encoder: patch features from mmtrain's own CLIP tower, or from a Hugging Face
CLIP or SigLIP vision model, behind one interface, chosen by what the checkpoint path holds.

Features come from `feature_layer` (-2: the penultimate block's output, LLaVA's choice; the
hidden state before any final norm), with CLIP's class token dropped (SigLIP has none).
Shapes: B = batch, P = patches, V = vision width.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from mmtrain.training.checkpoint.store import latest_checkpoint, load_checkpoint, load_config_dict
from mmtrain.training.config.io import from_dict
from mmtrain.training.config.schema import ClipRunConfig
from mmtrain.training.models.clip import ClipModel
from mmtrain.training.models.hub import local_model_dir

TowerKind = Literal["mmtrain", "hf_clip", "hf_siglip"]


@dataclass(frozen=True)
class TowerInfo:
    """What the rest of the VLM needs to know of a vision tower, read from its files alone."""

    kind: TowerKind
    path: str  # the checkpoint directory (for mmtrain: the newest intact checkpoint of a run)
    image_size: int
    patch_size: int
    width: int
    layers: int
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    center_crop: bool  # eval: resize the shorter side and crop (CLIP), or resize the whole image (SigLIP)

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def tower_info(path: str | Path) -> TowerInfo:
    """An HF directory (config.json) is read as CLIP or SigLIP; anything else as an mmtrain CLIP
    checkpoint or run directory."""
    path = Path(local_model_dir(str(path), "model.vision.checkpoint"))
    if (path / "config.json").is_file():
        return _hf_tower_info(path)

    checkpoint = latest_checkpoint(path)
    vision = from_dict(ClipRunConfig, load_config_dict(checkpoint)).model.vision
    return TowerInfo(
        "mmtrain",
        str(checkpoint.resolve()),
        vision.image_size,
        vision.patch_size,
        vision.width,
        vision.layers,
        tuple(vision.image_mean),
        tuple(vision.image_std),
        center_crop=True,
    )


def _hf_tower_info(path: Path) -> TowerInfo:
    from transformers import AutoConfig  # transformers: only for Hugging Face towers

    config = AutoConfig.from_pretrained(path)
    kind = {
        "clip": "hf_clip",
        "clip_vision_model": "hf_clip",
        "siglip": "hf_siglip",
        "siglip_vision_model": "hf_siglip",
    }.get(config.model_type)
    if kind is None:
        raise ValueError(
            f"model.vision.checkpoint={path} holds a {config.model_type!r} model; give a CLIP or "
            "SigLIP directory (CLIPModel, CLIPVisionModel, SiglipModel, SiglipVisionModel) or an "
            "mmtrain CLIP run"
        )
    vision = getattr(config, "vision_config", config)
    processor_path = path / "preprocessor_config.json"
    processor = json.loads(processor_path.read_text()) if processor_path.is_file() else {}
    siglip = kind == "hf_siglip"
    default_mean, default_std = (
        ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
        if siglip
        else ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
    )
    return TowerInfo(
        kind,
        str(path.resolve()),
        vision.image_size,
        vision.patch_size,
        vision.hidden_size,
        vision.num_hidden_layers,
        tuple(processor.get("image_mean", default_mean)),
        tuple(processor.get("image_std", default_std)),
        center_crop=processor.get("do_center_crop", not siglip),
    )


def load_vision_encoder(info: TowerInfo, feature_layer: int) -> nn.Module:
    """The patch-feature encoder for `info`, with its pretrained weights."""
    depth = info.layers
    blocks = depth + 1 + feature_layer if feature_layer < 0 else feature_layer
    if not 1 <= blocks <= depth:
        raise ValueError(f"model.vision.feature_layer={feature_layer} is outside the tower's {depth} blocks")
    if info.kind == "mmtrain":
        return OwnTowerPatches(_own_tower(info.path), blocks)
    from transformers import CLIPVisionModel, SiglipVisionModel  # transformers: only for Hugging Face towers

    model_class = CLIPVisionModel if info.kind == "hf_clip" else SiglipVisionModel
    tower = model_class.from_pretrained(info.path, dtype=torch.float32, use_safetensors=True, trust_remote_code=False)
    return HFTowerPatches(tower, blocks, drop_cls=info.kind == "hf_clip")


def _own_tower(checkpoint: str) -> nn.Module:

    clip_cfg = from_dict(ClipRunConfig, load_config_dict(Path(checkpoint)))
    clip = ClipModel(clip_cfg.model, clip_cfg.data.context_length, clip_cfg.loss)
    load_checkpoint(Path(checkpoint), clip)
    return clip.visual


class OwnTowerPatches(nn.Module):
    """mmtrain's ViT: patch tokens after the first `blocks` blocks, class token dropped."""

    def __init__(self, tower: nn.Module, blocks: int):
        super().__init__()
        self.tower, self.blocks = tower, blocks

    def forward(self, images_BCHW: torch.Tensor) -> torch.Tensor:
        return self.tower.tokens(images_BCHW, stop_after=self.blocks)[:, 1:]

    def unused_modules(self) -> list[nn.Module]:
        """The blocks after `blocks`, the post-norm and the projection: the patch features never
        reach them, so they get no gradient (DDP refuses trainable parameters without one)."""
        return [*self.tower.transformer.blocks[self.blocks :], self.tower.ln_post, self.tower.proj]


class HFTowerPatches(nn.Module):
    """A transformers CLIP/SigLIP vision model: the hidden state after `blocks` encoder layers
    (index `blocks` of hidden_states, whose 0 is the embeddings), class token dropped for CLIP."""

    def __init__(self, model: nn.Module, blocks: int, drop_cls: bool):
        super().__init__()
        self.model, self.blocks, self.drop_cls = model, blocks, drop_cls

    def no_weight_decay(self) -> set[str]:
        return {name for name, _ in self.named_parameters() if "embedding" in name and "patch" not in name}

    def forward(self, images_BCHW: torch.Tensor) -> torch.Tensor:
        hidden_BTV = self.model(pixel_values=images_BCHW, output_hidden_states=True).hidden_states[self.blocks]
        return hidden_BTV[:, 1:] if self.drop_cls else hidden_BTV

    def unused_modules(self) -> list[nn.Module]:
        """The layers after `blocks`, the post-norm and SigLIP's pooling head (see OwnTowerPatches)."""
        vision = getattr(self.model, "vision_model", self.model)  # transformers 5 flattened it
        return [
            *vision.encoder.layers[self.blocks :],
            vision.post_layernorm,
            *filter(None, [getattr(vision, "head", None)]),
        ]
