"""`mmtrain config show PRESET`: the resolved run config, every key with its default and help."""

from __future__ import annotations


def add_parsers(subparsers) -> None:
    config = subparsers.add_parser("config", help="show a preset as the trainer resolves it")
    commands = config.add_subparsers(dest="config_command", required=True)
    show = commands.add_parser("show", help="every key of a run config: value, default, help text")
    show.add_argument("preset", help="a YAML file, or a preset under the project's conf/: clip/tiny, vlm/stage1, ...")
    show.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key (repeatable)")
    show.add_argument("--trainer", choices=["clip", "vlm"], help="which trainer reads it (default: told by its keys)")
    show.set_defaults(handler=run_show)


def run_show(args) -> int:
    import yaml

    from training.config.help import describe, resolve_preset
    from training.tasks.kinds import load_run_config, run_kind

    path = resolve_preset(args.preset)
    kind = args.trainer or run_kind(yaml.safe_load(path.read_text()) or {})
    if kind is None:
        raise ValueError(f"{path} sets no key that only one trainer has: say which with --trainer clip|vlm")
    cfg = load_run_config(kind, path, args.set)
    print(
        f"# {path} for `mmtrain train {kind}`: values as the run starts from them (paths and sizes the "
        "data decides are filled in when it starts); override any with --set key=value"
    )
    print("\n".join(describe(cfg)))
    return 0
