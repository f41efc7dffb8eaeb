"""Sweep presets and helpers without Ray: search-space checks, concurrency, the trial table."""

from pathlib import Path

import pytest

from mmtrain.training.config.io import ConfigError, load_config
from mmtrain.training.config.schema import SweepConfig
from mmtrain.training.ray_train.sweep import (
    check_search_space,
    concurrency,
    format_table,
    num_trials,
    resolve_base_config,
    search_space,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("preset", ["clip_temperature", "vlm_projector"])
def test_presets_load_and_fit_their_trainer(preset):
    sweep = load_config(SweepConfig, REPO / f"conf/sweep/{preset}.yaml")
    check_search_space(sweep, resolve_base_config(sweep.base_config))  # every value fits the base config
    assert set(search_space(sweep.search_space)) == set(sweep.search_space)


def test_clip_preset_covers_what_the_issue_names():
    sweep = load_config(SweepConfig, REPO / "conf/sweep/clip_temperature.yaml")
    assert {"loss.init_temperature", "loss.learnable_temperature", "optim.lr", "loss.kind"} <= set(sweep.search_space)
    assert sweep.search_space["loss.kind"]["choice"] == ["infonce", "siglip"]


def test_unknown_key_in_search_space_names_it():
    sweep = load_config(
        SweepConfig, REPO / "conf/sweep/clip_temperature.yaml", ["search_space={loss.init_temprature: {choice: [0.1]}}"]
    )
    with pytest.raises(ConfigError, match=r"search_space.loss.init_temprature.*did you mean 'loss.init_temperature'"):
        check_search_space(sweep, resolve_base_config(sweep.base_config))


def test_wrong_value_type_and_bad_sampler_are_errors():
    base = resolve_base_config("conf/clip/tiny.yaml")
    with pytest.raises(ConfigError, match="loss.kind"):
        check_search_space(SweepConfig(base_config=str(base), search_space={"loss.kind": {"choice": ["nce"]}}), base)
    with pytest.raises(ConfigError, match="must be one of"):
        search_space({"optim.lr": {"normal": [0, 1]}})
    with pytest.raises(ConfigError, match="low < high"):
        search_space({"optim.lr": {"loguniform": [1e-2, 1e-4]}})
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_base_config("conf/clip/nope.yaml")
    assert resolve_base_config("clip/tiny") == base  # a preset name, as --config takes it


def test_a_metric_by_its_old_name_or_no_prefix_says_what_it_is_called():
    preset = REPO / "conf/sweep/clip_temperature.yaml"
    with pytest.raises(ConfigError, match=r"metric='eval/zero_shot_top1' is not a reported metric"):
        load_config(SweepConfig, preset, ["metric=eval/zero_shot_top1"])
    with pytest.raises(
        ConfigError, match=r"metric='loss' is not a reported metric: use train/<name> \(e.g. train/loss\)"
    ):
        load_config(SweepConfig, preset, ["metric=loss"])
    assert load_config(SweepConfig, preset, ["metric=val/loss", "mode=min"]).metric == "val/loss"


def test_yaml_exponent_strings_become_numbers():
    domain = search_space({"optim.lr": {"loguniform": ["1e-4", "1e-2"]}})["optim.lr"]
    assert 1e-4 <= domain.sample() <= 1e-2


def test_concurrency_follows_free_resources():
    per_trial = {"CPU": 3.1}
    assert concurrency({"CPU": 6.0}, per_trial, trials=8, configured=0) == 1
    assert concurrency({"CPU": 16.0}, per_trial, trials=8, configured=0) == 5
    assert concurrency({"CPU": 64.0}, per_trial, trials=3, configured=0) == 3  # never more than trials
    assert concurrency({"CPU": 1.0}, per_trial, trials=3, configured=0) == 1  # always at least one
    assert concurrency({"CPU": 64.0, "GPU": 2.0}, {"CPU": 4.0, "GPU": 1.0}, trials=8, configured=0) == 2
    assert concurrency({"CPU": 64.0}, per_trial, trials=8, configured=2) == 2


def test_grid_multiplies_trials_and_table_orders_best_first():
    sweep = SweepConfig(num_samples=2, search_space={"a": {"grid": [1, 2, 3]}, "b": {"choice": [1]}})
    assert num_trials(sweep) == 6
    summary = {
        "metric": "m",
        "mode": "min",
        "trials": [
            {"trial_id": "t1", "status": "COMPLETED", "step": 20, "metric": 0.5, "params": {"a": 1}},
            {"trial_id": "t2", "status": "STOPPED EARLY", "step": 10, "metric": 0.2, "params": {"a": 2}},
            {"trial_id": "t3", "status": "ERROR", "step": 0, "metric": None, "params": {"a": 3}},
        ],
    }
    lines = format_table(summary).splitlines()
    assert lines[0].split()[:4] == ["trial", "status", "step", "m"]
    assert [line.split()[0] for line in lines[1:]] == ["t2", "t1", "t3"]


def test_sweep_without_tracking_is_refused_before_ray_starts(tmp_path):
    import ray

    from mmtrain.training.ray_train.sweep import run_sweep

    sweep = load_config(
        SweepConfig, REPO / "conf/sweep/clip_temperature.yaml", ["tracking_uri=none", f"output_dir={tmp_path}"]
    )
    ray_was_up = ray.is_initialized()  # other tests in the session may have started it
    with pytest.raises(ValueError, match="records its trials in MLflow"):
        run_sweep(sweep)
    assert ray.is_initialized() == ray_was_up and not any(tmp_path.iterdir())
