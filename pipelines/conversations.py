"""LLaVA conversations -> token ids and labels, with loss only on assistant tokens.

Labels are derived from character offsets: the LM's chat template places every message
(pipelines/chat_rendering.py), and a token is supervised exactly when its character span overlaps
an assistant reply or the end-of-turn token the template puts after it. LLaVA's length
arithmetic instead assumed per-turn token counts add up, and silently masked whole samples when
they did not ("tokenization mismatch").
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from mmtrain.pipelines import bad_samples
from mmtrain.pipelines.chat_rendering import IMAGE_PLACEHOLDER, ChatRenderer, overlaps, sentinel

IGNORE_INDEX = -100
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
# ChatML, used when an LM's tokenizer brings no chat template of its own.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CAPTION_PROMPT = IMAGE_PLACEHOLDER


class PlaceholderMismatch(ValueError):
    """A sample's <image> placeholders do not match its images."""


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


@dataclass(frozen=True)
class FirstExchange:
    """A conversation's first question and the answer to it: what evaluation asks and scores."""

    prompt: list[dict]  # the chat messages up to the first assistant reply (system included)
    question: str  # the first user message
    answer: str  # the first assistant reply after it


def first_exchange(conversation: list[dict]) -> FirstExchange | None:
    """The first user message and the assistant reply after it, from turns in either key style
    (from/value or role/content), a system turn anywhere before; None when there is no such pair."""
    try:
        messages = to_messages(conversation)
    except (ValueError, AttributeError):
        return None
    question = next((i for i, m in enumerate(messages) if m["role"] == "user"), None)
    if question is None:
        return None
    answer = next((i for i in range(question + 1, len(messages)) if messages[i]["role"] == "assistant"), None)
    if answer is None:
        return None
    return FirstExchange(messages[:answer], messages[question]["content"], messages[answer]["content"])


def caption_conversation(caption: str) -> list[dict]:
    """Stage 1 (alignment): the image is the prompt, the caption the only supervised reply."""
    return [{"from": "human", "value": CAPTION_PROMPT}, {"from": "gpt", "value": caption}]


def parse_conversation(text: str) -> list[dict]:
    return json.loads(text) if text else []


class ConversationEncoder:
    """Encode conversations for one HF tokenizer: image placeholder expanded to
    `num_image_tokens` copies of the image token, labels -100 everywhere but assistant replies
    and the end-of-turn token after each (the model learns to stop)."""

    def __init__(self, tokenizer, num_image_tokens: int, max_length: int):
        if tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER) in (None, tokenizer.unk_token_id):
            raise ValueError(
                f"the LM tokenizer has no {IMAGE_PLACEHOLDER} token: `mmtrain models prepare-lm LM_DIR --out OUT` "
                "adds it to a Hugging Face LM (tiny-lm and import-gguf make LMs that have it)"
            )
        if tokenizer.chat_template is None:
            tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
        self.tokenizer = tokenizer
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
        self.num_image_tokens = num_image_tokens
        self.max_length = max_length
        self.end_of_turn_id = end_of_turn_token(tokenizer)
        self.end_of_turn = tokenizer.decode([self.end_of_turn_id]) if self.end_of_turn_id is not None else ""
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.renderer = ChatRenderer(tokenizer, self.end_of_turn)

    def encode(self, conversation: list[dict], key: str = "", images: int = 1) -> EncodedConversation | str:
        """The encoding, or the bad-sample reason when truncation cuts into an image's block
        (IMAGE_TRUNCATED) or leaves no supervised token (NO_SUPERVISED_TOKENS). Each of the
        sample's `images` has one <image> placeholder (0 for a text-only conversation)."""
        messages = to_messages(conversation)
        placeholders = sum(m["content"].count(IMAGE_PLACEHOLDER) for m in messages)
        if placeholders != images:
            raise PlaceholderMismatch(
                f"sample {key!r} has {placeholders} {IMAGE_PLACEHOLDER} placeholders for {images} images; "
                f"put one {IMAGE_PLACEHOLDER} per image where the image belongs"
            )
        rendered = self.renderer.render(messages)
        token_ids, offsets = self.renderer.tokenize(rendered)
        replies = np.array(
            [
                (start, rendered.end_of_turn_ends[start])
                for start, _, role in rendered.message_spans
                if role == "assistant"
            ],
            np.int64,
        ).reshape(-1, 2)
        supervised = overlaps(offsets, replies)
        is_image = token_ids == self.image_token_id
        labels_T = np.where(supervised & ~is_image, token_ids, IGNORE_INDEX)
        repeats = np.where(is_image, self.num_image_tokens, 1)  # the placeholder becomes the image's tokens
        input_ids = np.repeat(token_ids, repeats).tolist()[: self.max_length]
        labels = np.repeat(labels_T, repeats).tolist()[: self.max_length]
        if input_ids.count(self.image_token_id) != self.num_image_tokens * images:
            return bad_samples.IMAGE_TRUNCATED  # the model needs every position of every image
        if all(label == IGNORE_INDEX for label in labels):
            return bad_samples.NO_SUPERVISED_TOKENS
        return EncodedConversation(input_ids, labels)

    def encode_prompt(self, conversation: list[dict]) -> list[int]:
        """Token ids of everything up to the first assistant reply (all of it when there is none),
        ready for generation."""
        messages = to_messages(conversation)
        first_reply = next((i for i, m in enumerate(messages) if m["role"] == "assistant"), len(messages))
        rendered = self.renderer.render(messages[:first_reply], add_generation_prompt=True)
        token_ids, _ = self.renderer.tokenize(rendered)
        repeats = np.where(token_ids == self.image_token_id, self.num_image_tokens, 1)
        return np.repeat(token_ids, repeats).tolist()

    @property
    def stop_ids(self) -> set[int]:
        """Tokens that end a generated reply: the template's end-of-turn and the tokenizer's EOS."""
        return {i for i in (self.end_of_turn_id, self.tokenizer.eos_token_id) if i is not None}

    def pad(self, encoded: EncodedConversation) -> tuple[list[int], list[int], list[int]]:
        """(input_ids, attention_mask, labels), right-padded to max_length."""
        missing = self.max_length - len(encoded.input_ids)
        return (
            encoded.input_ids + [self.pad_id] * missing,
            [1] * len(encoded.input_ids) + [0] * missing,
            encoded.labels + [IGNORE_INDEX] * missing,
        )


def end_of_turn_token(tokenizer) -> int | None:
    """The token the chat template closes an assistant turn with (ChatML's <|im_end|>, Llama 3's
    <|eot_id|>, Gemma's <end_of_turn>), read from the template's own rendering; None when the
    template closes a turn with nothing, or with plain text rather than a special token."""
    reply = sentinel(1)
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": sentinel(0)}, {"role": "assistant", "content": reply}], tokenize=False
    )
    after_reply = rendered[rendered.index(reply) + len(reply) :].lstrip()
    ids = tokenizer(after_reply, add_special_tokens=False)["input_ids"] if after_reply else []
    if ids and ids[0] in tokenizer.all_special_ids:
        return ids[0]
    return tokenizer.eos_token_id


def supervised_token_count(labels_BL) -> int:
    """How many next-token targets the rows supervise (host arrays only)."""
    return int((np.asarray(labels_BL)[:, 1:] != IGNORE_INDEX).sum())


def supervised_positions(labels_BL) -> np.ndarray:
    """Positions whose next token is supervised in at least one row: [K] int64 (host arrays only)."""
    return np.flatnonzero((np.asarray(labels_BL)[:, 1:] != IGNORE_INDEX).any(axis=0)).astype(np.int64)
