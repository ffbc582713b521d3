"""Retrieval reward: carelab's pruned scan vs a straightforward official word-window difflib scan.

Checks identical scores on every case (exact, near-miss and absent spans on 2k/8k/32k-word contexts)
and prints the speed ratio. Goal: ≥ 20× at 8k words.

    python benchmarks/retrieval_reward.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import random
import time

from carelab.care import quotes, rewards
from carelab.care.official import official_retrieval_reward as official_retrieval

VOCAB = ("river mountain city council harbour northern merchant ancient bridge library festival engineer "
         "season market garden painter railway island tower museum village century").split()


def make_context(n_words: int, rng: random.Random) -> str:
    """Sentences of random vocabulary words, with numbers so near-duplicates are rare."""
    out, count = [], 0
    while count < n_words:
        k = rng.randint(8, 16)
        words = [rng.choice(VOCAB) for _ in range(k)] + [str(rng.randint(1000, 9999))]
        out.append(" ".join(words).capitalize() + ".")
        count += len(words)
    return " ".join(out)


def make_spans(context: str, rng: random.Random) -> dict[str, str]:
    words = context.split()
    i = rng.randint(0, len(words) - 20)
    exact = " ".join(words[i:i + 12])
    near = list(exact)
    for _ in range(3):  # three character edits: still ≥ 0.85 similar
        j = rng.randrange(len(near))
        near[j] = "x" if near[j] != "x" else "y"
    absent = "completely unrelated sentence about quantum chromodynamics and zebra migration patterns"
    return {"exact": exact, "near-miss": "".join(near), "absent": absent}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sizes", default="2000,8000,32000")
    args = ap.parse_args()
    rng = random.Random(0)
    print(f"{'words':>6} {'case':>10} {'official s':>11} {'carelab s':>10} {'ratio':>7} {'score':>6} same")
    ratios: dict[int, list[float]] = {}
    for n in (int(s) for s in args.sizes.split(",")):
        context = make_context(n, rng)
        for case, span in make_spans(context, rng).items():
            completion = f"<think><retrieval>{span}</retrieval></think> Answer: x"
            t0 = time.perf_counter()
            for _ in range(args.repeats):
                ref = official_retrieval(completion, context)
            t_ref = (time.perf_counter() - t0) / args.repeats
            t0 = time.perf_counter()
            for _ in range(args.repeats):
                quotes._INDEX_CACHE.clear()  # cold: include building the context index every time
                ours = rewards.retrieval_score(completion, context)
            t_ours = (time.perf_counter() - t0) / args.repeats
            same = ref == ours
            if case != "exact":  # exact spans take the same substring test in both: ratio ≈ 1 by design
                ratios.setdefault(n, []).append(t_ref / t_ours)
            print(f"{n:>6} {case:>10} {t_ref:>11.4f} {t_ours:>10.4f} {t_ref / t_ours:>6.1f}x {ours:>6.2f} {same}")
            if not same:
                raise SystemExit(f"MISMATCH at {n} words, {case}: official {ref} vs carelab {ours}")
    for n, rs in ratios.items():
        print(f"{n} words: min speed-up {min(rs):.1f}x on the window scan (near-miss/absent, cold cache)")


if __name__ == "__main__":
    main()
