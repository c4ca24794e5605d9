"""requirements.lock: every package of `pip install -e ".[dev]"` pinned, for `make venv` and CI.

    python scripts/lock.py           # `make lock`: resolve pyproject.toml again with uv, write it
    python scripts/lock.py --check   # `make test`: fail when pyproject.toml changed since

The lock's first lines hold a hash of what it was resolved from (pyproject.toml's Python
requirement, dependencies, extras and uv's index settings): `--check` recomputes it, so a
dependency added, dropped or re-floored without `make lock` fails CI.

torch comes from PyTorch's CPU index, declared in pyproject.toml ([tool.uv.index]). Where that
index cannot be reached, the lock keeps its torch pin and resolves the rest from the package
index and pip's find-links (a local CPU wheel), as the machine's pip is set up to.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the copy pip vendors
    from pip._vendor import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
LOCK = ROOT / "requirements.lock"
EXTRAS = ("dev",)
HASH_LINE = "# input-hash: "


def input_hash(pyproject: Path = PYPROJECT) -> str:
    """sha256 of the parts of pyproject.toml that decide the lock, as canonical JSON."""
    doc = tomllib.loads(pyproject.read_text())
    project, uv = doc["project"], doc.get("tool", {}).get("uv", {})
    data = {"requires-python": project.get("requires-python"),
            "dependencies": project.get("dependencies", []),
            "optional-dependencies": project.get("optional-dependencies", {}),
            "extras": list(EXTRAS), "uv": uv}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def locked_hash(lock: Path = LOCK) -> str | None:
    if not lock.is_file():
        return None
    for line in lock.read_text().splitlines():
        if line.startswith(HASH_LINE):
            return line[len(HASH_LINE):].strip()
    return None


def check(lock: Path = LOCK, pyproject: Path = PYPROJECT) -> str | None:
    """None when the lock was resolved from this pyproject.toml, else what is wrong."""
    if not lock.is_file():
        return f"{lock.name} is missing: run `make lock`"
    have, want = locked_hash(lock), input_hash(pyproject)
    if have != want:
        return (f"{lock.name} was resolved from another pyproject.toml (input hash {have}, "
                f"pyproject.toml's is {want}): run `make lock` and commit {lock.name}")
    return None


def _uv() -> str:
    for c in (Path(sys.executable).parent / "uv", ROOT / ".venv" / "bin" / "uv"):
        if c.is_file():
            return str(c)
    found = shutil.which("uv")
    if not found:
        sys.exit("uv is not installed: `make venv` installs it (the dev extra), or pip install uv")
    return found


def _reachable(url: str) -> bool:
    try:
        urllib.request.urlopen(url.rstrip("/") + "/torch/", timeout=10).close()
        return True
    except OSError:
        return False


def _torch_pin() -> str | None:
    """The lock's torch pin; without a lock, the CPU torch installed here, if any."""
    if LOCK.is_file():
        return next((ln.split()[0] for ln in LOCK.read_text().splitlines()
                     if ln.startswith("torch==")), None)
    try:
        from importlib.metadata import version

        v = version("torch")
    except Exception:  # noqa: BLE001 - no torch here: nothing to keep
        return None
    return f"torch=={v}" if "+cpu" in v else None


def compile_lock(python_version: str) -> None:
    doc = tomllib.loads(PYPROJECT.read_text())
    indexes = doc.get("tool", {}).get("uv", {}).get("index", [])
    cmd = [_uv(), "pip", "compile", str(PYPROJECT), *(f"--extra={e}" for e in EXTRAS),
           f"--python-version={python_version}", "--no-header", "--quiet"]
    extra: list[str] = []
    with tempfile.TemporaryDirectory() as d:
        if not all(_reachable(i["url"]) for i in indexes):
            # offline from the CPU index: keep the locked torch, found by pip's find-links
            pin = _torch_pin()
            print(f"[lock] {', '.join(i['url'] for i in indexes)} not reachable: resolving "
                  f"without it{', keeping ' + pin if pin else ''}", file=sys.stderr)
            extra.append("--no-sources")
            for links in os.environ.get("PIP_FIND_LINKS", "").split():
                extra.append(f"--find-links={links}")
            if pin:
                (Path(d) / "torch.txt").write_text(pin + "\n")
                extra.append(f"--constraint={Path(d) / 'torch.txt'}")
        out = subprocess.run(cmd + extra, check=True, capture_output=True, text=True,
                             cwd=ROOT).stdout
    body = out
    LOCK.write_text(
        "# Every package of `pip install -e \".[dev]\"`, pinned: scripts/setup_venv.sh installs\n"
        "# these versions. Written by `make lock` (scripts/lock.py) from pyproject.toml; do not\n"
        f"# edit by hand. Resolved for Python {python_version}, Linux x86_64, CPU torch.\n"
        f"{HASH_LINE}{input_hash()}\n" + body.rstrip() + "\n")
    n = sum(1 for ln in body.splitlines() if "==" in ln and not ln.startswith("#"))
    print(f"[lock] {LOCK.name}: {n} packages pinned")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true",
                    help="only check that the lock matches pyproject.toml")
    ap.add_argument("--python-version", default=f"{sys.version_info[0]}.{sys.version_info[1]}")
    args = ap.parse_args(argv)
    if args.check:
        problem = check()
        if problem:
            print(f"[lock] {problem}", file=sys.stderr)
            return 1
        print(f"[lock] {LOCK.name} matches pyproject.toml")
        return 0
    compile_lock(args.python_version)
    return 0


if __name__ == "__main__":
    sys.exit(main())
