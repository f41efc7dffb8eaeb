"""The Ray Data stages after reading: decode+augment (a stateless task) and tokenize (an actor,
so the tokenizer loads once). dataset.py composes them."""

from __future__ import annotations

from collections import Counter
import numpy as np

from pipelines import contract
from pipelines.config import AugmentConfig
from pipelines.images import BadSample, decode_eval, decode_train
from pipelines.tokenizer import configure_fixed_length, load_tokenizer


def decode_and_augment(batch: dict, *, augment: AugmentConfig, train: bool, max_pixels: int,
                       keep_conversation: bool, ledger=None) -> dict:
    """Raw rows -> uint8 images; bad rows (from the reader or from decoding) are dropped and counted."""
    rng = np.random.default_rng()
    images, keep, bad = [], [], Counter()
    for index, (data, reason) in enumerate(zip(batch["image_bytes"], batch["bad_reason"])):
        if reason:
            bad[reason] += 1
            continue
        try:
            if train:
                images.append(decode_train(data, augment, max_pixels, rng))
            else:
                images.append(decode_eval(data, augment, max_pixels))
            keep.append(index)
        except BadSample as err:
            bad[err.reason] += 1
    if ledger is not None:
        ledger.record.remote(len(keep), dict(bad))
    size = augment.image_size
    out = {
        contract.IMAGE: np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8),
        contract.KEY: np.asarray(batch["key"])[keep],
        contract.LABEL: np.asarray(batch["label"], dtype=np.int64)[keep],
        "caption": np.asarray(batch["caption"])[keep],
    }
    if keep_conversation:
        out[contract.CONVERSATION] = np.asarray(batch["conversation"])[keep]
    return out


class Tokenize:
    """Captions -> fixed-length token ids and attention mask."""

    def __init__(self, tokenizer_path: str, context_length: int):
        self._tokenizer = configure_fixed_length(load_tokenizer(tokenizer_path), context_length)
        self._context_length = context_length

    def __call__(self, batch: dict) -> dict:
        captions = [str(c) for c in batch.pop("caption")]
        encodings = self._tokenizer.encode_batch(captions) if captions else []
        length = self._context_length
        batch[contract.INPUT_IDS] = np.array([e.ids for e in encodings], dtype=np.int32).reshape(-1, length)
        batch[contract.ATTENTION_MASK] = np.array(
            [e.attention_mask for e in encodings], dtype=np.uint8).reshape(-1, length)
        return batch

