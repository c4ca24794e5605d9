#!/usr/bin/env bash
# Create and fill .venv when missing (idempotent). Prefers the CPU build of torch on machines
# without an NVIDIA GPU: the local CPU wheel when pip can find it, else PyTorch's CPU index.
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

if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ]; then exit 0; fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    .venv/bin/pip install -q torch
  else
    .venv/bin/pip install -q "torch==2.13.0+cpu" 2>/dev/null \
      || .venv/bin/pip install -q torch --index-url https://download.pytorch.org/whl/cpu \
      || .venv/bin/pip install -q torch
  fi
fi
.venv/bin/pip install -q -e ".[dev]"
touch "$stamp"
