from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mmtrain.pipelines.config import DataConfig
from mmtrain.training.config.io import ConfigError, from_dict, load_config


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
    cfg = load_config(
        DataConfig, path, ["augment.image_size=48", "max_bad_fraction=0.5", "augment.crop_scale=[0.2, 1.0]"]
    )
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


@pytest.mark.parametrize(
    "override, message",
    [
        ("loop.batch_size_per_worker=0", "loop.batch_size_per_worker=0: must be at least 1"),
        ("loop.max_steps=-5", "loop.max_steps=-5: must be at least 1"),
        ("optim.lr=-0.001", "optim.lr=-0.001: must be at least 0"),
        ("scaling.num_workers=0", "scaling.num_workers=0: must be at least 1"),
        ("optim.grad_accum_steps=0", "optim.grad_accum_steps=0: must be at least 1"),
        ("data.cpus_per_worker=0", "data.cpus_per_worker=0.0: must be more than 0"),
    ],
)
def test_values_that_cannot_work_are_refused_at_load_with_the_key(override, message):
    from pathlib import Path

    from mmtrain.training.config.schema import ClipRunConfig

    preset = Path(__file__).resolve().parents[2] / "conf/clip/tiny.yaml"
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config(ClipRunConfig, preset, [override])


def test_module_learning_rates_may_not_be_negative():
    from mmtrain.training.config.schema import VlmRunConfig

    with pytest.raises(ConfigError, match=r"lrs\.lm=-1\.0: must be at least 0"):
        from_dict(VlmRunConfig, {"lrs": {"lm": -1.0}})


def test_a_preset_or_checkpoint_of_the_other_trainer_names_the_command_that_takes_it(tmp_path, capsys):
    import torch

    from mmtrain.jobs.cli import main
    from mmtrain.training.checkpoint.store import save_checkpoint
    from mmtrain.training.config.io import to_dict
    from mmtrain.training.config.schema import VlmRunConfig
    from mmtrain.training.engine.loop import TrainState

    repo = Path(__file__).resolve().parents[2]
    assert main(["train", "clip", "--config", str(repo / "conf/vlm/stage1.yaml")]) == 2
    assert (
        f"belongs to the VLM trainer (it has `stage`), and `mmtrain train clip` takes a CLIP one: use "
        f"`mmtrain train vlm --config {repo / 'conf/vlm/stage1.yaml'}`"
    ) in capsys.readouterr().err
    assert main(["train", "vlm", "--config", str(repo / "conf/clip/tiny.yaml")]) == 2  # no `loss` key in it
    assert "belongs to the CLIP trainer (it has `model.embed_dim`)" in capsys.readouterr().err
    checkpoint = save_checkpoint(
        tmp_path / "checkpoint_000001", torch.nn.Linear(2, 2), None, TrainState(), to_dict(VlmRunConfig())
    )
    assert main(["eval", "clip", "--checkpoint", str(tmp_path), "--data", str(tmp_path)]) == 2
    assert f"use `mmtrain eval vlm --checkpoint {checkpoint} --data ...`" in capsys.readouterr().err


def test_config_show_prints_every_key_with_default_and_help_from_any_directory(tmp_path, monkeypatch, capsys):
    from mmtrain.jobs.cli import main

    monkeypatch.chdir(tmp_path)  # presets resolve under the project's conf/, not the working directory
    assert main(["config", "show", "clip/tiny", "--set", "loop.max_steps=7"]) == 0
    shown = capsys.readouterr().out
    assert "  name: clip-tiny  # the run's directory under output_dir, and its MLflow run name [default: clip]" in shown
    assert "  max_steps: 7  # [default: 200]" in shown
    assert "  read_shuffle_buffer: 512  # samples each read task holds" in shown
    assert main(["config", "show", "vlm/stage1"]) == 0
    shown = capsys.readouterr().out
    assert "stage: captions" in shown and "its MLflow run name [default: vlm]" in shown  # the VLM's own
    assert main(["config", "show", "vlm/llava15_stage2"]) == 0  # a mixture: sections inside a list
    (tmp_path / "shown.yaml").write_text(capsys.readouterr().out)
    from mmtrain.training.config.io import load_config
    from mmtrain.training.config.schema import VlmRunConfig

    assert load_config(VlmRunConfig, tmp_path / "shown.yaml").data.sources[0].name == "llava665k"
    assert main(["train", "clip", "--config", "clip/nope"]) == 2
    assert "does not exist here or under" in capsys.readouterr().err


@pytest.mark.parametrize("spec", ["{tmp}/no-such-dir", "{tmp}/trian-*.tar"])
def test_missing_shards_are_named_before_ray_starts(tmp_path, capsys, monkeypatch, spec):
    """A shard directory that does not exist (it once reported a missing tokenizer) or a mistyped
    glob (it once started Ray first): the shards are named, and Ray is never started."""
    from mmtrain.jobs.cli import main
    from mmtrain.training.ray_train import driver

    ray_starts = []
    monkeypatch.setattr(driver, "ensure_ray", lambda *args: ray_starts.append(args))
    shards = spec.format(tmp=tmp_path)
    assert (
        main(
            [
                "train",
                "clip",
                "--config",
                "clip/tiny",
                "--set",
                f"data.train_shards=[{shards}]",
                "--set",
                "tracking.tracking_uri=none",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert f"shard spec '{shards}' matched no shards" in err and "tokenizer" not in err
    assert ray_starts == []


def test_a_key_the_trainer_ignores_is_refused_with_what_to_set_and_not_shown(capsys):
    """The VLM learns at lrs.*, so optim.lr would be a silent no-op; the fused pipeline reads no
    tokenize_* key. Set, they are refused naming what to set; `config show` leaves them out."""
    from mmtrain.jobs.cli import main

    assert main(["config", "show", "vlm/stage1", "--set", "optim.lr=1e-3"]) == 2
    assert "optim.lr=0.001 does nothing for this trainer; set lrs.projector" in capsys.readouterr().err
    assert main(["config", "show", "clip/tiny", "--set", "data.tokenize_actors=2"]) == 2
    assert "data.tokenize_actors=2 does nothing" in capsys.readouterr().err
    assert main(["config", "show", "vlm/stage1"]) == 0
    shown = capsys.readouterr().out
    assert "  lr:" not in shown and "tokenize_actors" not in shown and "warmup_steps" in shown
    assert main(["config", "show", "clip/tiny"]) == 0 and "  lr:" in capsys.readouterr().out


def test_config_show_prints_every_preset_sweeps_included_as_a_config_that_loads_back(tmp_path, capsys):
    from mmtrain.jobs.cli import main
    from mmtrain.training.config.io import load_config
    from mmtrain.training.config.schema import SweepConfig
    from mmtrain.training.tasks.kinds import load_run_config

    repo = Path(__file__).resolve().parents[2]
    presets = sorted(p for p in repo.glob("conf/*/*.yaml") if p.parent.name != "eval")  # eval: benchmarks
    assert len(presets) >= 14 and any(p.parent.name == "sweep" for p in presets)
    for preset in presets:
        name = f"{preset.parent.name}/{preset.stem}"
        assert main(["config", "show", name]) == 0, name
        shown = capsys.readouterr().out
        (tmp_path / "shown.yaml").write_text(shown)
        if preset.parent.name == "sweep":
            assert load_config(SweepConfig, tmp_path / "shown.yaml") == load_config(SweepConfig, preset), name
        else:
            kind = "vlm" if preset.parent.name == "vlm" else "clip"
            again = load_run_config(kind, tmp_path / "shown.yaml")
            assert again == load_run_config(kind, preset), name
