#!/usr/bin/env bash
# Create and fill .venv when missing or older than pyproject.toml or requirements.lock
# (idempotent): the locked versions of every package (`make lock` writes the lock), then this
# project itself without dependencies. torch is the lock's CPU build on machines without an
# NVIDIA GPU (the local wheel when pip can find it, else PyTorch's CPU index, declared in
# pyproject.toml), the same version's CUDA build from PyPI where there is one.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=.venv/.distillray-installed

# The browser tests drive the system Chromium (Playwright's own browser download needs a network
# this machine may not have): install Debian's package when it is missing.
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[setup] installing chromium (apt-get) for the browser tests"
    { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; } \
      || echo "[setup] could not install chromium: the browser tests will be skipped" >&2
  else
    echo "[setup] /usr/bin/chromium is missing and apt-get cannot run here (not root, or no apt):" \
         "the browser tests will be skipped; install Chromium to run them" >&2
  fi
fi

lock=requirements.lock
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && [ "$stamp" -nt "$lock" ]; then exit 0; fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
# a lock older than pyproject.toml still installs (so that `make lock` can run in this venv);
# `make test` fails on it
.venv/bin/python scripts/lock.py --check || true
torch_pin=$(grep -m1 '^torch==' "$lock" | cut -d' ' -f1)
cpu_index=$(sed -n '/name = "pytorch-cpu"/,/^url/s/^url = "\(.*\)"/\1/p' pyproject.toml)
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  # the locked version's CUDA build (and its CUDA libraries) from PyPI
  grep -v '^torch==' "$lock" > .venv/requirements-gpu.txt
  .venv/bin/pip install -q -r .venv/requirements-gpu.txt "${torch_pin%+cpu}"
else
  .venv/bin/pip install -q "$torch_pin" 2>/dev/null \
    || .venv/bin/pip install -q "$torch_pin" --extra-index-url "$cpu_index"
  .venv/bin/pip install -q -r "$lock"
fi
.venv/bin/pip install -q --no-deps -e .
touch "$stamp"
