"""Numeric precision for teacher inference and fine-tuning: ``auto | fp32 | bf16 | fp16``.

``auto`` picks, once, from what the device can do natively:

- CPU: ``bf16`` when the CPU has native bf16 dot products (the ``avx512_bf16`` or ``amx_bf16``
  instruction sets, read from ``/proc/cpuinfo``; elsewhere oneDNN's own bf16 check), else
  ``fp32``. Without them bf16 still works, emulated, and is usually slower than fp32.
- CUDA: ``bf16`` when the GPU supports it, else ``fp16``.

``fp16`` on a CPU is refused (:class:`PrecisionError`): PyTorch's CPU fp16 kernels are slow and
incomplete. Reduced precision always runs under ``torch.autocast`` (weights stay fp32; matmuls
and linear layers run in the lower precision, reductions such as softmax and layer norm stay
fp32), so the same checkpoint serves every precision.
"""
from __future__ import annotations

import contextlib
import functools
import logging

from orchestrator.config import PRECISIONS
from orchestrator.runtime.machine import cpuinfo_value

log = logging.getLogger(__name__)

DTYPES = {"bf16": "bfloat16", "fp16": "float16"}
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


class PrecisionError(ValueError):
    """A precision the device cannot run (e.g. fp16 on a CPU) or an unknown precision name."""


def check_name(precision: str, where: str) -> None:
    if precision not in PRECISIONS:
        raise PrecisionError(f"{where}={precision!r}: choose {', '.join(PRECISIONS)}")


def cpu_flags() -> set[str] | None:
    """The CPU feature flags from ``/proc/cpuinfo`` (Linux); None where there is none."""
    flags = cpuinfo_value("flags", "Features")
    return None if flags is None else set(flags.split())


@functools.lru_cache(maxsize=None)
def cpu_bf16_support() -> tuple[bool, str]:
    """``(native bf16?, what was found)``: the bf16 instruction sets the CPU has (or the one it
    lacks), with PyTorch's CPU capability (AVX2 / AVX512 / ...) for context."""
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    flags = cpu_flags()
    if flags is not None:
        found = [f for f in CPU_BF16_FLAGS if f in flags]
        if found:
            return True, f"{' and '.join(found)} (torch CPU capability {capability})"
        return False, (f"the CPU lacks {' and '.join(CPU_BF16_FLAGS)} (torch CPU capability "
                       f"{capability})")
    native = False
    with contextlib.suppress(Exception):
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if native:
        return True, f"oneDNN reports native bf16 (torch CPU capability {capability})"
    return False, f"no native bf16 found (torch CPU capability {capability})"


def cuda_bf16_support() -> bool:
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


_warned: set[str] = set()


def resolve(precision: str, device: str, where: str = "precision") -> str:
    """The concrete precision (``fp32 | bf16 | fp16``) to run on ``device`` (``cpu | cuda``).

    Raises :class:`PrecisionError` for fp16 on a CPU; warns once per process for bf16 on a CPU
    without native bf16."""
    check_name(precision, where)
    if device == "cuda":
        if precision == "auto":
            return "bf16" if cuda_bf16_support() else "fp16"
        return precision
    if precision == "fp16":
        raise PrecisionError(
            f"{where}=fp16 cannot run on a CPU (PyTorch's CPU fp16 kernels are slow and "
            f"incomplete): use {where}=bf16 or auto on a CPU, or fp16 only with GPUs "
            "(pool.gpus_per_actor > 0 for the teacher pool)")
    native, what = cpu_bf16_support()
    if precision == "auto":
        return "bf16" if native else "fp32"
    if precision == "bf16" and not native and where not in _warned:
        _warned.add(where)
        log.warning("%s=bf16 on a CPU without native bf16: %s, so bf16 is emulated and likely "
                    "slower than fp32; use %s=auto or fp32 on this machine", where, what, where)
    return precision


def autocast(precision: str, device: str):
    """A context that runs the block in ``precision`` (a resolved one) on ``device``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    import torch

    return torch.autocast(device_type=device, dtype=getattr(torch, DTYPES[precision]))
