"""benchmarks/eval_throughput.py and decode_step.py run end to end on a tiny model: both engines (with and without
drafts) give the same text, the prefill-only setting prints the bound it sets on the ratio, and the decode-step
timings print for both attentions.

Why: the benchmark's numbers in docs/care-eval.md are only as good as its settings' code paths; this runs each
path (old loop, continuous engine, prefill alone) in seconds. What it prints about speed is not checked here.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "benchmarks/eval_throughput.py", "--model", "tiny-random-llama",
                           "--method", "original", "--n", "4", "--max-new-tokens", "6", "--batch-size", "2", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_both_engines_agree_and_the_prefill_bound_is_printed():
    run = _bench("--configs", "old,new,prefill-only")
    assert run.returncode == 0, run.stderr[-2000:]
    new_row = next(line for line in run.stdout.splitlines() if line.startswith("| new |"))
    assert new_row.rstrip(" |").endswith("4/4 | 4/4"), new_row  # same scored answer and same raw text as old
    bound = re.search(r"prefill only \(4 prompts, (\d+) tokens, no decoding\).*if decoding cost nothing: "
                      r"([\d.]+)x wall", run.stdout)
    assert bound, run.stdout
    assert int(bound.group(1)) > 0 and float(bound.group(2)) > 0
    assert "new spends" in run.stdout and "prefill-only spends" not in run.stdout


def test_prefill_only_cannot_be_the_reference():
    run = _bench("--configs", "prefill-only,old")
    assert run.returncode == 2
    assert "put prefill-only after it" in run.stderr


def test_the_draft_settings_run_and_agree():
    """`new-no-draft` (engine without drafts) gives the same text as the old loop and as `new` (with drafts)."""
    run = _bench("--configs", "old,new,new-no-draft")
    assert run.returncode == 0, run.stderr[-2000:]
    rows = [line for line in run.stdout.splitlines() if line.startswith(("| new |", "| new-no-draft |"))]
    assert len(rows) == 2 and all(r.rstrip(" |").endswith("4/4 | 4/4") for r in rows), rows


def test_decode_step_benchmark_times_both_attentions():
    """benchmarks/decode_step.py on the tiny grouped-query model: one row per fed-token count, both timings."""
    run = subprocess.run([sys.executable, "benchmarks/decode_step.py", "--model", "tiny-random-qwen2", "--rows", "2",
                          "--context", "20", "--tokens", "1,3", "--repeats", "1", "--threads", "1"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    table = [line for line in run.stdout.splitlines() if re.match(r"\| [13] \|", line)]
    assert len(table) == 2 and all(float(cell) > 0 for row in table for cell in row.strip(" |").split(" | ")), table
