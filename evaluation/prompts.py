"""Class names and zero-shot prompt templates built in for the datasets CLIP_benchmark knows
(its own English lists, data/NOTICE), so `--benchmark` on e.g. a CIFAR-10 folder uses the prompts
published numbers used."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

DATA = Path(__file__).with_name("data")
GENERIC_TEMPLATES = ["a photo of a {c}."]  # OpenAI's single prompt, for a dataset without its own


@cache
def _table(name: str) -> dict:
    return json.loads((DATA / f"{name}.json").read_text())


def builtin_classnames(dataset: str) -> list[str]:
    return list(_table("classnames").get(dataset, []))


def builtin_templates(dataset: str) -> list[str]:
    templates = _table("templates").get(dataset, [])
    return list(templates) if isinstance(templates, list) else []


def known_datasets() -> list[str]:
    return sorted(set(_table("classnames")) | set(_table("templates")))
