"""Which training precision is fast for a model on this machine:
``${geovq_fast_precision:<accelerator>,<model>}``.

bf16 autocast can only pay where the hardware computes in bf16: CUDA devices that support it, and
CPUs with AVX512-BF16 or AMX. Elsewhere the CPU emulates it, many times slower than float32
(docs/design.md). Native is not enough either: whether bf16 pays depends on the model and its
size, so the choice follows measurements of each model's training step at the study's sizes
(``bench/train_step.py``; the figures and their dates: docs/benchmarks.md). On the bf16-native
CPUs measured, the classifier (with channels_last), the prior (its attention kept off torch's
slow bf16 kernel: geovq/nn/transformer.py) and the GridVAE ran as fast or faster in bf16 and reached
float32's accuracy, NLL and MSE within seed noise; the VQ-VAE reconstructed worse in bf16: on a CPU
bf16 is chosen only for the models in ``BF16_PAYS_ON_CPU``. On CUDA devices that support bf16 every model gets it
(not yet measured per model).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
# Models whose training step measured faster in bf16 autocast than in float32 on a bf16-native CPU.
BF16_PAYS_ON_CPU = frozenset({"classifier", "prior", "grid_vae"})
# The model names the resolver knows (a typo is an error, not silently float32).
MODELS = frozenset({"grid_vae", "vqvae", "classifier", "prior"})


@functools.cache
def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether the CPU computes bf16 natively (Linux flags; False where they cannot be read)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def fast_precision(accelerator: str = "cpu", model: str | None = None) -> str:
    """``bf16-mixed`` where the accelerator the Trainer will use computes bf16 natively and, on a
    CPU, ``model`` is one whose step measured faster in it (no model: wherever bf16 is native);
    else ``32-true``."""
    if model is not None and model not in MODELS:
        raise ValueError(f"geovq_fast_precision: unknown model {model!r}; one of {', '.join(sorted(MODELS))}.")
    uses_cuda = str(accelerator) in ("gpu", "cuda") or (str(accelerator) == "auto" and torch.cuda.is_available())
    if uses_cuda:
        return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "32-true"
    pays = model is None or model in BF16_PAYS_ON_CPU
    return "bf16-mixed" if pays and cpu_has_native_bf16() else "32-true"
