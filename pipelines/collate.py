"""Last-mile collation on the trainer's side of Ray Data: numpy batch -> torch tensors, in Ray's
prefetch thread, before Ray pins the tensors and copies them to the device.

The VLM's loss needs the sequence positions whose next token is supervised. Finding them takes a
`nonzero`, which on a GPU tensor makes the host wait for the device every step; here it runs on the
host copy of the labels, and the result travels to the device with the rest of the batch.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from ray.data.collate_fn import NumpyBatchCollateFn

from mmtrain.pipelines import contract
from mmtrain.pipelines.conversations import supervised_positions, supervised_token_count
from mmtrain.pipelines.packing import filled_image_slots, segment_position_ids

TOKEN_COLUMNS = (contract.INPUT_IDS, contract.ATTENTION_MASK, contract.LABELS, contract.POSITION_IDS)


def trim_padding(batch: dict) -> dict:
    """Rows cut to the batch's longest: the data stage pads each row to max_length, and the columns
    past every row's last token would be computed and thrown away (host arrays only)."""
    mask = np.asarray(batch[contract.ATTENTION_MASK])
    longest = int(mask.any(axis=0).nonzero()[0][-1]) + 1 if mask.any() else mask.shape[1]
    if longest == mask.shape[1]:
        return batch
    return {name: values[:, :longest] if name in TOKEN_COLUMNS else values for name, values in batch.items()}


class VlmCollate(NumpyBatchCollateFn):
    """The contract's columns as tensors, plus contract.PREDICTING and contract.SUPERVISED_TOKENS
    from the labels, contract.IMAGE_INDEX from the image counts and contract.TOKENS from the mask.
    Position ids travel on only when some row is packed: one sequence per row needs none, and no
    mask. Sample positions are flattened to the batch's samples (a packed row holds several)."""

    def __init__(self, trim: bool = True):
        super().__init__()
        self.trim = trim  # False: rows as long as the data stage made them (benchmarks compare)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        batch = trim_padding(dict(batch)) if self.trim else dict(batch)
        position_ids = segment_position_ids(batch.pop(contract.POSITION_IDS, None))
        if contract.POSITION in batch:  # packed rows list their samples' positions, -1 past the last
            positions = np.asarray(batch[contract.POSITION]).reshape(-1)
            batch[contract.POSITION] = positions[positions >= 0]
        with warnings.catch_warnings():  # Ray's arrays are read-only; these tensors are never written
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            tensors = {name: torch.as_tensor(values) for name, values in batch.items()}
            if position_ids is not None:
                tensors[contract.POSITION_IDS] = torch.as_tensor(position_ids)
        tensors[contract.PREDICTING] = torch.from_numpy(supervised_positions(batch[contract.LABELS]))
        tensors[contract.SUPERVISED_TOKENS] = torch.tensor(supervised_token_count(batch[contract.LABELS]))
        tensors[contract.TOKENS] = torch.tensor(int(np.count_nonzero(batch[contract.ATTENTION_MASK])))
        slots = batch[contract.IMAGE].shape[1]
        tensors[contract.IMAGE_INDEX] = torch.from_numpy(filled_image_slots(batch[contract.NUM_IMAGES], slots))
        return tensors
