"""The VLM's vision encoder from what the checkpoint path holds: mmtrain's CLIP, or transformers'
CLIP and SigLIP vision models (tiny, saved here with save_pretrained), with their features from the
requested layer, their image size and their normalisation."""

import pytest
import torch

from mmtrain.training.models.vision_encoder import load_vision_encoder, tower_info


def save_hf_tower(directory, kind: str, image_size: int = 16, full: bool = False):
    """A tiny random CLIP or SigLIP vision tower (or the whole dual model), as a user would download it."""
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPVisionConfig,
        CLIPVisionModel,
        SiglipConfig,
        SiglipImageProcessor,
        SiglipModel,
        SiglipVisionConfig,
        SiglipVisionModel,
    )

    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=8,
    )
    torch.manual_seed(0)
    if kind == "clip":
        model = (
            CLIPModel(
                CLIPConfig(
                    vision_config=vision,
                    text_config=dict(
                        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=60
                    ),
                    projection_dim=16,
                )
            )
            if full
            else CLIPVisionModel(CLIPVisionConfig(**vision))
        )
        processor = CLIPImageProcessor(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
        )
    else:
        model = (
            SiglipModel(
                SiglipConfig(
                    vision_config=vision,
                    text_config=dict(
                        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=60
                    ),
                )
            )
            if full
            else SiglipVisionModel(SiglipVisionConfig(**vision))
        )
        processor = SiglipImageProcessor(size={"height": image_size, "width": image_size})
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


@pytest.mark.parametrize("kind, full", [("clip", False), ("clip", True), ("siglip", False), ("siglip", True)])
def test_hf_towers_give_the_requested_layers_patch_features(tmp_path, kind, full):
    from transformers import CLIPVisionModel, SiglipVisionModel

    directory = save_hf_tower(tmp_path, kind, full=full)
    info = tower_info(directory)
    assert info.kind == f"hf_{kind}" and info.num_patches == 4 and info.width == 32 and info.layers == 3
    assert info.center_crop == (kind == "clip")  # SigLIP resizes the whole image
    assert info.image_mean == ((0.48145466, 0.4578275, 0.40821073) if kind == "clip" else (0.5, 0.5, 0.5))
    encoder = load_vision_encoder(info, feature_layer=-2).eval()
    reference = (CLIPVisionModel if kind == "clip" else SiglipVisionModel).from_pretrained(directory).eval()
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        hidden = reference(pixel_values=images, output_hidden_states=True).hidden_states[-2]
        features = encoder(images)
    expected = hidden[:, 1:] if kind == "clip" else hidden  # CLIP's class token dropped; SigLIP has none
    assert features.shape == (2, 4, 32) and torch.allclose(features, expected, atol=1e-6)


def test_an_unsupported_model_directory_is_named(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(
        LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=50)
    ).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="holds a 'llama' model; give a CLIP or SigLIP directory"):
        tower_info(tmp_path)


def test_a_feature_layer_outside_the_tower_is_refused(tmp_path):
    info = tower_info(save_hf_tower(tmp_path, "clip"))
    with pytest.raises(ValueError, match="feature_layer=-5 is outside the tower's 3 blocks"):
        load_vision_encoder(info, feature_layer=-5)


def test_an_image_size_the_tower_does_not_take_is_an_error_naming_the_key(tmp_path):
    from mmtrain.training.config.io import from_dict
    from mmtrain.training.config.schema import VlmRunConfig
    from mmtrain.training.models.language_model import make_tiny_lm
    from mmtrain.training.tasks.resolve import resolve_vlm

    tower = save_hf_tower(tmp_path / "tower", "siglip")
    lm = make_tiny_lm(tmp_path / "lm", ["a red square"] * 20, vocab_size=280, hidden_size=16, layers=1, heads=2)
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "train-00000.tar").write_bytes(bytes(1024))
    config = {
        "model": {"vision": {"checkpoint": str(tower)}, "lm": {"path": str(lm)}},
        "data": {"train_shards": [str(shards)], "augment": {"image_size": 224}},
    }
    with pytest.raises(ValueError, match="data.augment.image_size=224, but the vision tower .* takes 16x16"):
        resolve_vlm(from_dict(VlmRunConfig, config))
    del config["data"]["augment"]  # the tower decides: its size, and SigLIP's whole-image resize
    cfg, _ = resolve_vlm(from_dict(VlmRunConfig, config))
    assert cfg.data.augment.image_size == 16 and not cfg.data.augment.eval_center_crop
