"""Reading a user's files without following them anywhere: the one way mmtrain reads loose files
(convert's folders and tables, inference over an image folder)."""

from __future__ import annotations

import stat
from pathlib import Path

from mmtrain.pipelines import bad_samples


def read_contained(path: Path, root: Path, max_bytes: int, too_large: str) -> bytes | str:
    """A regular file's bytes when it (after following links) lies under `root` and holds at most
    `max_bytes`; otherwise the reason it is skipped. A FIFO or device is never opened: reading one
    would block or never end."""
    resolved = path.resolve()
    if not resolved.is_relative_to(root):
        return bad_samples.OUTSIDE_SOURCE
    status = resolved.stat()
    if not stat.S_ISREG(status.st_mode):
        return bad_samples.UNREADABLE_FILE
    if status.st_size > max_bytes:
        return too_large
    with open(resolved, "rb") as file:
        data = file.read(max_bytes + 1)
    return too_large if len(data) > max_bytes else data
