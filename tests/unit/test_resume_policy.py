"""Explicit resume: a run whose directory holds checkpoints continues only when asked (`--resume`,
run.resume=must|auto); otherwise mmtrain refuses, before Ray starts, with the two commands that work."""

import shlex

import pytest
import torch

from mmtrain.jobs.cli import main
from mmtrain.training.checkpoint.store import checkpoint_name, save_checkpoint
from mmtrain.training.config.io import to_dict
from mmtrain.training.engine.loop import TrainState
from mmtrain.training.ray_train import driver
from mmtrain.training.tasks.kinds import load_run_config


class RayWouldStart(Exception):
    pass


@pytest.fixture
def run_with_a_checkpoint(tmp_path, synth_dir, monkeypatch):
    """`train clip` arguments for a run named `r` whose directory holds a step-5 checkpoint."""

    def refuse_ray(*args):
        raise RayWouldStart

    monkeypatch.setattr(driver, "ensure_ray", refuse_ray)
    sets = [f"run.output_dir={tmp_path}", "run.name=r", f"data.train_shards=[{synth_dir}/train-*.tar]"]
    sets += ["data.eval_shards=[]", "loop.max_steps=8"]
    cfg = load_run_config("clip", "clip/tiny", sets)
    cfg, _ = driver.trainer_of(cfg).resolve(cfg, driver.list_shards(cfg.data))  # as the run saved it
    save_checkpoint(tmp_path / "r" / checkpoint_name(5), torch.nn.Linear(2, 2), None, TrainState(step=5), to_dict(cfg))
    args = ["train", "clip", "--config", "clip/tiny"]
    for item in sets:
        args += ["--set", item]
    return args


def test_the_same_run_again_is_refused_with_the_two_commands_that_work(run_with_a_checkpoint, capsys):
    assert main(run_with_a_checkpoint) == 2
    error = capsys.readouterr().err
    assert "run 'r' already has checkpoints" in error and "(the latest at step 5)" in error
    command = shlex.join(["mmtrain", *run_with_a_checkpoint])
    assert f"to continue it:   {command} --resume" in error
    assert f"to start afresh:  {command} --set run.name=r-2" in error


def test_resume_continues_and_refuses_a_finished_run_or_nothing(run_with_a_checkpoint, capsys):
    with pytest.raises(RayWouldStart):  # past every check: Ray is the next thing to start
        main(run_with_a_checkpoint + ["--resume"])
    assert "[mmtrain] r continues from" in capsys.readouterr().out
    assert main(run_with_a_checkpoint + ["--resume", "--set", "loop.max_steps=5"]) == 2
    assert "run 'r' finished: its latest checkpoint is at step 5 and loop.max_steps is 5" in capsys.readouterr().err
    assert main(run_with_a_checkpoint + ["--resume", "--set", "run.name=other"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    with pytest.raises(RayWouldStart):  # auto: continue when there is something to continue
        main(run_with_a_checkpoint + ["--set", "run.resume=auto"])
