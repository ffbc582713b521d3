"""Quotes and exact quotes per answer, two methods of one evaluation paired by item.

Why: the exact-quote share is a ratio, and a policy can raise it by quoting less as well as by copying better;
the per-answer counts tell the two apart (a share gain with fewer exact quotes per answer is the former).

    python scripts/quote_counts.py ITEMS_CSV METHOD_A METHOD_B   # e.g. runs/…/eval/items.csv CARE SFT-only
"""
import csv
import sys

from carelab.stats import format_ci, paired_difference_ci

path, method_a, method_b = sys.argv[1], sys.argv[2], sys.argv[3]
with open(path) as fh:
    rows = list(csv.DictReader(fh))
by_method: dict[str, dict] = {}
for row in rows:
    by_method.setdefault(row["method"], {})[(row["dataset"], row["id"])] = row
a, b = by_method.get(method_a, {}), by_method.get(method_b, {})
keys = sorted(set(a) & set(b))
if not keys:
    sys.exit(f"{path}: no items scored for both {method_a!r} and {method_b!r}")
print(f"{method_a} − {method_b}, n = {len(keys)} items paired ({path})")
for field, label in (("n_quotes", "quotes per answer"), ("n_exact", "exact quotes per answer")):
    xs, ys = [float(a[k][field]) for k in keys], [float(b[k][field]) for k in keys]
    d = paired_difference_ci(xs, ys)
    print(f"{label}: {method_a} {sum(xs) / len(xs):.3f}, {method_b} {sum(ys) / len(ys):.3f}, "
          f"difference {format_ci(d.mean, d.lo, d.hi, digits=3, signed=True)}")
