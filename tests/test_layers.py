"""The package layering in pyproject.toml's ``[tool.importlinter]`` holds.

import-linter reads every import, including those inside functions and under ``TYPE_CHECKING``, so a
module cannot reach a layer above it by hiding the import. When this fails, the output names the
chain of imports that breaks a contract: move the code to the room it belongs in.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_import_contracts_are_kept() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports; "
                               "sys.exit(lint_imports(no_cache=True, no_logo=True))"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_the_contracts_name_every_package() -> None:
    """A new package has to be given a place in the layers, or it escapes every contract."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c for c in config["contracts"] if c["type"] == "layers")["layers"]
    placed = {name.strip() for line in layers for name in line.split("|")}
    packages = {p.stem if p.is_file() else p.name for p in (ROOT / "localllm").iterdir()
                if (p.suffix == ".py" and p.stem not in {"__init__", "__main__"})
                or (p.is_dir() and (p / "__init__.py").exists())}
    assert packages - placed == set(), "not in any layer"
