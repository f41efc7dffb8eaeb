"""Hugging Face CLIP <-> mmtrain CLIP: configs and weights, both ways (one module per format).

mmtrain's towers are CLIP's architecture (pre-norm blocks, a class token and learned positions in
the image tower, a causal text tower pooled at the end-of-text token), so a checkpoint converts
name by name; CLIP's separate q/k/v projections become our fused qkv (and back). Shapes that do not
fit fail with the names and shapes that differ.
"""

from __future__ import annotations

import torch

from training.config import ClipModelConfig, TextConfig, VisionConfig

# (ours, theirs) per transformer block; qkv is split/concatenated separately.
_BLOCK = (("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), ("attn.out", "self_attn.out_proj"),
          ("mlp.0", "mlp.fc1"), ("mlp.2", "mlp.fc2"))
_TOWER = {  # ours -> theirs, outside the blocks
    "visual.patch_proj.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
    "visual.proj.weight": "visual_projection.weight",
    "text.token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "text.positional_embedding": "text_model.embeddings.position_embedding.weight",
    "text.ln_final.weight": "text_model.final_layer_norm.weight",
    "text.ln_final.bias": "text_model.final_layer_norm.bias",
    "text.proj.weight": "text_projection.weight",
    "logit_scale": "logit_scale",
}
_TOWERS = (("visual", "vision_model"), ("text", "text_model"))


def model_config_from_hf(hf_config) -> ClipModelConfig:
    """Our model section for a transformers CLIPConfig."""
    vision, text = hf_config.vision_config, hf_config.text_config
    for part in (vision, text):
        if part.hidden_act not in ("gelu", "quick_gelu"):
            raise ValueError(f"CLIP checkpoints with activation {part.hidden_act!r} are not supported "
                             "(gelu and quick_gelu are)")
    return ClipModelConfig(
        embed_dim=hf_config.projection_dim,
        vision=VisionConfig(image_size=vision.image_size, patch_size=vision.patch_size, width=vision.hidden_size,
                            layers=vision.num_hidden_layers, heads=vision.num_attention_heads,
                            mlp_ratio=vision.intermediate_size / vision.hidden_size, activation=vision.hidden_act),
        text=TextConfig(vocab_size=text.vocab_size, width=text.hidden_size, layers=text.num_hidden_layers,
                        heads=text.num_attention_heads, mlp_ratio=text.intermediate_size / text.hidden_size,
                        activation=text.hidden_act))


def hf_config_from_model(cfg: ClipModelConfig, context_length: int, eos_token_id: int, pad_token_id: int):
    """A transformers CLIPConfig for our model section."""
    from transformers import CLIPConfig

    vision, text = cfg.vision, cfg.text
    return CLIPConfig(
        projection_dim=cfg.embed_dim,
        vision_config=dict(hidden_size=vision.width, intermediate_size=int(vision.width * vision.mlp_ratio),
                           num_hidden_layers=vision.layers, num_attention_heads=vision.heads,
                           image_size=vision.image_size, patch_size=vision.patch_size, hidden_act=vision.activation,
                           projection_dim=cfg.embed_dim),
        text_config=dict(vocab_size=text.vocab_size, hidden_size=text.width,
                         intermediate_size=int(text.width * text.mlp_ratio), num_hidden_layers=text.layers,
                         num_attention_heads=text.heads, max_position_embeddings=context_length,
                         hidden_act=text.activation, projection_dim=cfg.embed_dim,
                         # pooled at the first end-of-text token, as our tower pools at the last real one
                         eos_token_id=eos_token_id, pad_token_id=pad_token_id, bos_token_id=eos_token_id))


def state_from_hf(hf_state: dict[str, torch.Tensor], layers: dict[str, int]) -> dict[str, torch.Tensor]:
    """Our state dict from a CLIPModel's (`layers`: blocks per tower, {"visual": n, "text": m})."""
    state = {ours: hf_state[theirs] for ours, theirs in _TOWER.items()}
    for ours_tower, their_tower in _TOWERS:
        for i in range(layers[ours_tower]):
            ours, theirs = f"{ours_tower}.transformer.blocks.{i}", f"{their_tower}.encoder.layers.{i}"
            for name in ("weight", "bias"):
                state[f"{ours}.attn.qkv.{name}"] = torch.cat(
                    [hf_state[f"{theirs}.self_attn.{p}_proj.{name}"] for p in "qkv"])
                for our_part, their_part in _BLOCK:
                    state[f"{ours}.{our_part}.{name}"] = hf_state[f"{theirs}.{their_part}.{name}"]
    return state


def state_to_hf(state: dict[str, torch.Tensor], layers: dict[str, int]) -> dict[str, torch.Tensor]:
    """A CLIPModel's state dict from ours (the SigLIP bias, which CLIP lacks, is left out)."""
    hf_state = {theirs: state[ours] for ours, theirs in _TOWER.items()}
    for ours_tower, their_tower in _TOWERS:
        for i in range(layers[ours_tower]):
            ours, theirs = f"{ours_tower}.transformer.blocks.{i}", f"{their_tower}.encoder.layers.{i}"
            for name in ("weight", "bias"):
                for part, chunk in zip("qkv", state[f"{ours}.attn.qkv.{name}"].chunk(3)):
                    hf_state[f"{theirs}.self_attn.{part}_proj.{name}"] = chunk.contiguous()
                for our_part, their_part in _BLOCK:
                    hf_state[f"{theirs}.{their_part}.{name}"] = state[f"{ours}.{our_part}.{name}"]
    return hf_state


def load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load `state` into `model`, failing with every name and shape that differs."""
    expected = model.state_dict()
    problems = [f"{name}: checkpoint {tuple(state[name].shape)}, model {tuple(expected[name].shape)}"
                for name in state if name in expected and state[name].shape != expected[name].shape]
    problems += [f"{name}: missing from the checkpoint" for name in expected if name not in state
                 and name != "logit_bias"]
    if problems:
        raise ValueError(f"{source} does not fit the model:\n  " + "\n  ".join(problems))
    model.load_state_dict({**expected, **state})
