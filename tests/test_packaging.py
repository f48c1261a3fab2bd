"""The Python floor: the sidecar reader needs tomllib (standard library from 3.11), so nothing older installs."""

import tomllib
from importlib.metadata import metadata

from packaging.specifiers import SpecifierSet

from conftest import REPO


def declared() -> SpecifierSet:
    return SpecifierSet(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"])


def test_requires_python_admits_no_version_without_tomllib():
    spec = declared()
    assert not [v for minor in range(11) for v in (f"3.{minor}.0", f"3.{minor}.99") if spec.contains(v)]
    assert spec.contains("3.11.0") and spec.contains("3.13.2")


def test_installed_metadata_says_the_same():
    assert SpecifierSet(metadata("lrp-cli")["Requires-Python"]) == declared()
