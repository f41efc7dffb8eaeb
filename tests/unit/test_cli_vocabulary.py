"""One CLI vocabulary: the cluster address is --ray-address (falling back to the environment as Ray's
own commands do), the version is one flag away."""

import pytest

from jobs.cli import build_parser


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
