"""Masks are -100 exactly where they should be, built from token offsets."""

import json

import pytest
from transformers import AutoTokenizer

from mmtrain.pipelines import bad_samples
from mmtrain.pipelines.conversations import IGNORE_INDEX, ConversationEncoder, PlaceholderMismatch, caption_conversation
from mmtrain.training.models.language_model import make_tiny_lm

TEXTS = [
    "what colour are the shapes?",
    "red",
    "how many shapes are there?",
    "three",
    "a photo of two small red circles on the left.",
] * 30


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    path = make_tiny_lm(tmp_path_factory.mktemp("lm"), TEXTS, vocab_size=300, hidden_size=32, layers=1, heads=2)
    return AutoTokenizer.from_pretrained(path)


def _supervised_text(tokenizer, encoded):
    return tokenizer.decode([t for t, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE_INDEX])


def test_single_turn(tokenizer):
    encoder = ConversationEncoder(tokenizer, num_image_tokens=5, max_length=200)
    conversation = [{"from": "human", "value": "<image>\nwhat colour are the shapes?"}, {"from": "gpt", "value": "red"}]
    encoded = encoder.encode(conversation)
    assert _supervised_text(tokenizer, encoded) == "red<|im_end|>"
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    image_positions = [i for i, t in enumerate(encoded.input_ids) if t == image_id]
    assert len(image_positions) == 5
    assert all(encoded.labels[i] == IGNORE_INDEX for i in image_positions)


def test_multi_turn_with_system(tokenizer):
    encoder = ConversationEncoder(tokenizer, num_image_tokens=3, max_length=200)
    conversation = [
        {"from": "system", "value": "answer briefly"},
        {"from": "human", "value": "<image>\nwhat colour are the shapes?"},
        {"from": "gpt", "value": "red"},
        {"from": "human", "value": "how many shapes are there?"},
        {"from": "gpt", "value": "three"},
    ]
    encoded = encoder.encode(conversation)
    assert _supervised_text(tokenizer, encoded) == "red<|im_end|>three<|im_end|>"
    ids, mask, labels = encoder.pad(encoded)
    assert len(ids) == len(mask) == len(labels) == 200
    assert labels[len(encoded.labels) :] == [IGNORE_INDEX] * (200 - len(encoded.labels))


def test_caption_stage(tokenizer):
    encoder = ConversationEncoder(tokenizer, num_image_tokens=4, max_length=200)
    encoded = encoder.encode(caption_conversation("a photo of two small red circles on the left."))
    assert _supervised_text(tokenizer, encoded) == "a photo of two small red circles on the left.<|im_end|>"


def test_placeholder_count_mismatch_is_a_clear_error(tokenizer):
    encoder = ConversationEncoder(tokenizer, num_image_tokens=4, max_length=200)
    with pytest.raises(PlaceholderMismatch, match="0 <image> placeholders"):
        encoder.encode([{"from": "human", "value": "what colour?"}, {"from": "gpt", "value": "red"}], key="k1")
    with pytest.raises(PlaceholderMismatch, match="2 <image>"):
        encoder.encode([{"from": "human", "value": "<image><image>"}, {"from": "gpt", "value": "red"}])


def test_truncation_that_removes_every_answer_is_reported(tokenizer):
    encoder = ConversationEncoder(tokenizer, num_image_tokens=20, max_length=26)
    conversation = [{"from": "human", "value": "<image>\nwhat colour are the shapes?"}, {"from": "gpt", "value": "red"}]
    assert encoder.encode(conversation) == bad_samples.NO_SUPERVISED_TOKENS


def test_truncation_into_the_image_block_is_a_counted_reason_not_a_model_crash(tokenizer):
    encoder = ConversationEncoder(tokenizer, num_image_tokens=20, max_length=12)
    conversation = [{"from": "human", "value": "<image>\nwhat colour are the shapes?"}, {"from": "gpt", "value": "red"}]
    assert encoder.encode(conversation) == bad_samples.IMAGE_TRUNCATED


@pytest.mark.parametrize("reply", ["tan", "a", "end", "assistant", "im", "user", "\n", "s"])
def test_a_reply_that_also_occurs_in_the_template_markup_supervises_the_reply(tokenizer, reply):
    # ChatML puts "<|im_end|>\n<|im_start|>assistant\n" between turns: searching the rendered text for
    # the reply from the end of the previous message found it there, in the header.
    encoder = ConversationEncoder(tokenizer, num_image_tokens=2, max_length=200)
    encoded = encoder.encode(
        [{"from": "human", "value": "<image>\nwhat colour are the shapes?"}, {"from": "gpt", "value": reply}]
    )
    assert _supervised_text(tokenizer, encoded) == reply + "<|im_end|>"


def test_multi_turn_replies_that_repeat_earlier_text(tokenizer):
    encoder = ConversationEncoder(tokenizer, num_image_tokens=2, max_length=200)
    conversation = [
        {"from": "human", "value": "<image>\nred or three?"},
        {"from": "gpt", "value": "red"},
        {"from": "human", "value": "red? say red"},
        {"from": "gpt", "value": "red"},
        {"from": "human", "value": "assistant"},
        {"from": "gpt", "value": "user"},
    ]
    encoded = encoder.encode(conversation)
    assert _supervised_text(tokenizer, encoded) == "red<|im_end|>red<|im_end|>user<|im_end|>"
    # each reply is supervised where it stands: right after its own assistant header
    ids = encoded.input_ids
    header = tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    starts = [i + len(header) for i in range(len(ids)) if ids[i : i + len(header)] == header]
    first_supervised = [
        i
        for i in range(len(ids))
        if encoded.labels[i] != IGNORE_INDEX and (i == 0 or encoded.labels[i - 1] == IGNORE_INDEX)
    ]
    assert first_supervised == starts


def test_end_of_turn_comes_from_the_template_not_the_eos_token(tokenizer):
    from copy import deepcopy

    gemma_like = deepcopy(tokenizer)
    gemma_like.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    gemma_like.chat_template = (
        "{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}"
        "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}"
        "<start_of_turn>assistant\n{% endif %}"
    )
    assert gemma_like.eos_token == "<|im_end|>"
    encoder = ConversationEncoder(gemma_like, num_image_tokens=2, max_length=200)
    encoded = encoder.encode(
        [{"from": "human", "value": "<image>\nwhat colour are the shapes?"}, {"from": "gpt", "value": "red"}]
    )
    assert _supervised_text(gemma_like, encoded) == "red<end_of_turn>"
    assert gemma_like.convert_tokens_to_ids("<end_of_turn>") in encoder.stop_ids


def test_no_synthetic_sample_is_fully_masked(tokenizer):
    from mmtrain.pipelines.synth import make_sample

    encoder = ConversationEncoder(tokenizer, num_image_tokens=64, max_length=112)
    for index in range(200):
        meta = json.loads(make_sample(index, 0, 32)["json"])
        encoded = encoder.encode(meta["conversations"])
        assert not isinstance(encoded, str) and sum(label != IGNORE_INDEX for label in encoded.labels) >= 2
