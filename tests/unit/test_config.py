from dataclasses import dataclass, field

import pytest

from training.config_io import ConfigError, from_dict, load_config
from pipelines.config import DataConfig


@dataclass(frozen=True)
class Inner:
    width: int = 8
    rate: float = 0.1


@dataclass(frozen=True)
class Outer:
    name: str = "x"
    inner: Inner = field(default_factory=Inner)
    sizes: tuple[float, float] = (0.5, 1.0)


def test_nested_build_and_defaults():
    cfg = from_dict(Outer, {"inner": {"width": 16}, "sizes": [0.1, 0.9]})
    assert cfg.inner == Inner(width=16, rate=0.1)
    assert cfg.sizes == (0.1, 0.9)


def test_unknown_key_names_full_path_and_closest_key():
    with pytest.raises(ConfigError) as err:
        from_dict(Outer, {"inner": {"widht": 16}})
    assert "'inner.widht'" in str(err.value)
    assert "did you mean 'inner.width'" in str(err.value)


def test_wrong_type_is_an_error():
    with pytest.raises(ConfigError, match="inner.width must be an integer"):
        from_dict(Outer, {"inner": {"width": "wide"}})


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train_shards: [a/]\naugment:\n  image_size: 32\n")
    cfg = load_config(DataConfig, path, ["augment.image_size=48", "max_bad_fraction=0.5",
                                         "augment.crop_scale=[0.2, 1.0]"])
    assert cfg.train_shards == ["a/"]
    assert cfg.augment.image_size == 48
    assert cfg.max_bad_fraction == 0.5
    assert cfg.augment.crop_scale == (0.2, 1.0)
    with pytest.raises(ConfigError, match="augment.image_sise"):
        load_config(DataConfig, path, ["augment.image_sise=3"])


def test_frozen():
    cfg = DataConfig()
    with pytest.raises(Exception):
        cfg.context_length = 3


@pytest.mark.parametrize("override, message", [
    ("loop.batch_size_per_worker=0", "loop.batch_size_per_worker=0: must be at least 1"),
    ("loop.max_steps=-5", "loop.max_steps=-5: must be at least 1"),
    ("optim.lr=-0.001", "optim.lr=-0.001: must be at least 0"),
    ("scaling.num_workers=0", "scaling.num_workers=0: must be at least 1"),
    ("optim.grad_accum_steps=0", "optim.grad_accum_steps=0: must be at least 1"),
    ("data.cpus_per_worker=0", "data.cpus_per_worker=0.0: must be more than 0"),
])
def test_values_that_cannot_work_are_refused_at_load_with_the_key(override, message):
    from pathlib import Path

    from training.config import ClipRunConfig

    preset = Path(__file__).resolve().parents[2] / "conf/clip/tiny.yaml"
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config(ClipRunConfig, preset, [override])


def test_module_learning_rates_may_not_be_negative():
    from training.config import VlmRunConfig

    with pytest.raises(ConfigError, match=r"lrs\.lm=-1\.0: must be at least 0"):
        from_dict(VlmRunConfig, {"lrs": {"lm": -1.0}})
