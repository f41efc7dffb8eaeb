"""`mmtrain config show`: a run config as YAML, every key with its value, its default where the
preset changed it, and its help text (the comment beside or above the field in the dataclass)."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
from pathlib import Path

import yaml

from mmtrain.training.config.io import ConfigError

PROJECT = Path(__file__).resolve().parents[2]  # the clone, or the installed mmtrain package: conf/ is beside training/
FIELD = re.compile(r"^\s+(\w+)\s*:[^#]*?(?:#\s*(.*))?$")


def resolve_preset(spec: str | Path) -> Path:
    """A preset path as given, else under the project's conf/ (so `clip/tiny`, `conf/clip/tiny.yaml`
    and an absolute path work from any directory)."""
    spec = Path(spec)
    for candidate in (spec, PROJECT / spec, PROJECT / "conf" / spec, PROJECT / "conf" / f"{spec}.yaml"):
        if candidate.is_file():
            return candidate
    presets = ", ".join(
        str(p.relative_to(PROJECT / "conf"))[:-5]
        for p in sorted((PROJECT / "conf").glob("*/*.yaml"))
        if p.parent.name != "eval"
    )
    raise ConfigError(f"config file {spec} does not exist here or under {PROJECT / 'conf'} (presets: {presets})")


@functools.lru_cache(maxsize=None)
def field_help(cls: type) -> dict[str, str]:
    """{field: its comment}: the comment at the end of the field's line, else the lines just above it."""
    helps, above = {}, []
    for line in inspect.getsource(cls).splitlines()[1:]:
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("# "))
            continue
        match = FIELD.match(line)
        if match and not stripped.startswith(("def ", "@", '"""')):
            helps[match.group(1)] = match.group(2) or " ".join(above)
        above = []
    return helps


def describe(config, indent: int = 0, defaults=None, unused=None, path: str = "") -> list[str]:
    """YAML lines for a config dataclass: `key: value  # help [default: x]`. `defaults`: the section
    as its parent makes it (the VLM's `run` is named vlm, not the section's own default). Keys the
    trainer does not read (its UNUSED_KEYS) are left out."""
    lines, pad = [], "  " * indent
    helps = field_help(type(config))
    unused = getattr(config, "UNUSED_KEYS", {}) if unused is None else unused
    for item in dataclasses.fields(config):
        if path + item.name in unused:
            continue
        value = getattr(config, item.name)
        default = getattr(defaults, item.name) if defaults is not None else _default(item)
        if dataclasses.is_dataclass(value):
            help_text = f"  # {helps[item.name]}" if helps.get(item.name) else ""
            section_default = default if dataclasses.is_dataclass(default) else None
            inner = describe(value, indent + 1, section_default, unused, f"{path}{item.name}.")
            lines += [f"{pad}{item.name}:{help_text}"] + inner
            continue
        note = helps.get(item.name, "")
        if default is not dataclasses.MISSING and _plain(default) != _plain(value):
            note = f"{note} [default: {_yaml(default)}]".strip()
        lines.append(f"{pad}{item.name}: {_yaml(value)}" + (f"  # {note}" if note else ""))
    return lines


def _default(item: dataclasses.Field):
    if item.default is not dataclasses.MISSING:
        return item.default
    if item.default_factory is not dataclasses.MISSING:
        return item.default_factory()
    return dataclasses.MISSING


def _plain(value):
    """Plain YAML data: tuples as lists, config sections inside a list (data.sources) as mappings."""
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


def _yaml(value) -> str:
    return yaml.safe_dump(_plain(value), default_flow_style=True, width=10_000).strip().removesuffix("...").strip()
