"""Hugging Face model ids wherever mmtrain takes a model directory (`init_from`,
`model.vision.checkpoint`, `model.lm.path`, `models prepare-lm`).

A value that exists here is a local directory and is used as it is. Otherwise a value shaped like a
hub id ("openai/clip-vit-base-patch32") is fetched with huggingface_hub into its cache (HF_HOME),
the configs, tokenizer files and safetensors weights only (mmtrain never loads pickled weights),
and the snapshot directory is used. Offline (HF_HUB_OFFLINE=1, or no route to the hub) a model
already in the cache still works; one that is not is refused with the command that fetches it."""

from __future__ import annotations

import re
from pathlib import Path

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
MODEL_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja"]


def local_model_dir(spec: str, key: str) -> str:
    """`spec` itself when it is a local path (or empty, or a URI); a hub id's snapshot directory."""
    if not spec or "://" in spec or Path(spec).exists() or not HUB_ID.match(spec):
        return spec
    from huggingface_hub import snapshot_download  # only for a model named by its hub id

    try:
        return snapshot_download(spec, allow_patterns=MODEL_FILES)
    except Exception as online:  # offline, no route to the hub, unknown or gated id: the cache may have it
        try:
            return snapshot_download(spec, allow_patterns=MODEL_FILES, local_files_only=True)
        except Exception:
            reason = str(online).splitlines()[0][:200] if str(online) else type(online).__name__
            patterns = " ".join(f"'{pattern}'" for pattern in MODEL_FILES)
            raise ValueError(
                f"{key}={spec} is no directory here, and the Hugging Face model {spec} is not in the cache "
                f"and could not be downloaded ({reason}). Where the hub can be reached: "
                f"`hf download {spec} --include {patterns}` (it fills the cache this machine reads: set "
                f"HF_HOME to share it), or `--local-dir DIR` and then {key}=DIR"
            ) from None
