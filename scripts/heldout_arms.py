"""Two GRPO runs from one SFT adapter on the same dev prompts (CARE and the no-retrieval-reward ablation): each
reward's change since update 0 in each run, and their difference paired per prompt.

Why: the ablation's claim (the exact-quote gain comes from the retrieval reward) is a difference of two changes;
pairing by prompt removes the prompt-to-prompt spread that two separate curves would carry.

    python scripts/heldout_arms.py RUN_A RUN_B [STEP] [LABEL_A] [LABEL_B] [--plot PNG]
    # RUN_*: a GRPO folder or its heldout_reward.jsonl; --plot: the retrieval change at every common step
"""
import sys

from carelab.care.train.heldout import arm_difference, plot_arm_curves, read_heldout
from carelab.stats import format_ci

args = sys.argv[1:]
plot = None
if "--plot" in args:
    at = args.index("--plot")
    if at + 1 >= len(args):
        sys.exit("heldout_arms.py: --plot needs a PNG path")
    plot = args[at + 1]
    del args[at:at + 2]
if len(args) < 2 or (len(args) > 2 and args[2] and not args[2].isdigit()):
    sys.exit("usage: heldout_arms.py RUN_A RUN_B [STEP] [LABEL_A] [LABEL_B] [--plot PNG] (STEP: an update number)")
run_a, run_b = args[0], args[1]
step = int(args[2]) if len(args) > 2 and args[2] else None
label_a = args[3] if len(args) > 3 else "A"
label_b = args[4] if len(args) > 4 else "B"
try:
    records_a, records_b = read_heldout(run_a), read_heldout(run_b)
    rows = arm_difference(records_a, records_b, step)
    if plot:
        print(f"plot: {plot_arm_curves(records_a, records_b, plot, labels=(label_a, label_b))}")
except ValueError as exc:
    sys.exit(f"{run_a} vs {run_b}: {exc}")
print(f"update {rows[0]['step']}, n = {rows[0]['n']} dev prompts; same update-0 scores in both runs: "
      f"{all(r['same_start'] for r in rows)}")
print(f"| reward | {label_a} change | {label_b} change | {label_a} − {label_b} (paired) |")
print("|---|---|---|---|")
for r in rows:
    cells = [format_ci(*r[k], digits=3, signed=True) for k in ("a", "b", "difference")]
    print(f"| {r['reward']} | " + " | ".join(cells) + " |")
