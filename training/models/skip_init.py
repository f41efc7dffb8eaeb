"""Build a model without its random initialisation, for a caller that overwrites every weight next.

A model loaded from a checkpoint is built first, and its initialisers fill tensors that the load
replaces at once: half a second of a ViT-B/32's load on one thread, every time an inference replica
or an evaluation starts. transformers skips them the same way (`no_init_weights`). What a module
computes itself (position ids, masks) is still computed: only `torch.nn.init`'s in-place
initialisers become no-ops, so the tensors they would have filled hold whatever memory held.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator

from torch.nn import init

# nn.init's in-place initialisers (`normal_`, `kaiming_uniform_`, `zeros_`, ...): modules call
# them through the module at construction time, so replacing the attributes reaches them all.
_INITIALISERS = tuple(name for name in dir(init) if name.endswith("_") and not name.startswith("_"))
_LOCK = threading.Lock()


def _leave_as_is(tensor, *args, **kwargs):
    return tensor


@contextlib.contextmanager
def initialisers_skipped() -> Iterator[None]:
    """Within it, `torch.nn.init`'s initialisers leave their tensors as they are. Process-wide:
    another thread building a module meanwhile is not initialised either (inference builds its
    model on the thread that loads it); a lock keeps two such builds from interleaving their
    patching and restoring."""
    with _LOCK:
        saved = {name: getattr(init, name) for name in _INITIALISERS}
        try:
            for name in _INITIALISERS:
                setattr(init, name, _leave_as_is)
            yield
        finally:
            for name, initialiser in saved.items():
                setattr(init, name, initialiser)
