"""Which training precision is fast on this machine: ``${geovq_fast_precision:<accelerator>}``.

bf16 autocast only pays where the hardware computes in bf16: CUDA devices that support it, and
CPUs with AVX512-BF16 or AMX. Elsewhere the CPU emulates it, many times slower than float32
(measured: docs/design.md). A study that wants the cheaper step therefore asks for this resolver
instead of naming bf16-mixed.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether the CPU computes bf16 natively (Linux flags; False where they cannot be read)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def fast_precision(accelerator: str = "cpu") -> str:
    """``bf16-mixed`` where the accelerator the Trainer will use computes bf16 natively, else
    ``32-true``."""
    uses_cuda = str(accelerator) in ("gpu", "cuda") or (str(accelerator) == "auto" and torch.cuda.is_available())
    if uses_cuda:
        return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "32-true"
    return "bf16-mixed" if cpu_has_native_bf16() else "32-true"
