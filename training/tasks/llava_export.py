"""An mmtrain VLM as a Hugging Face LLaVA: LlavaForConditionalGeneration with the vision tower as a
CLIPVisionModel or SiglipVisionModel, the projector as its multi_modal_projector and the LM as its
language model, saved as safetensors with the LM's tokenizer (and <image> token) and the tower's
image processor (one module per format).

LLaVA's projector is Linear -> GELU -> Linear, so only `mlp2x_gelu` exports; `linear` and deeper
MLPs have no place in the format and are refused. Features come from the layer mmtrain used
(vision_feature_layer), the class token dropped for CLIP ("default") and kept for SigLIP, which has
none ("full").
"""

from __future__ import annotations

from pathlib import Path

from torch import nn
from transformers import AutoConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

from mmtrain.pipelines.conversations import IMAGE_PLACEHOLDER
from mmtrain.training.checkpoint.store import load_checkpoint, load_config_dict
from mmtrain.training.config.io import from_dict
from mmtrain.training.config.schema import ClipRunConfig, VlmRunConfig
from mmtrain.training.models.hf_clip import hf_config_from_model, vision_state_to_hf
from mmtrain.training.models.image_processors import eval_image_processor
from mmtrain.training.tasks.vlm import VlmTask


def export_llava(checkpoint: Path, out_dir: Path) -> Path:

    cfg = from_dict(VlmRunConfig, load_config_dict(checkpoint))
    if cfg.model.projector.type != "mlp2x_gelu":
        raise ValueError(
            f"model.projector.type={cfg.model.projector.type!r} has no LLaVA equivalent: LLaVA's "
            "projector is mlp2x_gelu (Linear -> GELU -> Linear); train with that type to export"
        )
    task = VlmTask(cfg)
    model = task.build_model()
    load_checkpoint(Path(checkpoint), model)
    tower = task.tower
    if tower.kind == "mmtrain":
        vision_config = _own_vision_config(tower.path)
    else:
        vision_config = AutoConfig.from_pretrained(tower.path)
        vision_config = getattr(vision_config, "vision_config", vision_config)
    lm = model.lm
    if hasattr(lm, "merge_and_unload"):  # LoRA (peft): the adapters folded into the LM's own weights
        lm = lm.merge_and_unload()
    llava = LlavaForConditionalGeneration(
        LlavaConfig(
            vision_config=vision_config,
            text_config=lm.config,
            image_token_index=model.image_token_id,
            vision_feature_layer=cfg.model.vision.feature_layer,
            vision_feature_select_strategy="full" if tower.kind == "hf_siglip" else "default",
            projector_hidden_act="gelu",
            image_seq_length=tower.num_patches,
            multimodal_projector_bias=True,
        )
    )
    _copy_vision(model.vision, llava.model.vision_tower, tower.kind)
    projector = llava.model.multi_modal_projector
    projector.linear_1.load_state_dict(model.projector[0].state_dict())
    projector.linear_2.load_state_dict(model.projector[2].state_dict())
    llava.model.language_model.load_state_dict(lm.get_decoder().state_dict())
    llava.lm_head.load_state_dict(lm.get_output_embeddings().state_dict())
    out_dir = Path(out_dir)
    llava.save_pretrained(out_dir, safe_serialization=True)
    _processor(task, cfg).save_pretrained(out_dir)  # the tokenizer and image processor with it
    return out_dir


def _processor(task, cfg):
    """The LlavaProcessor that turns (images, text) into what mmtrain trained on: one <image> in the
    text expanded to the tower's patch count (its CLS dropped by the "default" strategy; SigLIP has
    none), images preprocessed as the eval path does, the LM's chat template."""

    tower = task.tower
    image_processor = eval_image_processor(
        tower.image_size, tower.image_mean, tower.image_std, tower.center_crop, cfg.data.augment.eval_resize_ratio
    )
    has_cls = tower.kind != "hf_siglip"
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=task.tokenizer,
        patch_size=tower.patch_size,
        vision_feature_select_strategy="default" if has_cls else "full",
        num_additional_image_tokens=1 if has_cls else 0,
        image_token=IMAGE_PLACEHOLDER,
        chat_template=task.tokenizer.chat_template,
    )


def _own_vision_config(checkpoint: str):

    clip = from_dict(ClipRunConfig, load_config_dict(Path(checkpoint)))
    return hf_config_from_model(clip.model, clip.data.context_length, eos_token_id=0, pad_token_id=0).vision_config


def _copy_vision(encoder: nn.Module, target: nn.Module, kind: str) -> None:
    """The VLM's vision weights into LLaVA's vision tower (a CLIP or SigLIP vision model; transformers
    5 holds it without the `vision_model.` level, so names are matched with or without it)."""
    if kind == "mmtrain":
        tower = encoder.tower
        state = vision_state_to_hf(tower.state_dict(), len(tower.transformer.blocks))
    else:
        state = encoder.model.state_dict()
    if not any(name.startswith("vision_model.") for name in target.state_dict()):
        state = {name.removeprefix("vision_model."): value for name, value in state.items()}
    missing, unexpected = target.load_state_dict(state, strict=False)
    missing = [name for name in missing if not name.endswith("position_ids")]  # buffers, rebuilt
    assert not missing and not unexpected, (missing, unexpected)
