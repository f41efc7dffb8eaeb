"""VLM assembly, freezing, per-module learning rates and stage-1 -> stage-2 hand-over, without Ray."""

import numpy as np
import pytest
import torch

from mmtrain.pipelines import contract
from mmtrain.pipelines.config import AugmentConfig, DataConfig
from mmtrain.pipelines.conversations import ConversationEncoder
from mmtrain.training.checkpoint.store import save_checkpoint
from mmtrain.training.config.io import to_dict
from mmtrain.training.config.schema import (
    ClipModelConfig,
    ClipRunConfig,
    LanguageModelConfig,
    ModuleLearningRates,
    OptimConfig,
    TextConfig,
    VisionConfig,
    VisionEncoderConfig,
    VlmModelConfig,
    VlmRunConfig,
)
from mmtrain.training.engine.loop import TrainState, train
from mmtrain.training.engine.optim import build_optimizer, warmup_cosine
from mmtrain.training.models.clip import ClipModel
from mmtrain.training.models.language_model import make_tiny_lm
from mmtrain.training.models.vlm import build_projector
from mmtrain.training.tasks.vlm import VlmTask

TEXTS = ["what colour are the shapes?", "red", "blue", "a photo of a red circle."] * 20


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    return make_parts(tmp_path_factory.mktemp("vlm"))


def make_parts(root):
    """A tiny mmtrain CLIP tower (root/clip) and a tiny LM directory: (root, lm path)."""
    clip_cfg = ClipRunConfig(
        data=DataConfig(context_length=8, augment=AugmentConfig(image_size=16)),
        model=ClipModelConfig(
            embed_dim=16,
            vision=VisionConfig(image_size=16, patch_size=8, width=32, layers=2, heads=2),
            text=TextConfig(vocab_size=40, width=16, layers=1, heads=2),
        ),
    )
    clip = ClipModel(clip_cfg.model, 8, clip_cfg.loss)
    save_checkpoint(root / "clip", clip, None, TrainState(), to_dict(clip_cfg))
    lm = make_tiny_lm(root / "lm", TEXTS, vocab_size=300, hidden_size=32, layers=1, heads=2)
    return root, lm


def _cfg(root, lm, **kw):
    return VlmRunConfig(
        model=VlmModelConfig(
            vision=VisionEncoderConfig(checkpoint=str(root / "clip")), lm=LanguageModelConfig(path=str(lm))
        ),
        optim=OptimConfig(warmup_steps=1),
        max_length=32,
        **kw,
    )


def _batches(task, encoder):
    def epoch():
        generator = torch.Generator().manual_seed(0)
        for _ in range(3):
            rows = [
                encoder.pad(
                    encoder.encode(
                        [
                            {"from": "human", "value": "<image>\nwhat colour are the shapes?"},
                            {"from": "gpt", "value": "red"},
                        ]
                    )
                )
                for _ in range(4)
            ]
            yield {
                contract.IMAGE: torch.randint(0, 255, (4, 1, 16, 16, 3), dtype=torch.uint8, generator=generator),
                contract.NUM_IMAGES: torch.ones(4, dtype=torch.int32),
                contract.INPUT_IDS: torch.tensor([r[0] for r in rows]),
                contract.ATTENTION_MASK: torch.tensor([r[1] for r in rows]),
                contract.LABELS: torch.tensor([r[2] for r in rows]),
            }

    return epoch()


def _train(cfg, steps=3):
    task = VlmTask(cfg)
    model = task.build_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = build_optimizer(task.param_groups(model), cfg.optim)
    encoder = ConversationEncoder(task._tokenizer, num_image_tokens=4, max_length=32)
    train(
        task,
        model,
        optimizer,
        warmup_cosine(optimizer, cfg.optim, steps),
        TrainState(),
        _batches(task, encoder),
        steps,
        torch.device("cpu"),
        lambda s, r: True,
    )
    return task, model, optimizer, before


def _changed(model, before, prefix):
    return any(not torch.equal(v, before[k]) for k, v in model.state_dict().items() if k.startswith(prefix))


def test_stage1_trains_only_the_projector(parts):
    root, lm = parts
    task, model, optimizer, before = _train(_cfg(root, lm, lrs=ModuleLearningRates(vision=0, projector=1e-2, lm=0)))
    assert _changed(model, before, "projector.")
    assert not _changed(model, before, "vision.") and not _changed(model, before, "lm.")
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in model.projector.parameters()}
    assert all(p.grad is None for p in model.lm.parameters())


def test_stage2_starts_from_stage1_projector_and_trains_the_lm(parts, tmp_path):
    root, lm = parts
    _, stage1, _, _ = _train(_cfg(root, lm))
    save_checkpoint(tmp_path / "stage1", stage1, None, TrainState(step=3), {})
    cfg2 = _cfg(
        root,
        lm,
        stage="conversations",
        init_from=str(tmp_path / "stage1"),
        lrs=ModuleLearningRates(vision=0, projector=1e-3, lm=1e-3),
    )
    task = VlmTask(cfg2)
    fresh = task.build_model()
    for key, value in stage1.projector.state_dict().items():
        assert torch.equal(fresh.projector.state_dict()[key], value)
    _, model, _, before = _train(cfg2)
    assert _changed(model, before, "lm.") and not _changed(model, before, "vision.")


def test_generation_uses_the_image(parts):
    root, lm = parts
    task = VlmTask(_cfg(root, lm))
    model = task.build_model().eval()
    encoder = ConversationEncoder(task._tokenizer, num_image_tokens=4, max_length=32)
    prompt = encoder.encode_prompt(
        [{"from": "human", "value": "<image>\nwhat colour are the shapes?"}, {"from": "gpt", "value": "red"}]
    )
    out = model.generate(torch.randn(1, 3, 16, 16), [prompt], max_new_tokens=4, stop_ids=set(), pad_id=encoder.pad_id)
    assert len(out) == 1 and len(out[0]) == 4


def test_batched_generation_equals_one_at_a_time(parts):
    """Prompts of different lengths, left-padded in one batch, give each row the tokens it gets alone."""
    root, lm = parts
    task = VlmTask(_cfg(root, lm))
    model = task.build_model().eval()
    with torch.no_grad():  # an untrained LM answers everything alike: larger random weights tell rows apart
        for param in list(model.projector.parameters()) + list(model.lm.parameters()):
            param.normal_(0, 0.5, generator=torch.Generator().manual_seed(param.numel()))
    encoder = ConversationEncoder(task._tokenizer, num_image_tokens=4, max_length=64)
    questions = [
        "what colour?",
        "how many shapes are there in the picture, counting all?",
        "size?",
        "are the shapes on the left or the right side of the image?",
    ]
    prompts = [
        encoder.encode_prompt([{"from": "human", "value": f"<image>\n{q}"}, {"from": "gpt", "value": "x"}])
        for q in questions
    ]
    assert len({len(p) for p in prompts}) == len(prompts)
    images = torch.randn(len(prompts), 3, 16, 16, generator=torch.Generator().manual_seed(0))
    stop = set(encoder.stop_ids)
    batched = model.generate(images, prompts, 6, stop, encoder.pad_id)
    alone = [model.generate(images[i : i + 1], [p], 6, stop, encoder.pad_id)[0] for i, p in enumerate(prompts)]
    assert batched == alone
    assert len({tuple(answer) for answer in alone}) > 1, alone  # the rows differ, so the check means something


def test_projector_shapes():
    assert isinstance(build_projector("linear", 8, 16), torch.nn.Linear)
    mlp = build_projector("mlp3x_gelu", 8, 16, hidden_width=12)
    assert [m.out_features for m in mlp if isinstance(m, torch.nn.Linear)] == [12, 12, 16]
    with pytest.raises(ValueError, match="mlp\\{N\\}x_gelu"):
        build_projector("mlp_relu", 8, 16)


def test_frozen_modules_stay_in_eval_mode(parts):
    root, lm = parts
    task = VlmTask(_cfg(root, lm, lrs=ModuleLearningRates(vision=0, projector=1e-3, lm=0)))
    model = task.build_model()
    model.eval()
    task.train_mode(model)
    assert model.projector.training
    assert not model.vision.training and not model.lm.training


def test_random_lm_can_take_a_real_models_shape(tmp_path):
    """make_tiny_lm's shape arguments (as SMOLLM2_135M_SHAPE uses them): grouped-query attention,
    a wider MLP and an embedding larger than the tokenizer's vocabulary."""
    from mmtrain.training.models.language_model import SMOLLM2_135M_SHAPE, load_lm

    assert SMOLLM2_135M_SHAPE["layers"] == 30 and SMOLLM2_135M_SHAPE["hidden_size"] == 576
    path = make_tiny_lm(
        tmp_path / "lm",
        TEXTS,
        vocab_size=300,
        hidden_size=32,
        layers=1,
        heads=4,
        kv_heads=2,
        intermediate_size=80,
        model_vocab_size=1000,
    )
    model, tokenizer = load_lm(str(path))
    config = model.config
    assert (config.num_key_value_heads, config.intermediate_size, config.vocab_size) == (2, 80, 1000)
    assert len(tokenizer) < 1000
    ids = torch.tensor([tokenizer.encode("a red square")])
    assert model(input_ids=ids).logits.shape == (1, ids.shape[1], 1000)


def test_loss_with_logits_only_where_supervised_equals_the_lms_full_loss(parts):
    """The LM head runs only at positions whose next token has a label; the loss and every gradient
    must still be those of the LM's own loss over full logits. Rows supervise different spans, one
    row is padded, and one position is supervised in one row only."""
    from mmtrain.pipelines.collate import VlmCollate

    root, lm = parts
    task = VlmTask(_cfg(root, lm, stage="conversations", lrs=ModuleLearningRates(vision=0, projector=1e-3, lm=1e-3)))
    model = task.build_model()
    encoder = ConversationEncoder(task._tokenizer, num_image_tokens=4, max_length=32)
    rows = [
        encoder.pad(
            encoder.encode([{"from": "human", "value": "<image>\n" + question}, {"from": "gpt", "value": answer}])
        )
        for question, answer in [
            ("what colour are the shapes?", "red"),
            ("what colour?", "a red circle."),
            ("what colour are the shapes? red", "blue"),
        ]
    ]
    ids, mask, labels = (torch.tensor([row[i] for row in rows]) for i in range(3))
    labels[2, 20] = ids[2, 20]  # a lone supervised token in one row: its position must still get logits
    images = torch.randn(3, 3, 16, 16)

    collated = VlmCollate()(
        {
            contract.LABELS: labels.numpy(),
            contract.ATTENTION_MASK: mask.numpy(),
            contract.IMAGE: np.zeros((3, 1, 16, 16, 3)),
            contract.NUM_IMAGES: np.ones(3),
        }
    )
    positions = collated[contract.PREDICTING]
    supervised_anywhere = (labels[:, 1:] != -100).any(0)
    assert positions.tolist() == supervised_anywhere.nonzero().flatten().tolist()
    assert 0 < len(positions) < ids.shape[1] - 1  # the image and prompt positions get no logits

    def loss_and_grads(loss_fn):
        model.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    # no attention mask: with right padding, causal attention never reaches a pad from a real token
    ours, our_grads = loss_and_grads(lambda: model(images, ids, labels, positions))
    full, full_grads = loss_and_grads(
        lambda: model.lm(inputs_embeds=model.embed(images, ids), attention_mask=mask, labels=labels).loss
    )
    assert torch.allclose(ours, full, atol=1e-6)
    assert our_grads.keys() == full_grads.keys() and any(name.startswith("projector.") for name in our_grads)
    for name, grad in our_grads.items():
        assert torch.allclose(grad, full_grads[name], atol=1e-6), name
    assert torch.allclose(model(images, ids, labels), ours, atol=1e-6)  # positions found when not given


def test_weight_decay_spares_the_lms_token_embeddings(parts):
    # Before: decay was chosen by name substrings ("embedding"), which missed the HF LM's embed_tokens.
    from tests.unit.test_clip_model_and_loss import decayed_names

    root, lm = parts
    task = VlmTask(_cfg(root, lm, stage="conversations", lrs=ModuleLearningRates(vision=1e-4, projector=1e-3, lm=1e-3)))
    model = task.build_model()
    decayed = decayed_names(model, task.param_groups(model))
    assert "lm.model.embed_tokens.weight" not in decayed
    assert "lm.model.layers.0.self_attn.q_proj.weight" in decayed and "projector.0.weight" in decayed
    assert (
        "vision.tower.positional_embedding" not in decayed
        and "vision.tower.transformer.blocks.0.attn.qkv.weight" in decayed
    )
    assert not any(name.endswith(("bias", "norm.weight")) for name in decayed)


def test_the_sample_grid_shows_the_question_with_the_answer(parts):
    root, lm = parts
    task = VlmTask(_cfg(root, lm, stage="conversations"))
    task.build_model()
    encoder = ConversationEncoder(task.tokenizer, num_image_tokens=4, max_length=32)
    batch = next(_batches(task, encoder))
    assert task.captions(batch)[0] == "Q: what colour are the shapes? A: red"


def test_prepare_lm_gives_a_hugging_face_lm_the_image_token(tmp_path):
    """A causal LM as the hub ships it (no <image>, no pad token) -> `mmtrain models prepare-lm` -> an
    LM the VLM trains with: the token added with its embedding row, outputs on old tokens unchanged."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from mmtrain.jobs.cli import main
    from mmtrain.pipelines.tokenizer import train_bpe_tokenizer

    raw = train_bpe_tokenizer(TEXTS, 200, special_tokens=("</s>",), wrap=False, lowercase=False)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="</s>")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, eos_token_id=tokenizer.eos_token_id)  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(tmp_path / "hub")
    tokenizer.save_pretrained(tmp_path / "hub")
    with pytest.raises(ValueError, match="prepare-lm"):
        ConversationEncoder(AutoTokenizer.from_pretrained(tmp_path / "hub"), 4, 32)

    assert main(["models", "prepare-lm", str(tmp_path / "hub"), "--out", str(tmp_path / "lm")]) == 0
    prepared = AutoTokenizer.from_pretrained(tmp_path / "lm")
    encoder = ConversationEncoder(prepared, 4, 256)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "lm")
    assert model.get_input_embeddings().weight.shape[0] == len(prepared) == len(tokenizer) + 1
    assert prepared.pad_token is not None
    encoded = encoder.encode([{"from": "human", "value": "<image>\nwhat colour?"}, {"from": "gpt", "value": "red"}])
    assert encoded.input_ids.count(encoder.image_token_id) == 4
    ids = torch.tensor([tokenizer("a photo of a red circle.")["input_ids"]])
    original = AutoModelForCausalLM.from_pretrained(tmp_path / "hub")
    assert torch.allclose(model(ids).logits[..., : len(tokenizer)], original(ids).logits, atol=1e-5)
