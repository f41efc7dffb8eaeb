"""DCP's `.metadata` file is a pickle: the one place mmtrain unpickles, because the format forces it.

A pickle names the callables it wants called. The unpickler here resolves only an exact allow-list
of (module, qualified name) pairs, the ones torch's own DCP writes (found by recording every
find_class call while loading real checkpoints); a dotted name is refused outright, since
pickle protocol 4 resolves "os.system" inside any allowed module. After loading, every object in
the result is checked to be of a type DCP metadata holds, so nothing else survives the load.
"""

from __future__ import annotations

import enum
import pathlib
import pickle
from typing import IO

import torch
from torch.distributed.checkpoint import filesystem, metadata

MAX_METADATA_BYTES = 512 * 1024 * 1024  # a model with millions of tensors writes tens of MB
_METADATA_CLASSES = (
    "Metadata",
    "MetadataIndex",
    "StorageMeta",
    "TensorProperties",
    "TensorStorageMetadata",
    "BytesStorageMetadata",
    "ChunkStorageMetadata",
    "_MEM_FORMAT_ENCODING",
)
_DTYPES = {name: value for name, value in vars(torch).items() if isinstance(value, torch.dtype)}
ALLOWED: dict[tuple[str, str], object] = {
    **{("torch.distributed.checkpoint.metadata", name): getattr(metadata, name) for name in _METADATA_CLASSES},
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"): filesystem._StorageInfo,
    ("torch", "Size"): torch.Size,
    ("torch.serialization", "_get_layout"): torch.serialization._get_layout,
    ("pathlib", "PosixPath"): pathlib.PosixPath,  # building a path object touches no file
    ("pathlib", "PurePosixPath"): pathlib.PurePosixPath,
    **{("torch", name): dtype for name, dtype in _DTYPES.items()},
}
_PLAIN = (
    type(None),
    bool,
    int,
    float,
    complex,
    str,
    bytes,
    torch.dtype,
    torch.layout,
    torch.memory_format,
    pathlib.PurePosixPath,
    enum.Enum,
)
_CONTAINERS = (dict, list, tuple, set, frozenset)
_ALLOWED_TYPES = tuple(value for value in ALLOWED.values() if isinstance(value, type))


class UnsafeCheckpoint(pickle.UnpicklingError, ValueError):
    """A checkpoint's metadata asks for something a DCP checkpoint does not hold."""


class MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        found = ALLOWED.get((module, name))
        if found is None:
            raise UnsafeCheckpoint(
                f"checkpoint metadata names {module}:{name}, which a DCP checkpoint does not "
                "hold: refusing to load it (it could run code)"
            )
        return found


def load_metadata(stream: IO[bytes], size: int) -> metadata.Metadata:
    """The checkpoint's Metadata, read through the allow-list and type-checked."""
    if size > MAX_METADATA_BYTES:
        raise UnsafeCheckpoint(f"checkpoint metadata is {size} bytes, over {MAX_METADATA_BYTES}: not a DCP checkpoint")
    try:
        loaded = MetadataUnpickler(stream).load()
    except UnsafeCheckpoint:
        raise
    except Exception as err:  # truncated, or a pickle that is malformed in any other way
        raise UnsafeCheckpoint(f"checkpoint metadata does not parse ({type(err).__name__}: {err})") from None
    if not isinstance(loaded, metadata.Metadata):
        raise UnsafeCheckpoint(f"checkpoint metadata holds a {type(loaded).__name__}, not DCP's Metadata")
    check_types(loaded)
    return loaded


def check_types(root: object) -> None:
    """Refuse an object graph holding any type but DCP's metadata classes and plain values."""
    pending, seen = [root], set()
    while pending:
        item = pending.pop()
        if isinstance(item, _PLAIN) and (not isinstance(item, enum.Enum) or type(item) in _ALLOWED_TYPES):
            continue
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, _CONTAINERS):
            pending.extend(item.items() if isinstance(item, dict) else item)
        elif type(item) in _ALLOWED_TYPES:
            pending.extend(vars(item).values() if hasattr(item, "__dict__") else ())
            pending.extend(getattr(item, slot) for slot in getattr(type(item), "__slots__", ()) if hasattr(item, slot))
        else:
            raise UnsafeCheckpoint(
                f"checkpoint metadata holds a {type(item).__module__}.{type(item).__qualname__}, "
                "which a DCP checkpoint does not: refusing to load it"
            )
