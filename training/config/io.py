"""Build typed, frozen config dataclasses from YAML files plus `--set a.b=c` overrides.

Unknown keys are errors that name the full key path and the closest valid key, so a typo in a
preset fails before any Ray worker starts.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from mmtrain.pipelines.config import InvalidValue

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


def load_config(
    cls: type[T], path: str | Path | None = None, overrides: list[str] = (), values: dict[str, Any] | None = None
) -> T:
    """Read `path` (YAML) into `cls`, applying `key.sub=value` overrides, then `values`
    ({"key.sub": python value}, as a sweep samples them) on top."""
    return config_from_data(cls, read_config_file(path) if path is not None else {}, overrides, values)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A config file's mapping, parsed once (a YAML error names the file and where)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    data = _load_yaml_file(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level, not {type(data).__name__}")
    return data


def config_from_data(
    cls: type[T], data: dict[str, Any], overrides: list[str] = (), values: dict[str, Any] | None = None
) -> T:
    """`cls` from already parsed data, overrides and sampled values applied on top."""
    data = copy.deepcopy(data)  # overrides write into nested sections: the caller's data stays as given
    for override in overrides:
        apply_override(data, override)
    for key, value in (values or {}).items():
        set_value(data, key, value)
    return from_dict(cls, data)


def _load_yaml_file(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" line {where.line + 1}, column {where.column + 1}" if where else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(
            f"config file {path}{line}: not valid YAML ({problem}); a value holding ': ', '{{', '[' or '#' needs quotes"
        ) from None


def apply_override(data: dict[str, Any], override: str) -> None:
    """Set `a.b.c=value` in a nested dict; the value is parsed as YAML (so 3, 1e-3, true, [1,2] work)."""
    key, sep, raw_value = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {override!r} must look like key.sub=value")
    set_value(data, key.strip(), parse_override_value(key.strip(), raw_value))


def parse_override_value(key: str, raw: str) -> Any:
    """A `--set` value as YAML; a list whose items YAML cannot read (brace patterns such as
    `[s3://b/train-{00000..00999}.tar]`, where '{' opens a YAML mapping) as a list of its items' text."""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as err:
        text = raw.strip()
        if text.startswith("[") and text.endswith("]"):
            return [item.strip().strip("'\"") for item in _split_top_level(text[1:-1]) if item.strip()]
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(
            f"--set {key}={raw}: the value is not valid YAML ({problem}); quote it, e.g. --set '{key}=\"{raw}\"'"
        ) from None


def _split_top_level(text: str) -> list[str]:
    """Split at commas outside braces and brackets: `a-{0,1}.tar, b` -> ['a-{0,1}.tar', ' b']."""
    items, depth, start = [], 0, 0
    for index, char in enumerate(text):
        depth += (char in "{[") - (char in "}]")
        if char == "," and depth == 0:
            items.append(text[start:index])
            start = index + 1
    return items + [text[start:]]


def set_value(data: dict[str, Any], key: str, value: Any) -> None:
    """Set `a.b.c` in a nested dict, creating sections on the way."""
    *parents, leaf = key.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{key!r}: {part!r} is not a section")
    node[leaf] = value


def from_dict(cls: type[T], data: Any, path: str = "") -> T:
    """Recursively build dataclass `cls` from plain data, checking keys and types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'} must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            full_key = f"{path}.{key}" if path else key
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean {(path + '.' if path else '') + close[0]!r}?" if close else ""
            valid = ", ".join(sorted(fields))
            raise ConfigError(f"unknown config key {full_key!r}{hint} (valid keys here: {valid})")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, f"{path}.{name}" if path else name)
    try:
        return cls(**kwargs)
    except TypeError as err:  # a required field without a default was left out
        raise ConfigError(f"{path or cls.__name__}: {err}") from None
    except InvalidValue as err:  # a value that cannot work, named with its full key
        raise ConfigError(f"{path + '.' if path else ''}{err}") from None


def _coerce(hint: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, path)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(option, value, path)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{path}: bad value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{path} must be one of {list(args)}, got {value!r}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path} must be a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{path} must have {len(args)} items, got {value!r}")
            return tuple(_coerce(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item_type = args[0] if args else Any
        items = [_coerce(item_type, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path} must be a mapping, got {value!r}")
        return dict(value)
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{path} must be a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{path} must be a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{path}: unsupported config type {hint!r}")


def to_dict(config: Any) -> dict[str, Any]:
    """A plain, YAML-safe dict of a config (tuples become lists)."""
    return _plain(dataclasses.asdict(config))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}, for logging as MLflow params."""
    flat = {}
    for key, value in config.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, full + "."))
        else:
            flat[full] = value
    return flat
