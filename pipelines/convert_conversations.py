"""Conversation datasets -> convert Examples: LLaVA JSON (`llava_v1_5_mix665k.json`, an array, or
JSONL), ShareGPT-style `messages`, and Hugging Face tables (Parquet) with image bytes.

A row is `{"id", "image": "coco/x.jpg" | [paths] | absent, "conversations": [{"from", "value"}]}`
(LLaVA), or `{"images": [...], "messages": [{"role", "content"}]}` (ShareGPT; content may be a list of
typed parts, `{"type": "image"}` / `{"type": "text", "text": ...}`, as Hugging Face chat data has it).
Images are paths under the image root, `{"bytes", "path"}` mappings (HF datasets' Image feature) or
bytes. Each image gets one <image> placeholder in order; a row with images and no placeholder gets
them before its first user turn, as LLaVA places them. A row whose image is missing or unreadable is
skipped and counted by reason; the rest of the file converts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from mmtrain.pipelines import bad_samples
from mmtrain.pipelines.chat_rendering import IMAGE_PLACEHOLDER
from mmtrain.pipelines.contained_files import read_contained
from mmtrain.pipelines.conversations import ROLES
from mmtrain.pipelines.table_rows import ext_of, jsonl_rows, sniff_ext
from mmtrain.pipelines.tar_samples import MAX_MEMBER_BYTES

CONVERSATION_COLUMNS = ("conversations", "messages")
IMAGE_KEYS = ("image", "images")


def is_conversation_table(columns: list[str]) -> bool:
    return any(name in columns for name in CONVERSATION_COLUMNS)


def read_llava_json(src: Path, max_bytes: int) -> Iterator[dict | str]:
    """Rows of a LLaVA JSON array, or of JSONL (one row per line): the array is read whole, as
    LLaVA's own loader does, after its size is checked."""
    with open(src, "rb") as file:
        first = file.read(1024).lstrip()[:1]
    if first != b"[":
        yield from jsonl_rows(src, max_bytes)[0]
        return
    size = src.stat().st_size
    if size > max_bytes:
        raise ValueError(f"{src} is {size} bytes, over the {max_bytes}-byte limit for a JSON array: write it as JSONL")
    try:
        rows = json.loads(src.read_bytes())
    except (ValueError, RecursionError) as err:
        raise ValueError(f"{src} is not a JSON array of conversations ({err})") from None
    if not isinstance(rows, list):
        raise ValueError(f"{src} holds a JSON {type(rows).__name__}, not an array of conversations")
    yield from (row if isinstance(row, dict) else bad_samples.BAD_METADATA for row in rows)


def conversation_example(row: dict, root: Path) -> tuple[list[tuple[bytes, str]], list[dict], str] | str:
    """(images with their extensions, LLaVA turns, caption) of a row, or the reason it is skipped.
    The caption is the first assistant reply: what stage 1 trains on for caption-style data."""
    turns = _turns(next((row[name] for name in CONVERSATION_COLUMNS if name in row), None))
    if isinstance(turns, str):
        return turns
    images = []
    for image in _image_list(next((row[name] for name in IMAGE_KEYS if row.get(name) is not None), None)):
        loaded = _load_image(image, root)
        if isinstance(loaded, str):
            return loaded
        images.append(loaded)
    placed = sum(turn["value"].count(IMAGE_PLACEHOLDER) for turn in turns)
    if placed == 0 and images:
        first_user = next((i for i, turn in enumerate(turns) if turn["from"] == "human"), None)
        if first_user is None:
            return bad_samples.IMAGE_PLACEHOLDERS
        turns[first_user]["value"] = f"{IMAGE_PLACEHOLDER}\n" * len(images) + turns[first_user]["value"]
    elif placed != len(images):
        return bad_samples.IMAGE_PLACEHOLDERS
    caption = next((turn["value"] for turn in turns if turn["from"] == "gpt"), "")
    return images, turns, caption.strip()


def _turns(conversation) -> list[dict] | str:
    """LLaVA turns ({"from": "human"|"gpt"|"system", "value": text}) from either key style."""
    if not isinstance(conversation, list) or not conversation:
        return bad_samples.BAD_CONVERSATION
    turns = []
    for turn in conversation:
        if not isinstance(turn, dict):
            return bad_samples.BAD_CONVERSATION
        role = ROLES.get(turn.get("from", turn.get("role")))
        text = _text(turn.get("value", turn.get("content")))
        if role is None or text is None:
            return bad_samples.BAD_CONVERSATION
        turns.append({"from": {"user": "human", "assistant": "gpt"}.get(role, role), "value": text})
    return turns


def _text(content) -> str | None:
    """A turn's text; typed parts ({"type": "image"} / {"type": "text", "text": ...}) are joined, each
    image part becoming a placeholder."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return None
    parts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "image":
            parts.append(IMAGE_PLACEHOLDER)
        elif kind == "text" and isinstance(part.get("text"), str):
            parts.append(part["text"])
        else:
            return None
    return "\n".join(parts)


def _image_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _load_image(image, root: Path) -> tuple[bytes, str] | str:
    """(bytes, extension) of one image reference, or the reason it cannot be read."""
    if isinstance(image, dict):  # Hugging Face datasets store images as {"bytes", "path"}
        image = image.get("bytes") or image.get("path")
    if isinstance(image, (bytes, bytearray)):
        return bytes(image), sniff_ext(image)
    if not isinstance(image, str) or not image:
        return bad_samples.MISSING_IMAGE
    path = Path(image) if Path(image).is_absolute() else root / image
    if not path.is_file():
        return bad_samples.MISSING_IMAGE
    data = read_contained(path, root, MAX_MEMBER_BYTES, bad_samples.OVERSIZED_MEMBER)
    return data if isinstance(data, str) else (data, ext_of(path.suffix))
