"""The process's resident memory between the stages of one long job: each stage's own peak, and the freed heap
given back before the next stage starts.

Why: ``carelab care reproduce`` (``make demo``) runs SFT, GRPO and evaluation in one process. Peak RSS only ever
grows within a process, so without a reset the last stage reports the whole job's peak; and glibc keeps the heap
an earlier stage freed unless asked to return it. Linux only; elsewhere every call is a harmless no-op.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import sys
from collections.abc import Iterator
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


#: mallopt's parameter numbers (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: where glibc's dynamic thresholds end after the first large frees (mmap 32 MB, trim twice that): what a process
#: that never called mallopt runs with once it is warm, and what :func:`kept_heap` restores where nothing else was set
GLIBC_WARM = {M_MMAP_THRESHOLD: 32 * 1024 * 1024, M_TRIM_THRESHOLD: 64 * 1024 * 1024}
#: glibc's fixed trim threshold, in force once any threshold was set (that turns the dynamic ones off)
GLIBC_STATIC_TRIM = 128 * 1024
_malloc_options: dict[int, int] = {}  # what carelab set last, by parameter: the values to restore


def set_malloc_option(param: int, value: int) -> bool:
    """``mallopt(param, value)`` of the C library this process runs on, remembered for :func:`kept_heap`; False where
    there is none (off glibc) or it refused."""
    mallopt = libc_function("mallopt")
    if not (mallopt and mallopt(param, value)):
        return False
    _malloc_options[param] = value
    return True


#: :func:`kept_heap`'s default: free memory at the heap's top that glibc keeps instead of handing back at a free
KEPT_HEAP_BYTES = 128 * 1024 * 1024  # a prompt's prefill activations and a step's logits fit in it


@contextlib.contextmanager
def kept_heap(max_free_bytes: int = KEPT_HEAP_BYTES) -> Iterator[None]:
    """Inside, freed tensors up to 32 MB stay in glibc's heap, up to ``max_free_bytes`` of it, for the next ones.

    Why: a loop that allocates and frees the same activations (generation: each prompt's prefill, each step's
    logits) otherwise hands the top of the heap back at every free beyond 64 MB and page-faults it in again, zeroed,
    at the next allocation (a few percent of the evaluation engine's time in probes). Explicit :func:`trim_heap`
    calls still hand holes back; on leaving, the heap is trimmed, so what was kept does not stack under the next
    stage (with no trim on leaving and trims only after 512 MB of growth, cpu-full's evaluation peaked at 4.19 GB).
    Restores what carelab set before, else glibc's values.
    """
    warm = M_MMAP_THRESHOLD not in _malloc_options and M_TRIM_THRESHOLD not in _malloc_options
    saved = {M_MMAP_THRESHOLD: _malloc_options.get(M_MMAP_THRESHOLD, GLIBC_WARM[M_MMAP_THRESHOLD]),
             M_TRIM_THRESHOLD: _malloc_options.get(M_TRIM_THRESHOLD,
                                                   GLIBC_WARM[M_TRIM_THRESHOLD] if warm else GLIBC_STATIC_TRIM)}
    set_malloc_option(M_MMAP_THRESHOLD, GLIBC_WARM[M_MMAP_THRESHOLD])
    set_malloc_option(M_TRIM_THRESHOLD, max_free_bytes)
    try:
        yield
    finally:
        for param, value in saved.items():
            set_malloc_option(param, value)
        trim_heap()
