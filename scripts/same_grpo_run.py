"""Whether two GRPO run folders trained the same thing: dev rows, logged rewards and losses, adapters, bit for bit.

Why: a preset is documented with the numbers of an earlier run of the same settings (cpu-full with run 9's); the
claim that a re-run reproduces them is checked here, on the steps both folders reached (a run may still be going).

    python scripts/same_grpo_run.py RUN_A/grpo RUN_B/grpo
"""
from __future__ import annotations

import sys
from pathlib import Path

from carelab.runs import read_jsonl


def _rows(path: Path) -> dict[int, dict]:
    """A JSONL file's rows by their ``step`` (empty when the file is missing; a running run's half-written last
    line is skipped)."""
    if not path.exists():
        return {}
    return {int(row["step"]): row for _, row in read_jsonl(path, skip_invalid=True) if "step" in row}


def compare_rows(a: Path, b: Path, name: str) -> tuple[int, list[int]]:
    """Steps of ``name`` both folders logged, and those whose rows differ."""
    ra, rb = _rows(a / name), _rows(b / name)
    common = sorted(set(ra) & set(rb))
    return len(common), [step for step in common if ra[step] != rb[step]]


def compare_adapters(a: Path, b: Path) -> list[tuple[str, bool]]:
    """Every adapter file both folders hold (final, dev-best, per dev evaluation): tensors equal or not."""
    import torch
    from safetensors.torch import load_file

    found = []
    for path in sorted(a.rglob("adapter_model.safetensors")):
        rel = path.relative_to(a)
        if "checkpoint-" in str(rel) or not (b / rel).exists():
            continue
        ta, tb = load_file(str(path)), load_file(str(b / rel))
        found.append((str(rel.parent), ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)))
    return found


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python scripts/same_grpo_run.py RUN_A/grpo RUN_B/grpo", file=sys.stderr)
        return 2
    a, b = Path(argv[0]), Path(argv[1])
    for folder in (a, b):
        if not folder.is_dir():
            print(f"{folder}: no such run folder", file=sys.stderr)
            return 2
    same = True
    for name in ("heldout_reward.jsonl", "reward_curve.jsonl"):
        n, differ = compare_rows(a, b, name)
        same &= not differ
        if not n:
            print(f"{name}: no step in both (not written yet, or missing)")
            continue
        print(f"{name}: {n} steps in both, {'all identical' if not differ else f'differ at steps {differ}'}")
    for rel, equal in compare_adapters(a, b):
        same &= equal
        print(f"{rel}: {'identical tensors' if equal else 'DIFFERENT tensors'}")
    print("same run" if same else "not the same run")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
