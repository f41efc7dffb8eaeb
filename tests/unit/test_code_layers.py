"""The layering and the style are checked with every test run: import-linter's contracts
(pyproject.toml: which layer may import which, and where Ray and MLflow may appear), ruff's lint
and ruff's format.

import-linter reads a package from the folder it is in, and mmtrain's subpackages are the
repository's top-level folders (mapped under `mmtrain` by pyproject.toml): it reads them through
a folder of links shaped like the installed package."""

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
def test_the_code_keeps_its_layers_and_style(command, tmp_path):
    cwd = REPO
    if command == ["lint-imports"]:
        cwd = installed_layout(tmp_path)
        command = [*command, str(REPO / "pyproject.toml")]
    result = subprocess.run([str(BIN / command[0]), *command[1:]], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def installed_layout(root: Path) -> Path:
    package = root / "mmtrain"
    package.mkdir()
    for module in (REPO / "mmtrain").glob("*.py"):
        (package / module.name).symlink_to(module)
    for folder in ("pipelines", "evaluation", "training", "inference", "jobs"):
        (package / folder).symlink_to(REPO / folder, target_is_directory=True)
    return root
