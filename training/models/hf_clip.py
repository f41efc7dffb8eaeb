"""Hugging Face CLIP <-> mmtrain CLIP: configs and weights, both ways (one module per format).

mmtrain's towers are CLIP's architecture (pre-norm blocks, a class token and learned positions in
the image tower, a causal text tower pooled at the end-of-text token), so a checkpoint converts
name by name; CLIP's separate q/k/v projections become our fused qkv (and back). Shapes that do not
fit fail with the names and shapes that differ.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from mmtrain.pipelines.tokenizer import load_tokenizer, pad_token_id
from mmtrain.training.checkpoint.store import load_config_dict, read_model_state
from mmtrain.training.config.io import from_dict
from mmtrain.training.config.schema import ClipModelConfig, ClipRunConfig, TextConfig, VisionConfig
from mmtrain.training.models.hub import local_model_dir
from mmtrain.training.models.image_processors import eval_image_processor

# (ours, theirs) per transformer block; qkv is split/concatenated separately.
_BLOCK = (
    ("ln_1", "layer_norm1"),
    ("ln_2", "layer_norm2"),
    ("attn.out", "self_attn.out_proj"),
    ("mlp.0", "mlp.fc1"),
    ("mlp.2", "mlp.fc2"),
)
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


def pretrained_run_config(cfg: ClipRunConfig) -> ClipRunConfig:
    """`cfg` with what the HF CLIPModel directory `cfg.init_from` fixes: the model's shape and
    activation, the context length, the image size and normalisation, and (unless data.tokenizer
    names another) its tokenizer."""
    directory = Path(local_model_dir(cfg.init_from, "init_from"))
    hf_config = load_hf_config(directory)
    model = model_config_from_hf(hf_config)
    mean, std = image_statistics(directory)
    model = dataclasses.replace(model, vision=dataclasses.replace(model.vision, image_mean=mean, image_std=std))
    data = dataclasses.replace(
        cfg.data,
        context_length=hf_config.text_config.max_position_embeddings,
        tokenizer=cfg.data.tokenizer or str(directory.resolve()),
        augment=dataclasses.replace(cfg.data.augment, image_size=model.vision.image_size),
    )
    return dataclasses.replace(cfg, init_from=str(directory.resolve()), model=model, data=data)


def load_hf_config(directory: Path):
    """The directory's CLIPConfig; a clear error for anything else."""
    from transformers import AutoConfig, CLIPConfig  # transformers: a run of our own CLIP never loads it

    if not (Path(directory) / "config.json").is_file():
        raise ValueError(f"init_from={directory} is not a Hugging Face model directory (no config.json)")
    config = AutoConfig.from_pretrained(directory)
    if not isinstance(config, CLIPConfig):
        raise ValueError(
            f"init_from={directory} holds a {type(config).__name__}, not a CLIPModel: the CLIP "
            "trainer fine-tunes CLIP checkpoints (a SigLIP or CLIP vision tower can feed the VLM: "
            "model.vision.checkpoint)"
        )
    return config


def image_statistics(directory: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) from the directory's preprocessor_config.json, else CLIP's."""
    path = Path(directory) / "preprocessor_config.json"
    defaults = VisionConfig()
    if not path.is_file():
        return defaults.image_mean, defaults.image_std
    processor = json.loads(path.read_text())
    return (
        tuple(processor.get("image_mean", defaults.image_mean)),
        tuple(processor.get("image_std", defaults.image_std)),
    )


def load_hf_weights(directory: Path) -> dict[str, torch.Tensor]:
    """The safetensors weights of an HF directory (one file, or shards listed in an index)."""
    from safetensors.torch import load_file  # only for Hugging Face checkpoints

    directory = Path(directory)
    index = directory / "model.safetensors.index.json"
    files = (
        sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else ["model.safetensors"]
    )
    if not all((directory / name).is_file() for name in files):
        raise ValueError(
            f"{directory} holds no model.safetensors: save the model with save_pretrained (safetensors is its default)"
        )
    state = {}
    for name in files:
        state.update(load_file(directory / name))
    return state


def model_config_from_hf(hf_config) -> ClipModelConfig:
    """Our model section for a transformers CLIPConfig."""
    vision, text = hf_config.vision_config, hf_config.text_config
    for part in (vision, text):
        if part.hidden_act not in ("gelu", "quick_gelu"):
            raise ValueError(
                f"CLIP checkpoints with activation {part.hidden_act!r} are not supported (gelu and quick_gelu are)"
            )
    return ClipModelConfig(
        embed_dim=hf_config.projection_dim,
        vision=VisionConfig(
            image_size=vision.image_size,
            patch_size=vision.patch_size,
            width=vision.hidden_size,
            layers=vision.num_hidden_layers,
            heads=vision.num_attention_heads,
            mlp_ratio=vision.intermediate_size / vision.hidden_size,
            activation=vision.hidden_act,
        ),
        text=TextConfig(
            vocab_size=text.vocab_size,
            width=text.hidden_size,
            layers=text.num_hidden_layers,
            heads=text.num_attention_heads,
            mlp_ratio=text.intermediate_size / text.hidden_size,
            activation=text.hidden_act,
        ),
    )


def hf_config_from_model(cfg: ClipModelConfig, context_length: int, eos_token_id: int, pad_token_id: int):
    """A transformers CLIPConfig for our model section."""
    from transformers import CLIPConfig  # transformers: a run of our own CLIP never loads it

    vision, text = cfg.vision, cfg.text
    return CLIPConfig(
        projection_dim=cfg.embed_dim,
        vision_config=dict(
            hidden_size=vision.width,
            intermediate_size=round(vision.width * vision.mlp_ratio),
            num_hidden_layers=vision.layers,
            num_attention_heads=vision.heads,
            image_size=vision.image_size,
            patch_size=vision.patch_size,
            hidden_act=vision.activation,
            projection_dim=cfg.embed_dim,
        ),
        text_config=dict(
            vocab_size=text.vocab_size,
            hidden_size=text.width,
            intermediate_size=round(text.width * text.mlp_ratio),
            num_hidden_layers=text.layers,
            num_attention_heads=text.heads,
            max_position_embeddings=context_length,
            hidden_act=text.activation,
            projection_dim=cfg.embed_dim,
            # pooled at the first end-of-text token, as our tower pools at the last real one
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            bos_token_id=eos_token_id,
        ),
    )


def state_from_hf(hf_state: dict[str, torch.Tensor], layers: dict[str, int]) -> dict[str, torch.Tensor]:
    """Our state dict from a CLIPModel's (`layers`: blocks per tower, {"visual": n, "text": m})."""
    missing = [theirs for theirs in _TOWER.values() if theirs not in hf_state]
    if missing:
        raise ValueError(f"not a CLIPModel checkpoint: it lacks {', '.join(missing[:5])}")
    state = {ours: hf_state[theirs] for ours, theirs in _TOWER.items()}
    state["logit_scale"] = state["logit_scale"].reshape(1)  # CLIPModel's is 0-d, ours a vector (FSDP2)
    for ours_tower, their_tower in _TOWERS:
        for i in range(layers[ours_tower]):
            ours, theirs = f"{ours_tower}.transformer.blocks.{i}", f"{their_tower}.encoder.layers.{i}"
            for name in ("weight", "bias"):
                state[f"{ours}.attn.qkv.{name}"] = torch.cat(
                    [hf_state[f"{theirs}.self_attn.{p}_proj.{name}"] for p in "qkv"]
                )
                for our_part, their_part in _BLOCK:
                    state[f"{ours}.{our_part}.{name}"] = hf_state[f"{theirs}.{their_part}.{name}"]
    return state


def state_to_hf(state: dict[str, torch.Tensor], layers: dict[str, int]) -> dict[str, torch.Tensor]:
    """A CLIPModel's state dict from ours (the SigLIP bias, which CLIP lacks, is left out)."""
    hf_state = {theirs: state[ours] for ours, theirs in _TOWER.items()}
    hf_state["logit_scale"] = hf_state["logit_scale"].reshape(())  # CLIPModel's is 0-d
    for ours_tower, their_tower in _TOWERS:
        hf_state.update(_blocks_to_hf(state, ours_tower, their_tower, layers[ours_tower]))
    return hf_state


def _blocks_to_hf(state: dict, ours_tower: str, their_tower: str, layers: int) -> dict[str, torch.Tensor]:
    hf_state = {}
    for i in range(layers):
        ours, theirs = f"{ours_tower}.transformer.blocks.{i}", f"{their_tower}.encoder.layers.{i}"
        for name in ("weight", "bias"):
            for part, chunk in zip("qkv", state[f"{ours}.attn.qkv.{name}"].chunk(3)):
                hf_state[f"{theirs}.self_attn.{part}_proj.{name}"] = chunk.contiguous()
            for our_part, their_part in _BLOCK:
                hf_state[f"{theirs}.{their_part}.{name}"] = state[f"{ours}.{our_part}.{name}"]
    return hf_state


def vision_state_to_hf(tower_state: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """A CLIPVisionModel's state dict from our image tower's (the embedding projection, which the
    vision model lacks, left out)."""
    prefixed = {f"visual.{name}": value for name, value in tower_state.items()}
    hf_state = {
        theirs: prefixed[ours]
        for ours, theirs in _TOWER.items()
        if ours.startswith("visual.") and ours != "visual.proj.weight"
    }
    hf_state.update(_blocks_to_hf(prefixed, "visual", "vision_model", layers))
    return hf_state


def load_pretrained(model: torch.nn.Module, directory: str) -> None:
    """Our CLIP model's weights from an HF CLIPModel directory."""
    layers = {"visual": len(model.visual.transformer.blocks), "text": len(model.text.transformer.blocks)}
    load_into(model, state_from_hf(load_hf_weights(Path(directory)), layers), directory)


def load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load `state` into `model`, failing with every name and shape that differs."""
    expected = model.state_dict()
    problems = [
        f"{name}: checkpoint {tuple(state[name].shape)}, model {tuple(expected[name].shape)}"
        for name in state
        if name in expected and state[name].shape != expected[name].shape
    ]
    problems += [
        f"{name}: missing from the checkpoint" for name in expected if name not in state and name != "logit_bias"
    ]
    if problems:
        raise ValueError(f"{source} does not fit the model:\n  " + "\n  ".join(problems))
    model.load_state_dict({**expected, **state})


def export_hf(checkpoint: Path, out_dir: Path) -> Path:
    """A CLIP checkpoint as a directory transformers loads: config.json, model.safetensors,
    tokenizer files and preprocessor_config.json (nothing pickled)."""
    from tokenizers import Tokenizer  # only when exporting
    from transformers import CLIPModel, PreTrainedTokenizerFast  # transformers: a run of our own CLIP never loads it

    cfg = from_dict(ClipRunConfig, load_config_dict(checkpoint))
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    eos_id = end_of_text_id(tokenizer)
    pad_id = pad_token_id(tokenizer)
    hf_config = hf_config_from_model(cfg.model, cfg.data.context_length, eos_id, pad_id)
    model = CLIPModel(hf_config)
    state = read_model_state(checkpoint)
    layers = {"visual": cfg.model.vision.layers, "text": cfg.model.text.layers}
    missing, unexpected = model.load_state_dict(state_to_hf(state, layers), strict=False)
    missing = [name for name in missing if not name.endswith("position_ids")]  # buffers, rebuilt
    assert not missing and not unexpected, (missing, unexpected)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    raw = load_tokenizer(cfg.data.tokenizer)
    raw.no_padding()
    raw.no_truncation()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(raw.to_str()),
        model_max_length=cfg.data.context_length,
        padding_side="right",
        eos_token=tokenizer.id_to_token(eos_id),
        pad_token=tokenizer.id_to_token(pad_id),
    )
    fast.save_pretrained(out_dir)
    augment = cfg.data.augment
    eval_image_processor(
        augment.image_size,
        cfg.model.vision.image_mean,
        cfg.model.vision.image_std,
        augment.eval_center_crop,
        augment.eval_resize_ratio,
    ).save_pretrained(out_dir)
    return out_dir


def end_of_text_id(tokenizer) -> int:
    """The token our text tower pools at: the one the tokenizer ends every caption with. CLIPModel
    pools at the first occurrence of its config's eos_token_id, the same token."""
    ids = tokenizer.encode("a").ids
    special = {token_id for token_id, token in tokenizer.get_added_tokens_decoder().items() if token.special}
    if not ids or ids[-1] not in special:
        raise ValueError(
            "the tokenizer ends captions with no special end-of-text token, so transformers' CLIP "
            "would pool elsewhere than mmtrain does; train with a tokenizer that wraps captions"
        )
    if ids[-1] == 2:  # CLIPModel reads eos_token_id == 2 as "pool at the largest token id" (legacy)
        raise ValueError("the tokenizer's end-of-text id is 2, which CLIPModel treats as a legacy marker")
    return ids[-1]
