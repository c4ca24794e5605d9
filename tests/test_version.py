"""The version a user sees: ``orchestrator.__version__`` is the installed package's, and the
changelog has an entry for ``pyproject.toml``'s version."""
from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

import orchestrator

ROOT = Path(__file__).resolve().parents[1]


def test_version_is_the_installed_packages():
    assert orchestrator.__version__ == version("distillray")
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", orchestrator.__version__)


def test_changelog_has_an_entry_for_the_projects_version():
    v = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    heads = re.findall(r"^## (\S+)", (ROOT / "CHANGELOG.md").read_text(), flags=re.M)
    assert heads and heads[0] == v, f"CHANGELOG.md's newest entry is {heads[:1]}, pyproject says {v}"
