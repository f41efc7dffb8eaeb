"""Every numeric config key declares its range, and the loader refuses NaN, infinities and values
outside it with the key's full path; YAML errors name the file or the override and how to quote."""

import dataclasses
import math
import typing

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmtrain.pipelines.config import Checked
from mmtrain.training.config.io import ConfigError, load_config, parse_override_value
from mmtrain.training.config.schema import ClipRunConfig, SweepConfig, VlmRunConfig

NUMBERS = (int, float)


def _numeric_keys(cls, prefix=""):
    """(section class, full key, field name, type hint) of every numeric key below `cls`."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        hint, key = hints[field.name], prefix + field.name
        if dataclasses.is_dataclass(hint):
            yield from _numeric_keys(hint, key + ".")
            continue
        args = [a for a in typing.get_args(hint) if a is not type(None) and a is not Ellipsis]
        if hint in NUMBERS or args and all(a in NUMBERS for a in args):
            yield cls, key, field.name, hint


ALL_KEYS = [(root, *entry) for root in (ClipRunConfig, VlmRunConfig, SweepConfig) for entry in _numeric_keys(root)]


def test_every_numeric_key_declares_its_range():
    missing = [
        f"{root.__name__}: {key}"
        for root, cls, key, name, _ in ALL_KEYS
        if not issubclass(cls, Checked) or name not in cls.RANGES
    ]
    assert not missing, missing
    assert len(ALL_KEYS) > 80


def _value_for(hint, value):
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is tuple:
        return [value] * (len(args) if Ellipsis not in args else 1)
    return value


@pytest.mark.parametrize(
    "root, cls, key, name, hint",
    [k for k in ALL_KEYS if float in typing.get_args(k[4]) or k[4] is float],
    ids=lambda v: v if isinstance(v, str) else "",
)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_no_float_key_takes_nan_or_infinity(root, cls, key, name, hint, bad):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(root, values={key: _value_for(hint, bad)})


@settings(max_examples=200, deadline=None)
@given(entry=st.sampled_from(ALL_KEYS), number=st.one_of(st.integers(-(10**6), 10**6), st.floats(allow_nan=True)))
def test_a_value_loads_exactly_when_its_declared_range_holds(entry, number):
    root, cls, key, name, hint = entry
    if (hint is int or int in typing.get_args(hint)) and float not in typing.get_args(hint):
        number = int(number) if isinstance(number, float) and math.isfinite(number) else number
    allowed = cls.RANGES[name]
    expected_ok = (isinstance(number, int) or math.isfinite(number)) and allowed.contains(number)
    if isinstance(number, float) and (hint is int or typing.get_args(hint) and float not in typing.get_args(hint)):
        expected_ok = False  # an integer key does not take a float
    try:
        load_config(root, values={key: _value_for(hint, number)})
    except ConfigError as err:
        assert key in str(err), err
        ok = False
    else:
        ok = True
    if ok != expected_ok:  # some keys add rules of their own (ordered pairs): only acceptance must hold
        assert not ok, f"{key}={number!r} was accepted outside {allowed}"


@pytest.mark.parametrize(
    "override, message",
    [
        ("loss.init_temperature=0", "more than 0"),
        ("loss.max_logit_scale=-1", "more than 0"),
        ("data.augment.eval_resize_ratio=0", r"in \(0, 1\]"),
        ("optim.betas=[0.9, 1.5]", r"in \[0, 1\)"),
        ("data.augment.crop_scale=[0.9, 0.5]", "must not exceed"),
        ("optim.lr=.nan", "finite"),
    ],
)
def test_values_that_fail_inside_workers_are_refused_at_load(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(ClipRunConfig, overrides=[override])


def test_the_readme_cluster_override_with_a_brace_pattern_loads():
    cfg = load_config(
        ClipRunConfig, overrides=["data.train_shards=[s3://my-bucket/laion/train-{00000..00999}.tar, s3://b/{a,b}.tar]"]
    )
    assert cfg.data.train_shards == ["s3://my-bucket/laion/train-{00000..00999}.tar", "s3://b/{a,b}.tar"]


def test_yaml_errors_name_the_file_or_override_and_how_to_quote(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lr: [1e-3\n")
    with pytest.raises(ConfigError, match=f"{bad} line .*not valid YAML.*needs quotes"):
        load_config(ClipRunConfig, bad)
    with pytest.raises(ConfigError, match="--set loop.max_steps=\\{: .*quote it"):
        parse_override_value("loop.max_steps", "{")
    (tmp_path / "latin1.yaml").write_bytes(b"run:\n  name: caf\xe9\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(ClipRunConfig, tmp_path / "latin1.yaml")
