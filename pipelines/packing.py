"""Image-aware packing: a block's encoded VLM samples -> rows that each hold several whole samples,
under a token, an image and a sample budget, so a batch is not mostly padding.

A packed row is the samples' tokens end to end, then padding. Its position ids restart at 0 for each
sample (and for the padding), which is how transformers' causal LMs tell packed sequences apart: a
token attends only to earlier tokens of its own sample (transformers builds that block-diagonal mask
for SDPA, eager and flex attention, and uses the varlen kernel for flash-attention). Each sample's
first token is never a target, as in an unpacked row, so the last token of one sample is not trained
to predict the first token of the next. The loss per supervised token is therefore the same, packed
or not (tests/unit/test_packing.py checks losses and every module's gradients).

The images of a row are its samples' images in order, and a row carries the positions of all its
samples: a sample counts as trained on when the optimizer steps on its row (exact resume holds).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmtrain.pipelines import contract
from mmtrain.pipelines.conversations import IGNORE_INDEX


@dataclass(frozen=True)
class PackBudget:
    """What one packed row may hold."""

    tokens: int  # the row's length
    images: int  # image slots of the row
    samples: int  # positions the row can record


def pack_budget(packing, image_tokens: int, max_images_per_sample: int) -> PackBudget:
    """A row's budget from data.packing (pipelines.config.PackingConfig): max_images 0 takes as many
    images as the row's tokens hold, `image_tokens` each; max_samples 0 one per 16 tokens."""
    images = packing.max_images or max(max_images_per_sample, packing.max_tokens // max(image_tokens, 1))
    return PackBudget(packing.max_tokens, images, packing.samples_per_row)


def pack_rows(
    encoded: list[tuple[list[int], list[int]]], num_images: np.ndarray, budget: PackBudget
) -> list[list[int]]:
    """Which samples go in which row: first-fit decreasing by length (longest first, each into the
    first row with room for its tokens, images and one more sample). Deterministic for a block."""
    order = sorted(range(len(encoded)), key=lambda i: (-len(encoded[i][0]), i))
    rows: list[list[int]] = []
    room: list[list[int]] = []  # per row: tokens, images, samples left
    for sample in order:
        need = (len(encoded[sample][0]), int(num_images[sample]), 1)
        row = next((r for r, left in enumerate(room) if all(n <= free for n, free in zip(need, left))), None)
        if row is None:
            rows.append([])
            room.append([budget.tokens, budget.images, budget.samples])
            row = len(rows) - 1
        rows[row].append(sample)
        room[row] = [left - n for left, n in zip(room[row], need)]
    for members in rows:
        members.sort()  # samples keep their block order inside a row
    return rows


def assemble(
    encoded: list[tuple[list[int], list[int]]],
    images: np.ndarray,
    num_images: np.ndarray,
    positions: np.ndarray,
    rows: list[list[int]],
    budget: PackBudget,
    pad_id: int,
) -> dict:
    """The packed batch: input ids, labels, attention mask and position ids [R, tokens]; images
    [R, images, H, W, C] with their count; positions [R, samples], -1 where a row has fewer."""
    count = len(rows)
    ids = np.full((count, budget.tokens), pad_id, np.int32)
    labels = np.full((count, budget.tokens), IGNORE_INDEX, np.int32)
    mask = np.zeros((count, budget.tokens), np.uint8)
    position_ids = np.zeros((count, budget.tokens), np.int32)
    packed_images = np.zeros((count, budget.images, *images.shape[2:]), np.uint8)
    packed_count = np.zeros(count, np.int32)
    packed_positions = np.full((count, budget.samples), -1, np.int64)
    for row, members in enumerate(rows):
        start = slot = 0
        for place, sample in enumerate(members):
            sample_ids, sample_labels = encoded[sample]
            end = start + len(sample_ids)
            ids[row, start:end] = sample_ids
            labels[row, start:end] = sample_labels
            labels[row, start] = IGNORE_INDEX  # as in an unpacked row: the first token is no target
            position_ids[row, start:end] = np.arange(len(sample_ids))
            n = int(num_images[sample])
            packed_images[row, slot : slot + n] = images[sample, :n]
            slot += n
            packed_positions[row, place] = positions[sample]
            start = end
        mask[row, :start] = 1
        position_ids[row, start:] = np.arange(budget.tokens - start)  # the padding is a sequence of its own
        packed_count[row] = slot
    return {
        contract.INPUT_IDS: ids,
        contract.LABELS: labels,
        contract.ATTENTION_MASK: mask,
        contract.POSITION_IDS: position_ids,
        contract.IMAGE: packed_images,
        contract.NUM_IMAGES: packed_count,
        contract.POSITION: packed_positions,
    }


def segment_position_ids(position_ids_BL: np.ndarray | None) -> np.ndarray | None:
    """The position ids when some row holds more than one sequence, else None: the model then runs
    one causal sequence per row, with no mask to build (host arrays only)."""
    if position_ids_BL is None:
        return None
    position_ids_BL = np.asarray(position_ids_BL)
    if position_ids_BL.size == 0 or (np.diff(position_ids_BL, axis=1) == 1).all():
        return None
    return position_ids_BL


def filled_image_slots(num_images_B: np.ndarray, slots: int) -> np.ndarray:
    """Flat indices into [B * slots] of the image slots rows fill, row by row: the order of the
    rows' <image> placeholders (host arrays only). int64 [N]."""
    num_images_B = np.asarray(num_images_B)
    return np.flatnonzero(np.arange(slots)[None, :] < num_images_B[:, None]).astype(np.int64)
