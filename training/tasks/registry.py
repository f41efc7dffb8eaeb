"""Which task class trains (and evaluates) each kind of model. Imported lazily: the VLM's task pulls
in transformers, which a CLIP inference actor should not pay for at start-up."""

from __future__ import annotations

KINDS = ("clip", "vlm")


def task_class(kind: str) -> type:
    if kind == "clip":
        from training.tasks.clip import ClipTask

        return ClipTask
    if kind == "vlm":
        from training.tasks.vlm import VlmTask

        return VlmTask
    raise ValueError(f"unknown model kind {kind!r}: one of {', '.join(KINDS)}")
