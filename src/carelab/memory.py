"""The process's resident memory between the stages of one long job: each stage's own peak, and the freed heap
given back before the next stage starts.

Why: ``carelab care reproduce`` (``make demo``) runs SFT, GRPO and evaluation in one process. Peak RSS only ever
grows within a process, so without a reset the last stage reports the whole job's peak; and glibc keeps the heap
an earlier stage freed unless asked to return it. Linux only; elsewhere every call is a harmless no-op.
"""

from __future__ import annotations

import functools
import gc
import sys
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
#: what ``clear_refs`` takes to set the peak RSS (VmHWM) back to the current RSS (proc(5))
_RESET_PEAK = "5"


def _status_kb(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (e.g. ``VmHWM``), or None where there is no such file."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_rss_gb() -> float | None:
    """The process's peak resident memory since start or the last :func:`reset_peak_rss`, GB of 1024³ bytes."""
    kb = _status_kb("VmHWM")
    return None if kb is None else kb / 1024**2


def rss_gb() -> float | None:
    """The process's resident memory now, GB of 1024³ bytes."""
    kb = _status_kb("VmRSS")
    return None if kb is None else kb / 1024**2


def reset_peak_rss() -> bool:
    """Start a new peak-RSS window (the peak becomes the current RSS); False where the kernel does not allow it."""
    try:
        _CLEAR_REFS.write_text(_RESET_PEAK)
    except OSError:
        return False
    return True


def release_heap() -> bool:
    """Collect Python's garbage, then hand glibc's free heap pages back to the OS (``malloc_trim(0)``).

    True where glibc released something. The tensors a finished stage dropped are freed by the collection; the
    trim returns the pages their small allocations left in glibc's arenas, which it would otherwise keep.
    """
    gc.collect()
    return trim_heap()


def trim_heap() -> bool:
    """Hand glibc's free heap pages back to the OS (``malloc_trim(0)``); True where it released something.

    Why, besides :func:`release_heap`: a loop whose tensors grow (generation over prompts sorted by length)
    frees blocks too small for its next ones; glibc keeps those holes resident unless trimmed (cpu-full's
    evaluation: 6.89 GB before, 3.43 GB after). No collection here, so it is cheap enough for every join.
    """
    trim = libc_function("malloc_trim")
    return bool(trim and trim(0))


@functools.cache
def libc_function(name: str):
    """The C library's function ``name`` (e.g. glibc's ``malloc_trim``, ``mallopt``), looked up once per name (the
    engine trims at every join); None off Linux or where the C library has no such function."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    return getattr(ctypes.CDLL(None), name, None)
