"""Summarise a GRPO run's training log (``reward_curve.jsonl``): what the sampled rollouts earned, per reward.

Why: each log point is one sampled group, too noisy to plot as a curve; its averages say how much signal GRPO had
(mean reward per component with a 95 % bootstrap interval over the log points, groups with no reward variance,
KL to the reference).

    python scripts/reward_curve_summary.py RUN/grpo/reward_curve.jsonl
"""
import json
import sys

from carelab.stats import bootstrap_ci

with open(sys.argv[1]) as fh:
    rows = [r for r in map(json.loads, filter(str.strip, fh)) if "reward" in r]  # the log points with rewards  # generation steps; the μ > 1 reuse steps log no rewards
print(f"{sys.argv[1]}: {len(rows)} logged groups")
for key in sorted(k for k in rows[0] if k.startswith("rewards/") and k.endswith("/mean")) + ["reward"]:
    est = bootstrap_ci([r[key] for r in rows])
    print(f"  {key}: {est.mean:.3f} [{est.lo:.3f}, {est.hi:.3f}]")
print(f"  groups with no reward variance: {sum(r['reward_std'] < 1e-6 for r in rows)} / {len(rows)}")
kl = [r["kl"] for r in rows if "kl" in r]
if kl:
    print(f"  KL to the reference: mean {sum(kl) / len(kl):.4f}, max {max(kl):.4f}")
