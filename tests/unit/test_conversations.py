"""Masks are -100 exactly where they should be, built from token offsets."""

import json

import pytest
from transformers import AutoTokenizer

from pipelines.conversations import (IGNORE_INDEX, ConversationEncoder, PlaceholderMismatch,
                                     caption_conversation)
from training.models.language_model import make_tiny_lm

TEXTS = ["what colour are the shapes?", "red", "how many shapes are there?", "three",
         "a photo of two small red circles on the left."] * 30


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    path = make_tiny_lm(tmp_path_factory.mktemp("lm"), TEXTS, vocab_size=300, hidden_size=32, layers=1, heads=2)
    return AutoTokenizer.from_pretrained(path)


def _supervised_text(tokenizer, encoded):
    return tokenizer.decode([t for t, l in zip(encoded.input_ids, encoded.labels) if l != IGNORE_INDEX])


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
    conversation = [{"from": "system", "value": "answer briefly"},
                    {"from": "human", "value": "<image>\nwhat colour are the shapes?"}, {"from": "gpt", "value": "red"},
                    {"from": "human", "value": "how many shapes are there?"}, {"from": "gpt", "value": "three"}]
    encoded = encoder.encode(conversation)
    assert _supervised_text(tokenizer, encoded) == "red<|im_end|>three<|im_end|>"
    ids, mask, labels = encoder.pad(encoded)
    assert len(ids) == len(mask) == len(labels) == 200
    assert labels[len(encoded.labels):] == [IGNORE_INDEX] * (200 - len(encoded.labels))


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
    encoder = ConversationEncoder(tokenizer, num_image_tokens=20, max_length=22)
    conversation = [{"from": "human", "value": "<image>\nwhat colour are the shapes?"}, {"from": "gpt", "value": "red"}]
    assert encoder.encode(conversation) is None


def test_no_synthetic_sample_is_fully_masked(tokenizer):
    from pipelines.synth import make_sample

    encoder = ConversationEncoder(tokenizer, num_image_tokens=64, max_length=112)
    for index in range(200):
        meta = json.loads(make_sample(index, 0, 32)["json"])
        encoded = encoder.encode(meta["conversations"])
        assert encoded is not None and sum(l != IGNORE_INDEX for l in encoded.labels) >= 2
