"""Two GRPO runs from one SFT adapter on the same dev prompts (CARE and the no-retrieval-reward ablation): each
reward's change since update 0 in each run, and their difference paired per prompt.

Why: the ablation's claim (the exact-quote gain comes from the retrieval reward) is a difference of two changes;
pairing by prompt removes the prompt-to-prompt spread that two separate curves would carry.

    python scripts/heldout_arms.py RUN_A RUN_B [STEP] [LABEL_A] [LABEL_B]   # RUN_*: a GRPO folder or its heldout_reward.jsonl
"""
import sys

from carelab.care.train.heldout import arm_difference, read_heldout
from carelab.stats import format_ci

run_a, run_b = sys.argv[1], sys.argv[2]
step = int(sys.argv[3]) if len(sys.argv) > 3 and sys.argv[3] else None
label_a = sys.argv[4] if len(sys.argv) > 4 else "A"
label_b = sys.argv[5] if len(sys.argv) > 5 else "B"
try:
    rows = arm_difference(read_heldout(run_a), read_heldout(run_b), step)
except ValueError as exc:
    sys.exit(f"{run_a} vs {run_b}: {exc}")
print(f"update {rows[0]['step']}, n = {rows[0]['n']} dev prompts; same update-0 scores in both runs: "
      f"{all(r['same_start'] for r in rows)}")
print(f"| reward | {label_a} change | {label_b} change | {label_a} − {label_b} (paired) |")
print("|---|---|---|---|")
for r in rows:
    cells = [format_ci(*r[k], digits=3, signed=True) for k in ("a", "b", "difference")]
    print(f"| {r['reward']} | " + " | ".join(cells) + " |")
