"""One CLI vocabulary: the cluster address is --ray-address (falling back to the environment as Ray's
own commands do), the version is one flag away."""

import pytest

from mmtrain.jobs.cli import build_parser


def test_submit_takes_ray_address_and_falls_back_to_the_environment(monkeypatch):
    parser = build_parser()
    args = parser.parse_args(["job", "list", "--ray-address", "http://head:8265"])
    assert args.address == "http://head:8265"
    assert parser.parse_args(["job", "list", "--address", "http://old:8265"]).address == "http://old:8265"
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "http://from-env:8265")
    assert build_parser().parse_args(["job", "list"]).address == "http://from-env:8265"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # a GCS address is no Jobs API address
    assert build_parser().parse_args(["job", "list"]).address == "http://127.0.0.1:8265"


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.startswith("mmtrain ")


# The words each concept goes by, and those it once went by beside them.
ONE_NAME = {"--data": ("--shards", "--dataset"), "--out": ("--sheet", "--output", "--out-dir")}


def every_command():
    import argparse

    from mmtrain.jobs.cli import commands

    for words, parser in commands(build_parser()):
        options = [action for action in parser._actions if not isinstance(action, argparse._HelpAction)]
        yield words, parser, options


def test_every_option_has_help_and_shows_its_default_and_every_command_an_example_that_parses():
    import shlex

    checked = 0
    for words, parser, options in every_command():
        for action in options:
            name = "/".join(action.option_strings) or action.dest
            assert action.help, f"`mmtrain {words}` {name} has no help"
            shown = parser.formatter_class("mmtrain")._get_help_string(action)
            default = action.default
            silent_default = default is None or default is False or default in ([], "") or action.required
            assert silent_default or "default" in shown, f"`mmtrain {words}` {name} hides its default"
            checked += 1
        example = shlex.split(parser.epilog.removeprefix("example:\n"))
        assert example[0] == "mmtrain" and " ".join(example[1:]).startswith(words), (words, example)
        example = example[: example.index(">")] if ">" in example else example
        parsed = build_parser().parse_args(example[1:])  # a stale example fails here
        assert parsed.handler is not None
    assert checked > 100


def test_one_name_per_concept_in_every_command():
    for words, _parser, options in every_command():
        names = {name for action in options for name in action.option_strings}
        for name, others in ONE_NAME.items():
            assert not names & set(others), f"`mmtrain {words}` says {names & set(others)} for {name}"
        positional = [action.dest for action in options if not action.option_strings]
        assert not {"out_dir", "shards", "checkpoint"} & set(positional), (words, positional)
        for action in options:
            if action.metavar == "SHARDS":  # shards read: --data (training's two splits say which)
                assert action.option_strings[0] in ("--data", "--train-data", "--val-data"), (words, action)
            if action.metavar == "RUN":
                assert action.option_strings == ["--checkpoint"], (words, action)


def test_global_flags_go_anywhere_but_after_the_submitted_command():
    from mmtrain.jobs.cli import hoist_global_flags

    parsed = build_parser().parse_args(hoist_global_flags(["config", "show", "clip/tiny", "--verbose"]))
    assert parsed.verbose and parsed.preset == "clip/tiny"
    sent = hoist_global_flags(["submit", "--", "train", "clip", "--verbose"])
    assert build_parser().parse_args(sent).mmtrain_args == ["--", "train", "clip", "--verbose"]


def test_train_shorthands_set_the_shard_keys_and_resume(tmp_path):
    from mmtrain.jobs.train import command_overrides
    from mmtrain.training.tasks.kinds import load_run_config

    args = build_parser().parse_args(
        ["train", "clip", "--config", "clip/tiny", "--train-data", "a/train-*.tar", "b/", "--val-data", "v/"]
        + ["--resume", "--ray-address", "auto"]
    )
    cfg = load_run_config("clip", args.config, command_overrides(args))
    assert cfg.data.train_shards == ["a/train-*.tar", "b/"] and cfg.data.eval_shards == ["v/"]
    assert cfg.run.resume == "must" and cfg.run.ray_address == "auto"


def test_json_output_is_json_alone_on_stdout(tmp_path, capsys):
    """`data inspect --json` on real shards: stdout parses as JSON."""
    import json

    from mmtrain.jobs.cli import main
    from mmtrain.pipelines.synth import write_synth

    write_synth(tmp_path, num_train=8, num_val=0, image_size=16, shard_size=8)
    assert main(["data", "inspect", "--data", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total"]["good"] == 8
