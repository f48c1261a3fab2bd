"""The import contracts of pyproject.toml ([tool.importlinter]): the layers from the CLI down to the IR, and model
kinds that do not import each other. CI runs them here (and `make lint` runs lint-imports)."""

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def lint(config: Path, cwd: Path, extra_path: Path) -> int:
    """Returns lint-imports' exit code for a config, run from `cwd` with `extra_path` importable."""
    from importlinter.cli import lint_imports
    old_cwd, old_path = Path.cwd(), list(sys.path)
    os.chdir(cwd)
    sys.path.insert(0, str(extra_path))
    try:
        return lint_imports(config_filename=str(config), no_cache=True, no_logo=True)
    finally:
        os.chdir(old_cwd)
        sys.path[:] = old_path


def test_the_import_contracts_hold():
    pytest.importorskip("importlinter")
    assert lint(REPO / "pyproject.toml", REPO, REPO / "src") == 0


def test_a_lower_layer_importing_a_higher_one_breaks_the_contract(tmp_path):
    """The checker is live: the same kind of contract fails on a package whose low layer imports its high one."""
    pytest.importorskip("importlinter")
    package = tmp_path / "src" / "toy_layers"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "high.py").write_text("")
    (package / "low.py").write_text("from toy_layers import high\n")
    config = tmp_path / "contracts.toml"
    config.write_text('[tool.importlinter]\nroot_package = "toy_layers"\n\n[[tool.importlinter.contracts]]\n'
                      'id = "layers"\nname = "toy"\ntype = "layers"\nlayers = ["toy_layers.high", "toy_layers.low"]\n')
    assert lint(config, tmp_path, tmp_path / "src") == 1
    (package / "low.py").write_text("")
    assert lint(config, tmp_path, tmp_path / "src") == 0
