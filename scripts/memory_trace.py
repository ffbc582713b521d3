"""Run one `carelab` command in this process and log its memory every few seconds: RSS and glibc's heap.

Why: peak RSS alone cannot tell a leak from allocator fragmentation. glibc's ``mallinfo2`` splits the heap into
bytes in use and bytes free but kept (holes), and counts what is mapped separately: a leak grows "in use", a
fragmented heap grows "free". Linux/glibc only. One JSON line per sample (seconds, GB of 1024³ bytes):

    python scripts/memory_trace.py trace.jsonl care eval -d data.jsonl -o runs/eval -m Original=original
    python scripts/memory_trace.py --summary trace.jsonl [EVERY_S]   # maxima, and the peak RSS reached by each EVERY_S
"""

from __future__ import annotations

import ctypes
import json
import sys
import threading
import time

FIELDS = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")


class MallInfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2`` (glibc ≥ 2.33): every field a ``size_t``."""

    _fields_ = [(name, ctypes.c_size_t) for name in FIELDS]


def sample() -> dict:
    """RSS now and the heap split: held from the OS, in use, free but kept, mapped apart from the heap."""
    from carelab.memory import libc_function, rss_gb

    mallinfo2 = libc_function("mallinfo2")
    mallinfo2.restype = MallInfo2
    info = mallinfo2()
    gb = 1024**3
    return {"rss_gb": round(rss_gb() or 0.0, 3), "heap_gb": round(info.arena / gb, 3),
            "in_use_gb": round(info.uordblks / gb, 3), "free_kept_gb": round(info.fordblks / gb, 3),
            "mapped_gb": round(info.hblkhd / gb, 3), "mapped_blocks": info.hblks}


def summary(path: str, every: float) -> None:
    """The trace's maxima per field and its running peak RSS every ``every`` seconds: growth over time in one look."""
    with open(path) as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    if not rows:
        sys.exit(f"{path}: no samples")
    print(f"{path}: {len(rows)} samples over {rows[-1]['s']:.0f} s")
    for field in ("rss_gb", "in_use_gb", "free_kept_gb", "mapped_gb"):
        print(f"  max {field}: {max(r[field] for r in rows):.2f}")
    peak, mark = 0.0, every
    for r in rows:
        while r["s"] > mark:
            print(f"  peak RSS by {mark:.0f} s: {peak:.2f} GB")
            mark += every
        peak = max(peak, r["rss_gb"])
    print(f"  peak RSS by {rows[-1]['s']:.0f} s (end): {peak:.2f} GB")


def main() -> None:
    if len(sys.argv) >= 3 and sys.argv[1] == "--summary":
        summary(sys.argv[2], float(sys.argv[3]) if len(sys.argv) > 3 else 100.0)
        return
    if len(sys.argv) < 3:
        sys.exit("usage: python scripts/memory_trace.py TRACE.jsonl CARELAB-ARGS...")
    out, args = sys.argv[1], sys.argv[2:]
    every = 5.0
    done = threading.Event()

    def trace() -> None:
        start = time.perf_counter()
        with open(out, "w") as log:
            while True:
                log.write(json.dumps({"s": round(time.perf_counter() - start, 1), **sample()}) + "\n")
                log.flush()
                if done.wait(every):
                    return

    thread = threading.Thread(target=trace, daemon=True)
    thread.start()
    from carelab.cli import app

    try:
        app(args=args, prog_name="carelab")
    finally:
        done.set()
        thread.join()


if __name__ == "__main__":
    main()
