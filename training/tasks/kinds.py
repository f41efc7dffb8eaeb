"""Which trainer a config or checkpoint belongs to, told by the keys only its config has, so that a
VLM preset given to `train clip` (or a CLIP run to `eval vlm`) says which command takes it instead
of failing on the first key the other trainer lacks."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

from mmtrain.training.config.help import resolve_preset
from mmtrain.training.config.io import ConfigError, config_from_data, read_config_file
from mmtrain.training.tasks.registry import TRAINERS


def _fields(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _own_keys(kind: str) -> set[str]:
    """Keys, top-level or under `model`, that only this trainer's config has (CLIP: loss,
    model.embed_dim, model.text; VLM: stage, lrs, max_length, model.lm, model.projector)."""

    def keys(cls) -> set[str]:
        model = typing.get_type_hints(cls)["model"]
        return _fields(cls) | {f"model.{name}" for name in _fields(model)}

    others = set().union(*(keys(spec.config_class) for other, spec in TRAINERS.items() if other != kind))
    return keys(TRAINERS[kind].config_class) - others


def _keys_of(config: dict) -> list[str]:
    model = config.get("model")
    return list(config) + [f"model.{name}" for name in (model if isinstance(model, dict) else {})]


def run_kind(config: dict) -> str | None:
    """The trainer's name, or None when no key tells."""
    for kind in TRAINERS:
        if set(_keys_of(config)) & _own_keys(kind):
            return kind
    return None


def check_kind(config: dict, kind: str, what: str, command: str, instead: str = "") -> None:
    """Raise ConfigError when `config` (read from `what`) belongs to the other trainer; `instead`
    (with {kind} for the trainer found) is the command to suggest, else every command for it."""
    found = run_kind(config)
    if found is None or found == kind:
        return
    key = next(key for key in _keys_of(config) if key in _own_keys(found))
    use = f"`{instead.format(kind=found)}`" if instead else TRAINERS[found].commands
    raise ConfigError(
        f"{what} belongs to the {found.upper()} trainer (it has `{key}`), and `{command}` takes "
        f"a {kind.upper()} one: use {use}"
    )


def load_run_config(kind: str, path: str | Path, overrides: list[str] = ()):
    """A preset for `mmtrain train KIND` (a path, or a preset under the project's conf/), refused with
    the right command when it is the other trainer's."""

    path = resolve_preset(path)
    data = read_config_file(path)  # parsed once: the trainer check and the config read the same data
    check_kind(data, kind, str(path), f"mmtrain train {kind}", f"mmtrain train {{kind}} --config {path}")
    return config_from_data(TRAINERS[kind].config_class, data, overrides)
