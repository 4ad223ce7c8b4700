"""Time and memory of each step, and the thread count of torch's kernels.

Memory is measured as resident set size (RSS) from the kernel, because most of it is allocated
outside Python's allocator (torch, scipy's C code, the Rust K-Medoids), where ``tracemalloc``
is blind. On Linux the peak ("high-water mark", VmHWM) is reset before each step by writing
``5`` to ``/proc/self/clear_refs``, so ``peak_memory[step]`` is

    peak RSS of this process during the step - RSS when the step started,

the extra memory the step needed at its worst moment. Where the reset is unavailable the value
is the growth of ``getrusage().ru_maxrss`` (lifetime peak), which is 0 for a step that stays under
an earlier peak. Worker processes (shortest paths) are not in this number; see
:func:`children_peak_rss`.
"""

from __future__ import annotations

import contextlib
import resource
import sys
import time

import torch


def _status_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


_highest_peak = 0  # resetting VmHWM loses the lifetime peak, so it is kept here


def _reset_peak() -> bool:
    global _highest_peak
    _highest_peak = max(_highest_peak, peak_rss())
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def reset_peak() -> bool:
    """Start a new peak (VmHWM) for this process; False where the kernel does not allow it."""
    return _reset_peak()


def _lifetime_peak(who=resource.RUSAGE_SELF) -> int:
    peak = resource.getrusage(who).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


def current_rss() -> int:
    """Resident memory of this process now, in bytes (lifetime peak where /proc is missing)."""
    rss = _status_bytes("VmRSS")
    return rss if rss is not None else _lifetime_peak()


def peak_rss() -> int:
    """Peak resident memory of this process (since the last per-step reset), in bytes."""
    hwm = _status_bytes("VmHWM")
    return hwm if hwm is not None else _lifetime_peak()


def lifetime_peak_rss() -> int:
    """Peak resident memory of this process since it started, in bytes."""
    return max(_highest_peak, peak_rss())


def children_peak_rss() -> int:
    """Largest peak RSS among finished worker processes, in bytes (includes pages shared with
    this process, so it is an upper bound on what a worker added)."""
    return _lifetime_peak(resource.RUSAGE_CHILDREN)


class StepRecorder:
    """Collects ``timings[step]`` (seconds) and ``peak_memory[step]`` (bytes, see module doc)."""

    def __init__(self):
        self.timings: dict[str, float] = {}
        self.peak_memory: dict[str, int] = {}

    @contextlib.contextmanager
    def step(self, name: str):
        exact = _reset_peak()
        start_rss = current_rss() if exact else _lifetime_peak()
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = time.perf_counter() - start
            end_peak = peak_rss() if exact else _lifetime_peak()
            self.peak_memory[name] = max(0, end_peak - start_rss)


@contextlib.contextmanager
def torch_threads(n_threads: int):
    """Run torch's CPU kernels on ``n_threads`` threads inside the block, then restore."""
    previous = torch.get_num_threads()
    if n_threads != previous:
        torch.set_num_threads(n_threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


def progress_bar(total: int, desc: str, enabled: bool, unit: str = "it"):
    """A tqdm bar when ``enabled`` (tqdm imported lazily), else a no-op with the same API."""
    if not enabled:
        return contextlib.nullcontext(_NoBar())
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass
