"""LLaVA conversations -> token ids and labels, with loss only on assistant tokens.

Labels are derived from character offsets: the chat template renders the whole conversation,
each assistant reply is located in the rendered text, and a token is supervised exactly when
its character span overlaps a reply (plus the end-of-turn token that follows it). LLaVA's
length arithmetic instead assumed per-turn token counts add up, and silently masked whole
samples when they did not ("tokenization mismatch").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional

IMAGE_PLACEHOLDER = "<image>"
IGNORE_INDEX = -100
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
# ChatML, used when an LM's tokenizer brings no chat template of its own.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CAPTION_PROMPT = IMAGE_PLACEHOLDER


class PlaceholderMismatch(ValueError):
    """A sample's <image> placeholders do not match its one image."""


@dataclass
class EncodedConversation:
    input_ids: list[int]
    labels: list[int]


def to_messages(conversation: list[dict]) -> list[dict]:
    """LLaVA turns ({"from": "human", "value": ...}) -> chat messages ({"role": "user", ...})."""
    messages = []
    for turn in conversation:
        role = ROLES.get(turn.get("from", turn.get("role", "")))
        if role is None:
            raise ValueError(f"unknown speaker {turn!r}: use 'human', 'gpt' or 'system'")
        messages.append({"role": role, "content": turn.get("value", turn.get("content", ""))})
    return messages


def caption_conversation(caption: str) -> list[dict]:
    """Stage 1 (alignment): the image is the prompt, the caption the only supervised reply."""
    return [{"from": "human", "value": CAPTION_PROMPT}, {"from": "gpt", "value": caption}]


def parse_conversation(text: str) -> list[dict]:
    return json.loads(text) if text else []


class ConversationEncoder:
    """Encode conversations for one HF tokenizer: image placeholder expanded to
    `num_image_tokens` copies of the image token, labels -100 everywhere but assistant replies."""

    def __init__(self, tokenizer, num_image_tokens: int, max_length: int):
        if tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER) in (None, tokenizer.unk_token_id):
            raise ValueError(f"the LM tokenizer has no {IMAGE_PLACEHOLDER} token; make the LM directory "
                             "with `mmtrain models tiny-lm` or `mmtrain models import-gguf`, which add it")
        if tokenizer.chat_template is None:
            tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
        self.tokenizer = tokenizer
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
        self.num_image_tokens = num_image_tokens
        self.max_length = max_length
        self.end_of_turn = tokenizer.eos_token or ""
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def encode(self, conversation: list[dict], key: str = "") -> Optional[EncodedConversation]:
        """The encoding, or None when truncation left no supervised token."""
        messages = to_messages(conversation)
        placeholders = sum(m["content"].count(IMAGE_PLACEHOLDER) for m in messages)
        if placeholders != 1:
            raise PlaceholderMismatch(
                f"sample {key!r} has {placeholders} {IMAGE_PLACEHOLDER} placeholders for 1 image; "
                f"put exactly one {IMAGE_PLACEHOLDER} in its first human turn")
        text = self.tokenizer.apply_chat_template(messages, tokenize=False)
        spans = self._assistant_spans(text, messages)
        encoding = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        input_ids, labels = [], []
        for token_id, (start, end) in zip(encoding["input_ids"], encoding["offset_mapping"]):
            if token_id == self.image_token_id:
                input_ids += [self.image_token_id] * self.num_image_tokens
                labels += [IGNORE_INDEX] * self.num_image_tokens
                continue
            supervised = any(start < span_end and end > span_start for span_start, span_end in spans)
            input_ids.append(token_id)
            labels.append(token_id if supervised else IGNORE_INDEX)
        input_ids, labels = input_ids[: self.max_length], labels[: self.max_length]
        if all(label == IGNORE_INDEX for label in labels):
            return None
        return EncodedConversation(input_ids, labels)

    def encode_prompt(self, conversation: list[dict]) -> list[int]:
        """Token ids of everything up to the first assistant reply, ready for generation."""
        messages = to_messages(conversation)
        first_reply = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
        text = self.tokenizer.apply_chat_template(messages[:first_reply], tokenize=False,
                                                  add_generation_prompt=True)
        ids = []
        for token_id in self.tokenizer(text, add_special_tokens=False)["input_ids"]:
            ids += [token_id] * (self.num_image_tokens if token_id == self.image_token_id else 1)
        return ids

    def _assistant_spans(self, text: str, messages: list[dict]) -> list[tuple[int, int]]:
        spans, cursor = [], 0
        for message in messages:
            start = text.find(message["content"], cursor)
            if start < 0:
                raise ValueError("the chat template rewrote a message; cannot locate it for masking")
            end = start + len(message["content"])
            if message["role"] == "assistant":
                if self.end_of_turn and text.startswith(self.end_of_turn, end):
                    end += len(self.end_of_turn)  # learn to stop: the end-of-turn token is supervised
                spans.append((start, end))
            cursor = end
        return spans

    def pad(self, encoded: EncodedConversation) -> tuple[list[int], list[int], list[int]]:
        """(input_ids, attention_mask, labels), right-padded to max_length."""
        missing = self.max_length - len(encoded.input_ids)
        return (encoded.input_ids + [self.pad_id] * missing,
                [1] * len(encoded.input_ids) + [0] * missing,
                encoded.labels + [IGNORE_INDEX] * missing)
