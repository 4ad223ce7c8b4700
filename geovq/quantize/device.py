"""Where the exact neighbour searches run: the CPU searches, or brute force on a torch device.

A quantizer's ``device`` setting is ``"auto"`` (a CUDA GPU when torch sees one, else the CPU),
``"cpu"``, ``"cuda"`` or ``"cuda:N"``. On a CPU the tuned CPU searches of
:mod:`geovq.quantize.nearest` run (pruned BLAS, k-d tree); on a GPU the brute-force matmul search
runs there, in full float32 (TF32 off, see :func:`full_float32_matmul`), and its candidates are
re-ranked exactly in float64, so both give the same neighbours.
"""

from __future__ import annotations

import contextlib
import re

import torch

from geovq.errors import ParameterError

DEVICES = ("auto", "cpu", "cuda", "cuda:N")
_CUDA_INDEX = re.compile(r"cuda:(\d+)")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The torch device that ``device`` names: ``"auto"`` is CUDA when available, else the CPU.
    Asking for CUDA where there is none raises a ParameterError naming ``device``."""
    if isinstance(device, torch.device):
        device = str(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    index = _CUDA_INDEX.fullmatch(device) if isinstance(device, str) else None
    if device != "cuda" and index is None:
        raise ParameterError("device", f"device must be one of {DEVICES}, got {device!r}.")
    if not torch.cuda.is_available():
        raise ParameterError(
            "device",
            f"device={device!r} asks for a CUDA GPU, but torch sees none (no GPU, or a CPU-only torch build); "
            "use device='cpu', or device='auto' to take a GPU only where there is one.",
        )
    if index is not None and int(index.group(1)) >= torch.cuda.device_count():
        raise ParameterError(
            "device",
            f"device={device!r} but torch sees {torch.cuda.device_count()} CUDA device(s), numbered from 0; "
            "use device='cuda' (the first) or an index below that count.",
        )
    return torch.device(device)


def search_device(device: str | torch.device) -> torch.device | None:
    """The ``device`` argument of the search functions for a quantizer's ``device`` setting:
    None (the CPU searches) where it resolves to the CPU, else the GPU."""
    resolved = resolve_device(device)
    return None if resolved.type == "cpu" else resolved


@contextlib.contextmanager
def full_float32_matmul():
    """Float32 matrix products in full float32 inside the block (no TF32 on CUDA, no bf16 on
    oneDNN), then the previous settings again: the search's rounding bound assumes float32."""
    backends = torch.backends
    if hasattr(backends.cuda.matmul, "fp32_precision"):  # torch >= 2.9: one setting per backend
        # Only the new-style settings are read and written: the legacy getters refuse to answer
        # once both styles have been used in a process.
        settings = [backends.cuda.matmul, backends.mkldnn.matmul, backends.cudnn.conv]
        previous = [s.fp32_precision for s in settings]
        try:
            for s in settings:
                s.fp32_precision = "ieee"
            yield
        finally:
            for s, value in zip(settings, previous):
                s.fp32_precision = value
        return
    previous_precision = torch.get_float32_matmul_precision()
    previous_tf32 = backends.cuda.matmul.allow_tf32, backends.cudnn.allow_tf32
    try:
        torch.set_float32_matmul_precision("highest")
        backends.cuda.matmul.allow_tf32 = backends.cudnn.allow_tf32 = False
        yield
    finally:
        # The precision first: setting it also sets cuda's allow_tf32, which is then restored.
        torch.set_float32_matmul_precision(previous_precision)
        backends.cuda.matmul.allow_tf32, backends.cudnn.allow_tf32 = previous_tf32
