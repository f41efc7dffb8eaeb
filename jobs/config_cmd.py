"""`mmtrain config show PRESET`: the resolved run config, every key with its default and help."""

from __future__ import annotations

from mmtrain.jobs.options import add_set


def add_parsers(subparsers) -> None:
    config = subparsers.add_parser("config", help="show a preset as the trainer resolves it")
    commands = config.add_subparsers(dest="config_command", required=True)
    show = commands.add_parser("show", help="every key of a run config: value, default, help text")
    show.add_argument(
        "preset", help="a YAML file, or a preset under the project's conf/: clip/tiny, vlm/stage1, sweep/..."
    )
    add_set(show, "override a key (repeatable)")
    show.add_argument("--trainer", choices=["clip", "vlm", "sweep"], help="what reads it (default: told by its keys)")
    show.set_defaults(handler=run_show)


def run_show(args) -> int:
    import yaml

    from mmtrain.training.config.help import describe, resolve_preset
    from mmtrain.training.config.io import load_config
    from mmtrain.training.config.schema import SweepConfig
    from mmtrain.training.tasks.kinds import load_run_config, run_kind

    path = resolve_preset(args.preset)
    data = yaml.safe_load(path.read_text()) or {}
    kind = args.trainer or ("sweep" if isinstance(data, dict) and "search_space" in data else run_kind(data))
    if kind is None:
        raise ValueError(f"{path} sets no key that only one trainer has: say which with --trainer clip|vlm")
    if kind == "sweep":
        cfg, command = load_config(SweepConfig, path, args.set), "mmtrain sweep"
    else:
        cfg, command = load_run_config(kind, path, args.set), f"mmtrain train {kind}"
    print(
        f"# {path} for `{command}`: values as the run starts from them (paths and sizes the data decides "
        "are filled in when it starts); override any with --set key=value. This output loads back as a "
        "config: save it and pass it to --config."
    )
    print("\n".join(describe(cfg)))
    return 0
