"""This machine in words, for results that say where they were measured, and the one reader of
``/proc/cpuinfo`` (the CPU's name; its feature flags, for :mod:`orchestrator.runtime.precision`)."""
from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path


def cpuinfo_value(*keys: str) -> str | None:
    """The value of the first ``/proc/cpuinfo`` line that starts with one of ``keys`` (Linux);
    None where there is no such line or no such file."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(keys):
                return line.split(":", 1)[1].strip()
    return None


def describe() -> str:
    """This machine in one line: CPU count and model (and how many this process may use, when
    it is pinned to fewer), memory, GPU, torch."""
    import torch

    cpu = cpuinfo_value("model name") or platform.processor() or platform.machine()
    mem = ""
    try:
        kb = int(next(x for x in Path("/proc/meminfo").read_text().splitlines()
                      if x.startswith("MemTotal")).split()[1])
        mem = f", {kb / 2**20:.0f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    cpus = os.cpu_count() or 1
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cpus
    pinned = f"; this process pinned to {usable}" if usable < cpus else ""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpus} CPUs ({cpu}{pinned}){mem}, {gpu}, torch {torch.__version__}"
