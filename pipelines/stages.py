"""The Ray Data stages after reading: decode+augment (a stateless task) and tokenize (an actor,
so the tokenizer loads once). dataset.py composes them."""

from __future__ import annotations

import numpy as np

from mmtrain.pipelines import bad_samples, contract, position
from mmtrain.pipelines.config import AugmentConfig
from mmtrain.pipelines.conversations import (
    ConversationEncoder,
    PlaceholderMismatch,
    caption_conversation,
    parse_conversation,
)
from mmtrain.pipelines.images import BadSample, decode_eval, decode_train
from mmtrain.pipelines.packing import PackBudget, assemble, pack_rows
from mmtrain.pipelines.tokenizer import configure_fixed_length, load_tokenizer


def decode_and_augment(
    batch: dict,
    *,
    augment: AugmentConfig,
    train: bool,
    max_pixels: int,
    keep_conversation: bool,
    ledger=None,
    image_slots: int = 0,
) -> dict:
    """Raw rows -> uint8 images; bad rows (from the reader or from decoding) are dropped and counted.
    Each image is resized straight into its place in the batch array: no per-image array to stack.

    image_slots=0: one image per row, [B, S, S, 3] (CLIP). image_slots=M (VLM data): up to M images
    per row, [B, M, S, S, 3], and contract.NUM_IMAGES says how many slots each row fills (0 for a
    text-only conversation); a row with more images is skipped as too_many_images."""
    seeds = np.asarray(batch["augment_seed"], dtype=np.int64) if train else None
    size, rows = augment.image_size, len(batch["key"])
    shape = (rows, image_slots, size, size, 3) if image_slots else (rows, size, size, 3)
    images = np.empty(shape, np.uint8)
    num_images = np.zeros(rows, np.int32)
    keep, bad = [], []  # bad: (row, reason)
    for index, reason in enumerate(batch["bad_reason"]):
        if not reason:
            row_images = _row_images(batch, index, image_slots)
            reason = bad_samples.TOO_MANY_IMAGES if len(row_images) > max(image_slots, 1) else ""
            reason = reason or (bad_samples.MISSING_IMAGE if not row_images and not image_slots else "")
        if reason:
            bad.append((index, reason))
            continue
        slots = images[len(keep)] if image_slots else images[len(keep)][None]
        try:
            for number, data in enumerate(row_images):
                if train:  # each image of a sample draws its own crop and flip
                    rng = _sample_rng(seeds[index] + number if seeds[index] >= 0 else -1)
                    decode_train(data, augment, max_pixels, rng, out=slots[number])
                else:
                    decode_eval(data, augment, max_pixels, out=slots[number])
        except BadSample as err:
            bad.append((index, err.reason))
            continue
        num_images[len(keep)] = len(row_images)
        keep.append(index)
    if ledger is not None:
        ledger.record.remote(len(keep), [_bad_row(batch, row, reason) for row, reason in bad])
    out = {
        contract.POSITION: position.pack(batch["epoch"], batch["shard"], batch["index"])[keep],
        contract.IMAGE: images[: len(keep)],
        contract.KEY: np.asarray(batch["key"])[keep],
        contract.LABEL: np.asarray(batch["label"], dtype=np.int64)[keep],
        "caption": np.asarray(batch["caption"])[keep],
    }
    if image_slots:
        out[contract.NUM_IMAGES] = num_images[: len(keep)]
    if keep_conversation:
        out[contract.CONVERSATION] = np.asarray(batch["conversation"])[keep]
    return out


def _row_images(batch: dict, row: int, image_slots: int) -> list[bytes]:
    first = batch["image_bytes"][row]
    more = batch["more_images"][row] if image_slots and "more_images" in batch else ()
    return ([first] if len(first) else []) + list(more if more is not None else ())


def _bad_row(batch: dict, row: int, reason: str) -> position.BadSample:
    fields = (batch["epoch"][row], batch["shard"][row], batch["index"][row], batch["offset"][row])
    return position.BadSample(*(int(value) for value in fields), reason)


def _count_actor(ledger) -> None:
    """The text stage is the last of the fused pool and constructed once per actor: the ledger counts
    the pool's actors, so a run shows whether its pool started once or restarted."""
    if ledger is not None:
        ledger.actor_started.remote()


def _bad_sample(packed: int, reason: str) -> position.BadSample:
    epoch, shard, index = (int(v) for v in position.unpack(packed))
    return position.BadSample(epoch, shard, index, -1, reason)


def _sample_rng(seed: int) -> np.random.Generator:
    """A sample's own generator, from its seed (a function of run seed, epoch, shard and sample
    number): its crop and flip do not depend on which rows share its block, so a resumed run draws
    what an uninterrupted one drew. Fresh randomness when unseeded (-1)."""
    return np.random.default_rng(int(seed)) if seed >= 0 else np.random.default_rng()


def select(batch: dict, columns: tuple[str, ...] | None) -> dict:
    """Keep `columns` (all when None). Done inside the last stage: a separate select_columns
    would be one more operator, and one more copy of every image through the object store."""
    return batch if columns is None else {name: batch[name] for name in columns}


class Tokenize:
    """Captions -> fixed-length token ids and attention mask."""

    def __init__(self, tokenizer_path: str, context_length: int, columns: tuple[str, ...] | None = None, ledger=None):
        _count_actor(ledger)
        self._tokenizer = configure_fixed_length(load_tokenizer(tokenizer_path), context_length)
        self._context_length = context_length
        self._columns = columns

    def __call__(self, batch: dict) -> dict:
        # The caption text goes on only where asked for (batch inference writes it out).
        keep_caption = self._columns is not None and "caption" in self._columns
        captions = [str(c) for c in (batch["caption"] if keep_caption else batch.pop("caption"))]
        encodings = self._tokenizer.encode_batch(captions) if captions else []
        length = self._context_length
        batch[contract.INPUT_IDS] = np.array([e.ids for e in encodings], dtype=np.int32).reshape(-1, length)
        batch[contract.ATTENTION_MASK] = np.array([e.attention_mask for e in encodings], dtype=np.uint8).reshape(
            -1, length
        )
        return select(batch, self._columns)


class SelectColumns:
    """The text stage of a pipeline whose model makes its own text (VLM captioning): keep `columns`."""

    def __init__(self, columns: tuple[str, ...] | None = None, ledger=None):
        _count_actor(ledger)
        self._columns = columns

    def __call__(self, batch: dict) -> dict:
        return select(batch, self._columns)


class TokenizeConversations:
    """Image + conversation (or caption, for stage 1) -> LM token ids, attention mask and labels
    that are -100 everywhere but assistant replies. Samples whose truncation cuts the image block
    or leaves no supervised token are dropped and counted by reason (never trained on, never a
    crash inside the model)."""

    def __init__(
        self,
        lm_path: str,
        num_image_tokens: int,
        max_length: int,
        captions: bool,
        ledger=None,
        columns: tuple[str, ...] | None = None,
        pack: PackBudget | None = None,
    ):
        from transformers import AutoTokenizer  # transformers: only VLM pipelines load it

        _count_actor(ledger)
        self._encoder = ConversationEncoder(
            AutoTokenizer.from_pretrained(lm_path, trust_remote_code=False), num_image_tokens, max_length
        )
        self._captions = captions
        self._ledger = ledger
        self._columns = columns
        self._pack = pack

    def __call__(self, batch: dict) -> dict:
        captions = batch.pop("caption")
        num_images = batch.get(contract.NUM_IMAGES, np.ones(len(batch[contract.KEY]), np.int32))
        keep, rows, dropped = [], [], []
        for index, key in enumerate(batch[contract.KEY]):
            if self._captions:
                conversation = caption_conversation(str(captions[index]))
            else:
                conversation = parse_conversation(str(batch[contract.CONVERSATION][index]))
            try:
                encoded = self._encoder.encode(conversation, key=str(key), images=int(num_images[index]))
            except PlaceholderMismatch:  # e.g. a text-only or multi-image sample in caption training
                encoded = bad_samples.IMAGE_PLACEHOLDERS
            except Exception:  # the LM's chat template refused it (e.g. roles out of the order it requires)
                encoded = bad_samples.BAD_CONVERSATION
            if isinstance(encoded, str):  # a bad-sample reason
                dropped.append(_bad_sample(batch[contract.POSITION][index], encoded))
                continue
            keep.append(index)
            rows.append(encoded)
        if self._ledger is not None and dropped:
            # decode counted these as good; move them to their bad reasons
            self._ledger.record.remote(-len(dropped), dropped)
        out = {name: np.asarray(values)[keep] for name, values in batch.items()}
        if self._pack is not None:
            return select(self._packed(out, rows), self._columns)
        length = self._encoder.max_length
        padded = [self._encoder.pad(encoded) for encoded in rows]
        ids, mask, labels = (np.array([r[i] for r in padded]).reshape(-1, length) for i in range(3))
        out[contract.INPUT_IDS] = ids.astype(np.int32)
        out[contract.ATTENTION_MASK] = mask.astype(np.uint8)
        out[contract.LABELS] = labels.astype(np.int32)
        out[contract.POSITION_IDS] = np.broadcast_to(np.arange(length, dtype=np.int32), ids.shape).copy()
        return select(out, self._columns)

    def _packed(self, out: dict, rows: list) -> dict:
        """The block's samples packed into rows (pipelines/packing.py); per-sample text columns
        (key, label, conversation) describe one sample, so packed rows do not carry them."""
        encoded = [(r.input_ids, r.labels) for r in rows]
        num_images = out[contract.NUM_IMAGES]
        members = pack_rows(encoded, num_images, self._pack)
        return assemble(
            encoded, out[contract.IMAGE], num_images, out[contract.POSITION], members, self._pack, self._encoder.pad_id
        )
