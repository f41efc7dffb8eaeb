"""The layering and the style are checked with every test run: import-linter's contracts
(pyproject.toml: which layer may import which, and where Ray and MLflow may appear), ruff's lint
and ruff's format."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.mark.parametrize(
    "command",
    [["lint-imports"], ["ruff", "check", "."], ["ruff", "format", "--check", "."]],
    ids=["import-linter", "ruff-check", "ruff-format"],
)
def test_the_code_keeps_its_layers_and_style(command):
    result = subprocess.run(
        [str(BIN / command[0]), *command[1:]], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
