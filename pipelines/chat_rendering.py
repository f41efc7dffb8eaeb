"""A conversation through an LM's own chat template, with the character span of every message.

The template renders the conversation once with a unique sentinel in place of each message, so
each message's place in the rendered text is known exactly, whatever it says, and wherever the
template puts it: Mistral's moves the system message into the last user turn, Llama-2's into the
first, so messages are placed in the order the template shows them. The real messages then replace
the sentinels, transformed as the template transforms them (Llama-2's `.strip()`, Llama-3's and
Gemma's `| trim`, found by rendering a probe), so training sees exactly the text that rendering the
conversation itself gives. A template that refuses a system role (Gemma), or that shows it only in
the last user turn and so drops it from a conversation that ends with a reply (Mistral: training
would never see what the prompt at inference shows), gets the system message folded into the first
user turn, as those models' own documentation does: training and inference then see the same text.

Tokenizing keeps message text as text: a caption that contains `<|im_end|>` is tokenized as those
characters, not as the control token (only `<image>` stays the image token).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IMAGE_PLACEHOLDER = "<image>"


@dataclass(frozen=True)
class Rendered:
    text: str
    message_spans: list[tuple[int, int, str]]  # (start, end, role) of each message's content, in text order
    end_of_turn_ends: dict[int, int]  # message span start -> end of the end-of-turn token after it (assistant)


def sentinel(index: int) -> str:
    # Private-use characters: no real message or chat template contains them.
    return f"\ue000{index}\ue001"


class ChatRenderer:
    def __init__(self, tokenizer, end_of_turn: str):
        self.tokenizer = tokenizer
        self.end_of_turn = end_of_turn
        self.keeps_system = self._keeps_system()
        self.trims = self._trimmed_roles()
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
        self._control_ids = np.array(sorted(set(tokenizer.all_special_ids) - {self.image_token_id}), np.int64)

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> Rendered:
        messages = self._fit(messages)
        marks = [sentinel(index) for index in range(len(messages))]
        skeleton = self.tokenizer.apply_chat_template(
            [{**m, "content": mark} for m, mark in zip(messages, marks)],
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )
        placed = sorted((skeleton.find(mark), index) for index, mark in enumerate(marks) if mark in skeleton)
        shown = {index for _, index in placed}
        if any(m["role"] == "assistant" and i not in shown for i, m in enumerate(messages)):
            raise ValueError("the chat template drops an assistant reply; cannot supervise it")
        text, spans, ends, cursor = "", [], {}, 0
        for at, index in placed:
            role = messages[index]["role"]
            content = messages[index]["content"]
            content = content.strip() if self.trims.get(role) else content
            text += skeleton[cursor:at]
            spans.append((len(text), len(text) + len(content), role))
            text += content
            cursor = at + len(marks[index])
            if role == "assistant":
                ends[spans[-1][0]] = len(text) + self._end_of_turn_length(skeleton, cursor)
        return Rendered(text + skeleton[cursor:], spans, ends)

    def tokenize(self, rendered: Rendered) -> tuple[np.ndarray, np.ndarray]:
        """(token ids [T], character offsets [T, 2]) of the rendered text, with control-token text
        inside a message tokenized as plain text."""
        ids, offsets = self._encode(rendered.text, split_special=False)
        if not len(self._control_ids):
            return ids, offsets
        spans = np.array([(s, e) for s, e, _ in rendered.message_spans], np.int64).reshape(-1, 2)
        from_message = np.isin(ids, self._control_ids) & overlaps(offsets, spans)
        for start, end in spans[overlaps(spans, offsets[from_message])] if from_message.any() else []:
            ids, offsets = self._retokenize(rendered.text, ids, offsets, int(start), int(end))
        return ids, offsets

    def _retokenize(self, text, ids, offsets, start, end):
        """Replace the tokens overlapping text[start:end] by that stretch tokenized as plain text."""
        inside = (offsets[:, 0] < end) & (offsets[:, 1] > start)
        first, last = np.flatnonzero(inside)[[0, -1]]
        lo, hi = min(start, int(offsets[first, 0])), max(end, int(offsets[last, 1]))
        piece_ids, piece_offsets = [], []
        position = lo
        for part_index, part in enumerate(text[lo:hi].split(IMAGE_PLACEHOLDER)):
            if part_index:  # the placeholder between parts stays the image token
                piece_ids.append(np.array([self.image_token_id]))
                piece_offsets.append(np.array([[position, position + len(IMAGE_PLACEHOLDER)]]))
                position += len(IMAGE_PLACEHOLDER)
            part_ids, part_offsets = self._encode(part, split_special=True)
            piece_ids.append(part_ids)
            piece_offsets.append(part_offsets + position)
            position += len(part)
        return (
            np.concatenate([ids[:first], *piece_ids, ids[last + 1 :]]),
            np.concatenate([offsets[:first], *piece_offsets, offsets[last + 1 :]]),
        )

    def _encode(self, text: str, split_special: bool) -> tuple[np.ndarray, np.ndarray]:
        encoding = self.tokenizer(
            text, add_special_tokens=False, return_offsets_mapping=True, split_special_tokens=split_special
        )
        return (
            np.asarray(encoding["input_ids"], np.int64),
            np.asarray(encoding["offset_mapping"], np.int64).reshape(-1, 2),
        )

    def _fit(self, messages: list[dict]) -> list[dict]:
        """The messages as the template shows them whole: a system message it refuses or drops is
        folded into the first user turn."""
        if not messages or messages[0]["role"] != "system" or self.keeps_system:
            return messages
        system, rest = messages[0]["content"], messages[1:]
        if rest and rest[0]["role"] == "user":
            return [{**rest[0], "content": f"{system}\n\n{rest[0]['content']}"}, *rest[1:]]
        return rest

    def _keeps_system(self) -> bool:
        """Whether the template shows a system message in a whole conversation (one ending with a reply)."""
        probe = [
            {"role": "system", "content": sentinel(0)},
            {"role": "user", "content": sentinel(1)},
            {"role": "assistant", "content": sentinel(2)},
        ]
        try:
            return sentinel(0) in self.tokenizer.apply_chat_template(probe, tokenize=False)
        except Exception:  # jinja's TemplateError from raise_exception, or the template's own checks
            return False

    def _trimmed_roles(self) -> dict[str, bool]:
        """Which roles' content the template strips of surrounding whitespace, from a probe."""
        probe = [
            {"role": "user", "content": f"  {sentinel(0)}  "},
            {"role": "assistant", "content": f"  {sentinel(1)}  "},
        ]
        if self.keeps_system:
            probe.insert(0, {"role": "system", "content": f"  {sentinel(2)}  "})
        rendered = self.tokenizer.apply_chat_template(probe, tokenize=False)
        return {m["role"]: m["content"] not in rendered and m["content"].strip() in rendered for m in probe}

    def _end_of_turn_length(self, skeleton: str, cursor: int) -> int:
        """Characters after a reply up to the end of its end-of-turn token (0 when the template puts
        none there): whitespace between them included (Llama-2: ' ' + reply + ' ' + eos)."""
        rest = skeleton[cursor:]
        gap = len(rest) - len(rest.lstrip())
        if self.end_of_turn and rest[gap:].startswith(self.end_of_turn):
            return gap + len(self.end_of_turn)
        return 0


def overlaps(offsets_T2: np.ndarray, spans_S2: np.ndarray) -> np.ndarray:
    """[T] bool: whether each [start, end) in offsets overlaps any of the sorted, disjoint spans;
    O(T log S)."""
    if len(spans_S2) == 0 or len(offsets_T2) == 0:
        return np.zeros(len(offsets_T2), bool)
    # The first span ending after the token starts is the only one it can overlap.
    first = np.searchsorted(spans_S2[:, 1], offsets_T2[:, 0], side="right")
    starts = spans_S2[np.minimum(first, len(spans_S2) - 1), 0]
    return (first < len(spans_S2)) & (starts < offsets_T2[:, 1])
