"""requirements.lock pins what pyproject.toml asks for, and `make test` notices when they part."""
from __future__ import annotations

import importlib.util
import re
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("lock_script", ROOT / "scripts" / "lock.py")
lock = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lock)


def _name(req: str) -> str:
    return re.split(r"[\[<>=!~ ;]", req, maxsplit=1)[0].lower().replace("_", "-")


def test_the_committed_lock_matches_pyproject():
    assert lock.check() is None


def test_a_dependency_changed_without_make_lock_fails_the_check(tmp_path):
    shutil.copy(lock.LOCK, tmp_path / "requirements.lock")
    text = lock.PYPROJECT.read_text()
    changed = text.replace('"numpy>=1.24"', '"numpy>=1.26"')
    assert changed != text
    (tmp_path / "pyproject.toml").write_text(changed)
    problem = lock.check(tmp_path / "requirements.lock", tmp_path / "pyproject.toml")
    assert problem is not None and "make lock" in problem and "input hash" in problem
    assert lock.main(["--check"]) == 0  # the real pair still agrees
    (tmp_path / "requirements.lock").unlink()
    assert "missing" in lock.check(tmp_path / "requirements.lock", tmp_path / "pyproject.toml")


def test_every_declared_dependency_is_pinned_exactly():
    doc = lock.tomllib.loads(lock.PYPROJECT.read_text())["project"]
    declared = {_name(r) for r in doc["dependencies"]}
    declared |= {_name(r) for e in lock.EXTRAS for r in doc["optional-dependencies"][e]}
    pins = {}
    for line in lock.LOCK.read_text().splitlines():
        if line and not line.startswith((" ", "#")):
            name, _, ver = line.partition("==")
            assert ver, f"requirements.lock: {line!r} is not pinned with =="
            pins[name.lower().replace("_", "-")] = ver
    assert declared - set(pins) == set()
    assert pins["torch"].endswith("+cpu")  # the CPU build, from the index pyproject declares


def test_setup_installs_the_lock_and_then_the_project_without_dependencies():
    setup = (ROOT / "scripts" / "setup_venv.sh").read_text()
    assert 'pip install -q -r "$lock"' in setup and "lock=requirements.lock" in setup
    assert "pip install -q --no-deps -e ." in setup
    assert 'url = "https://download.pytorch.org/whl/cpu"' in lock.PYPROJECT.read_text()
