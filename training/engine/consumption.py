"""Which samples this rank has trained on since the last checkpoint: the `position` column of each
batch (pipelines/position.py). Knows nothing of Ray: the worker gathers what `take` returns."""

from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np
import torch

from mmtrain.pipelines import contract


class Consumption:
    """Positions are kept as the tensors they arrived in, on the device: reading them every step
    would make the host wait for the device. They move to the host once per checkpoint."""

    def __init__(self):
        self._pending: list[torch.Tensor] = []  # one per batch handed to the loop, oldest first

    def watch(self, batches: Iterable[dict]) -> Iterator[dict]:
        """Pass batches through, noting each one's position column (the loop counts a batch's
        samples by it)."""
        for batch in batches:
            self._pending.append(batch[contract.POSITION])
            yield batch

    def take(self, batches_trained: int) -> np.ndarray:
        """The positions of the oldest `batches_trained` batches (those the optimizer has stepped
        on since the last call); batches fetched but not yet stepped on stay pending."""
        taken, self._pending = self._pending[:batches_trained], self._pending[batches_trained:]
        if not taken:
            return np.zeros(0, np.int64)
        positions = torch.cat([t.reshape(-1) for t in taken]).cpu().numpy().astype(np.int64)
        return positions[positions >= 0]  # packed rows pad their positions with -1
