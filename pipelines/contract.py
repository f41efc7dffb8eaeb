"""The batch contract between pipelines/ (producer) and training/ (consumer).

Shapes: B = batch, H/W = image height/width, C = 3 channels (RGB), L = text context length.
Images travel as uint8 HWC (4x smaller than float32 in the object store); the trainer moves
them to the device and normalises there. Text travels as token ids plus an attention mask.
"""

from __future__ import annotations

import numpy as np

IMAGE = "image"  # uint8 [B, H, W, C]; VLM data: [B, M, H, W, C], M image slots per row
NUM_IMAGES = "num_images"  # int32 [B], VLM data: the image slots each row fills (the rest are unset)
INPUT_IDS = "input_ids"  # int32 [B, L], right-padded with the tokenizer's pad id
ATTENTION_MASK = "attention_mask"  # uint8 [B, L], 1 on real tokens, 0 on padding
LABEL = "label"  # int64 [B], class index, -1 when the sample has none
KEY = "key"  # str [B], the sample's key inside its shard
POSITION = "position"  # int64 [B], (epoch, shard, sample number) packed (pipelines/position.py);
# packed VLM rows (pipelines/packing.py): [B, S], the positions of a row's samples, -1 past the last
POSITION_IDS = "position_ids"  # int32 [B, L], VLM: each token's place in its own sample (restarts per packed sample)
CONVERSATION = "conversation"  # str [B], LLaVA-format turns as JSON (VLM data only)
LABELS = "labels"  # int32 [B, L], next-token targets, -100 where no loss (VLM only)
# int64 [K], made from LABELS at collation (pipelines/collate.py): the positions whose next token is
# supervised in some row, the only ones the VLM computes logits for.
PREDICTING = "predicting_positions"
# int64 [], made from LABELS at collation: how many next-token targets the batch supervises. The VLM's
# loss divides by the sum of these over the step's micro-batches and ranks (a token-weighted mean).
SUPERVISED_TOKENS = "supervised_tokens"
# int64 [N], made from NUM_IMAGES at collation: the flat indices (into B x M) of the filled image slots,
# in placeholder order. Selecting them by a mask on the device would make the host wait for it.
IMAGE_INDEX = "image_index"
# int64 [], made at collation: the batch's real (not padding) tokens, for tokens/s and the padding fraction.
TOKENS = "tokens"
PER_BATCH = (PREDICTING, SUPERVISED_TOKENS, IMAGE_INDEX, TOKENS)  # describe the whole batch, not one value per row

DTYPES = {
    IMAGE: np.dtype(np.uint8),
    INPUT_IDS: np.dtype(np.int32),
    ATTENTION_MASK: np.dtype(np.uint8),
    LABEL: np.dtype(np.int64),
    LABELS: np.dtype(np.int32),
    POSITION: np.dtype(np.int64),
}
NDIM = {IMAGE: 4, INPUT_IDS: 2, ATTENTION_MASK: 2, LABEL: 1, LABELS: 2, KEY: 1, CONVERSATION: 1, POSITION: 1}

TENSOR_COLUMNS = (IMAGE, INPUT_IDS, ATTENTION_MASK, LABEL)  # what iter_torch_batches can carry
TRAIN_COLUMNS = TENSOR_COLUMNS + (KEY, POSITION)
VLM_TENSOR_COLUMNS = (IMAGE, NUM_IMAGES, INPUT_IDS, ATTENTION_MASK, LABELS, POSITION_IDS)

# Normalisation applied on the device by the trainer (CLIP's published statistics).
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)


def check_batch(batch: dict, image_size: int, context_length: int) -> None:
    """Raise AssertionError if a numpy batch breaks the contract (used by tests and debug runs).
    VLM data (a NUM_IMAGES column) carries image slots, [B, M, H, W, C]."""
    for column in TRAIN_COLUMNS:
        assert column in batch, f"batch lacks column {column!r}: has {sorted(batch)}"
    slots = NUM_IMAGES in batch
    for column, dtype in DTYPES.items():
        if column not in batch:
            continue
        array = np.asarray(batch[column])
        assert array.dtype == dtype, f"{column}: dtype {array.dtype}, contract says {dtype}"
        ndim = NDIM[column] + (column == IMAGE and slots)
        assert array.ndim == ndim, f"{column}: {array.ndim} dims, contract says {ndim}"
    batch_size, *_, height, width, channels = batch[IMAGE].shape
    assert (height, width, channels) == (image_size, image_size, 3), batch[IMAGE].shape
    assert batch[INPUT_IDS].shape == (batch_size, context_length), batch[INPUT_IDS].shape
    assert batch[ATTENTION_MASK].shape == (batch_size, context_length)
    if slots:
        assert (0 <= np.asarray(batch[NUM_IMAGES])).all() and (batch[NUM_IMAGES] <= batch[IMAGE].shape[1]).all()
