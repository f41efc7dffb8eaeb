"""Pretrained CLIP in, standard CLIP out: transformers' own CLIPModel (tiny, saved here with
save_pretrained) and mmtrain's CLIP give the same embeddings, both ways."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmtrain.pipelines import contract
from mmtrain.pipelines.stages import Tokenize
from mmtrain.pipelines.tokenizer import train_bpe_tokenizer
from mmtrain.training.checkpoint.store import save_checkpoint
from mmtrain.training.config.io import from_dict, to_dict
from mmtrain.training.config.schema import ClipRunConfig
from mmtrain.training.engine.loop import TrainState
from mmtrain.training.models import hf_clip
from mmtrain.training.tasks.clip import ClipTask

CAPTIONS = ["a red square on the left", "two blue circles", "a small green triangle", "three red circles"]
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def save_hf_clip(directory: Path) -> Path:
    """A tiny random CLIPModel, tokenizer and image processor, as a user's downloaded directory holds them."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, PreTrainedTokenizerFast

    raw = train_bpe_tokenizer(CAPTIONS * 20, vocab_size=300)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="[EOT]", pad_token="[PAD]", bos_token="[BOS]")
    tokenizer.save_pretrained(directory)
    torch.manual_seed(0)
    config = CLIPConfig(
        projection_dim=16,
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=12,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            hidden_act="quick_gelu",
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=16,
            patch_size=8,
            hidden_act="quick_gelu",
        ),
    )
    CLIPModel(config).save_pretrained(directory)
    CLIPImageProcessor(
        image_mean=list(MEAN), image_std=list(STD), size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}
    ).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return save_hf_clip(tmp_path_factory.mktemp("hf-clip"))


def _inputs(cfg: ClipRunConfig):
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (4, 16, 16, 3), dtype=np.uint8))
    batch = Tokenize(cfg.data.tokenizer, cfg.data.context_length)({"caption": np.array(CAPTIONS)})
    return (
        images,
        torch.as_tensor(batch[contract.INPUT_IDS]).long(),
        torch.as_tensor(batch[contract.ATTENTION_MASK]).long(),
    )


def _hf_features(hf_model, pixels, ids, mask):
    with torch.no_grad():
        image = hf_model.get_image_features(pixel_values=pixels)
        text = hf_model.get_text_features(input_ids=ids, attention_mask=mask)
    image = getattr(image, "pooler_output", image)
    text = getattr(text, "pooler_output", text)
    return F.normalize(image, dim=-1), F.normalize(text, dim=-1)


def test_a_run_from_a_pretrained_clipmodel_starts_with_exactly_its_weights(hf_dir):
    from transformers import CLIPModel

    cfg = hf_clip.pretrained_run_config(from_dict(ClipRunConfig, {"init_from": str(hf_dir)}))
    assert cfg.model.vision.activation == "quick_gelu" and cfg.data.context_length == 12
    assert cfg.model.vision.image_mean == MEAN and cfg.data.augment.image_size == 16
    task = ClipTask(cfg)
    ours = task.build_model().eval()
    theirs = CLIPModel.from_pretrained(hf_dir).eval()
    images, ids, mask = _inputs(cfg)
    pixels = task.normalize(images, torch.device("cpu"))  # the same normalisation the processor declares
    with torch.no_grad():
        image_ours, text_ours = ours.encode_image(pixels), ours.encode_text(ids, mask)
    image_theirs, text_theirs = _hf_features(theirs, pixels, ids, mask)
    assert torch.allclose(image_ours, image_theirs, atol=1e-5) and torch.allclose(text_ours, text_theirs, atol=1e-5)
    # zero-shot logits before step 1: transformers' own forward
    with torch.no_grad():
        logits = theirs(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits_per_image
    assert torch.allclose(ours.logit_scale.exp() * image_ours @ text_ours.T, logits, atol=1e-4)


def test_a_checkpoint_whose_shapes_do_not_fit_names_them(hf_dir):
    cfg = hf_clip.pretrained_run_config(from_dict(ClipRunConfig, {"init_from": str(hf_dir)}))
    wider = dataclasses.replace(
        cfg, model=dataclasses.replace(cfg.model, vision=dataclasses.replace(cfg.model.vision, width=48, heads=2))
    )
    with pytest.raises(ValueError, match=r"visual.class_embedding: checkpoint \(32,\), model \(48,\)"):
        ClipTask(wider).build_model()


def test_a_siglip_directory_is_refused_for_the_clip_trainer(tmp_path):
    from transformers import SiglipConfig, SiglipModel

    SiglipModel(
        SiglipConfig(
            text_config=dict(
                hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=50
            ),
            vision_config=dict(
                hidden_size=16,
                intermediate_size=32,
                num_hidden_layers=1,
                num_attention_heads=2,
                image_size=16,
                patch_size=8,
            ),
        )
    ).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="holds a SiglipConfig, not a CLIPModel"):
        hf_clip.pretrained_run_config(from_dict(ClipRunConfig, {"init_from": str(tmp_path)}))


def test_export_hf_round_trip_equals_mmtrain(hf_dir, tmp_path):
    """A trained (here: perturbed) mmtrain CLIP exported; transformers' CLIPModel, tokenizer and image
    processor load it, give the same embeddings (<= 1e-4) and the same zero-shot predictions."""
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    from mmtrain.jobs.cli import main

    cfg = hf_clip.pretrained_run_config(from_dict(ClipRunConfig, {"init_from": str(hf_dir)}))
    task = ClipTask(cfg)
    model = task.build_model()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.01 * torch.randn_like(param))  # not the pretrained weights any more
    save_checkpoint(tmp_path / "run" / "checkpoint_1", model, None, TrainState(step=1), to_dict(cfg))
    out = tmp_path / "exported"
    assert main(["models", "export", "--checkpoint", str(tmp_path / "run"), "--out", str(out), "--format", "hf"]) == 0
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin")) and not list(out.glob("*.pt"))

    theirs = CLIPModel.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    processor = AutoImageProcessor.from_pretrained(out)
    assert tuple(processor.image_mean) == MEAN and tuple(processor.image_std) == STD
    images, ids, mask = _inputs(cfg)
    encoded = tokenizer(CAPTIONS, padding="max_length", max_length=cfg.data.context_length, return_tensors="pt")
    assert torch.equal(encoded["input_ids"], ids) and torch.equal(encoded["attention_mask"], mask)
    pixels = task.normalize(images, torch.device("cpu"))
    with torch.no_grad():
        image_ours, text_ours = model.encode_image(pixels), model.encode_text(ids, mask)
    image_theirs, text_theirs = _hf_features(theirs, pixels, encoded["input_ids"], encoded["attention_mask"])
    assert (image_ours - image_theirs).abs().max() <= 1e-4 and (text_ours - text_theirs).abs().max() <= 1e-4
    assert torch.equal((image_ours @ text_ours.T).argmax(1), (image_theirs @ text_theirs.T).argmax(1))
    assert json.loads((out / "config.json").read_text())["text_config"]["eos_token_id"] == tokenizer.eos_token_id


def test_a_vlm_checkpoint_is_not_exported_as_clip(tmp_path, capsys):
    from mmtrain.jobs.cli import main
    from mmtrain.training.checkpoint.store import save_checkpoint
    from mmtrain.training.engine.loop import TrainState

    save_checkpoint(tmp_path / "vlm", torch.nn.Linear(2, 2), None, TrainState(), {"stage": "captions"})
    export = ["models", "export", "--checkpoint", str(tmp_path / "vlm"), "--out", str(tmp_path / "out")]
    assert main(export + ["--format", "hf"]) == 2
    assert "is a VLM checkpoint; --format hf exports CLIP runs (use --format llava)" in capsys.readouterr().err
