"""Run benchmark variants each in its own process and collect their JSON results (shared by the step benchmarks).

Why a process per variant: peak RSS (``ru_maxrss``) only ever grows within a process, so comparing the
memory of two settings needs two processes; it also keeps one variant's caches from helping the next.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from collections.abc import Callable

from carelab import HUGE_PAGES_ENV
from carelab.onednn import BACKEND_ENV, FUSED_LORA_ENV

#: a variant's ``env`` for torch's BLAS in every linear layer, as before carelab sent them to oneDNN
BLAS = {BACKEND_ENV: "blas"}
#: a variant's ``env`` for PyTorch's CPU allocator on 4 KB pages, as before carelab turned huge pages on
SMALL_PAGES = {HUGE_PAGES_ENV: "0", **BLAS}
HUGE_PAGES = {HUGE_PAGES_ENV: "1", **BLAS}
#: huge pages, linear layers by oneDNN, PEFT's LoRA layers as PEFT computes them (before carelab fused them)
ONEDNN = {HUGE_PAGES_ENV: "1", FUSED_LORA_ENV: "0"}
#: carelab's defaults now: huge pages, linear layers by oneDNN, each LoRA layer one fused product
FUSED_LORA = {HUGE_PAGES_ENV: "1", FUSED_LORA_ENV: "1"}


def split_env(spec: dict) -> dict:
    """A variant's settings without its ``env``, which goes into this process's environment first.

    Why first: PyTorch reads ``THP_MEM_ALLOC_ENABLE`` once, at the process's first tensor allocation, so a
    variant's allocator setting must be in place before anything imports torch.
    """
    spec = dict(spec)
    os.environ.update(spec.pop("env", {}))
    return spec


def peak_rss_gb() -> float:
    """This process's peak resident set size in GB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def run_variants(script: str, names: list[str], passthrough: list[str]) -> dict[str, dict]:
    """Run ``script --variant NAME …`` for each name; each child prints one JSON line last."""
    results: dict[str, dict] = {}
    for name in names:
        print(f"… {name}", file=sys.stderr, flush=True)
        proc = subprocess.run([sys.executable, script, "--variant", name, *passthrough], capture_output=True,
                              text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode or not lines:
            sys.stderr.write(proc.stderr[-3000:])
            raise SystemExit(f"variant {name} failed (exit {proc.returncode})")
        results[name] = json.loads(lines[-1])
        print(f"  {results[name]}", file=sys.stderr, flush=True)
    return results


def dispatch(script: str, variant: str | None, names: list[str], measure: Callable[[str], dict],
             passthrough: list[str]) -> dict[str, dict] | None:
    """In a child (``variant`` set): measure it and print its JSON line, return None; else run every child."""
    if variant:
        result = measure(variant)
        result["peak_rss_gb"] = round(peak_rss_gb(), 2)
        print(json.dumps(result), flush=True)
        return None
    return run_variants(script, names, passthrough)


def timed(fn: Callable, totals: dict[str, float], key: str) -> Callable:
    """``fn`` that adds its wall time to ``totals[key]`` on every call."""
    import functools
    import time

    @functools.wraps(fn)
    def wrapper(*a, **k):
        t0 = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            totals[key] += time.perf_counter() - t0

    return wrapper
