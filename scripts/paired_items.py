"""A method of one run against a method of another run on the same items (paired, by item id).

Why: `care report` pairs rows of one evaluation only; earlier runs' per-item scores (the bundled adapter's, or
Original's, which do not depend on training) survive as their items.csv, and the synthetic test items are the
same (where both files have Original rows, they are checked to agree).

    python scripts/paired_items.py NEW_ITEMS_CSV OLD_ITEMS_CSV LABEL [OLD_LABEL]   # OLD_LABEL: "CARE (bundled)"
"""
import csv
import sys

from carelab.stats import mean_of_means_ci, paired_difference_ci, paired_ratio_difference_ci

new_csv, old_csv, label = sys.argv[1], sys.argv[2], sys.argv[3]
old_label = sys.argv[4] if len(sys.argv) > 4 else "CARE (bundled)"


def rows(path: str, method: str) -> dict:
    with open(path) as fh:
        return {(r["dataset"], r["id"]): r for r in csv.DictReader(fh) if r["method"] == method}


def counts(side: dict, keys: list, share: str = "exact-quote") -> tuple[list[float], list[float]]:
    """Per item: the quotes that count for ``share`` (exact copies, or for "in-context" exact + fuzzy), and all quotes."""
    found = [float(side[k]["n_exact"]) + (float(side[k]["n_fuzzy"]) if share == "in-context" else 0.0) for k in keys]
    return found, [float(side[k]["n_quotes"]) for k in keys]


new, bundled = rows(new_csv, label), rows(old_csv, old_label)
if not new or not bundled:
    sys.exit(f"no rows of {label!r} in {new_csv} or of {old_label!r} in {old_csv}")
orig_new, orig_old = rows(new_csv, "Original"), rows(old_csv, "Original")
if orig_new and orig_old:
    same = sum(1 for k in orig_new if k in orig_old and orig_new[k]["f1"] == orig_old[k]["f1"])
    print(f"Original rows identical F1 in both files: {same}/{len(orig_new)}")
print(f"{label} ({new_csv}) − {old_label} ({old_csv}), paired by item:")
groups = []
for ds in sorted({k[0] for k in new}):
    keys = [k for k in new if k[0] == ds and k in bundled]
    if ds == "CofCA":
        keys = [k for k in keys if new[k]["counterfactual"] == "True"]
    if not keys:  # a method evaluated on fewer sets (the ablations) pairs only where both have rows
        continue
    a, b = [100 * float(new[k]["f1"]) for k in keys], [100 * float(bundled[k]["f1"]) for k in keys]
    e = paired_difference_ci(a, b)
    q = paired_ratio_difference_ci(*counts(new, keys), *counts(bundled, keys))
    groups.append([x - y for x, y in zip(a, b, strict=True)])
    share = "– (a side has no quotes)" if q.mean is None else f"{100*q.mean:+.1f} [{100*q.lo:+.1f}, {100*q.hi:+.1f}]"
    print(f"{ds}: n={len(keys)} F1 {e.mean:+.1f} [{e.lo:+.1f}, {e.hi:+.1f}]  exact-quote share pts {share}")
avg = mean_of_means_ci(groups)
print(f"Avg (datasets weighted equally): {avg.mean:+.1f} [{avg.lo:+.1f}, {avg.hi:+.1f}]")
# quote shares over every paired item (CofCA's factual controls included, as in `care report`'s "all sets"):
# exact copies, and quotes found in the context at all (exact or fuzzy)
both = [k for k in new if k in bundled]
for share in ("exact-quote", "in-context"):
    q = paired_ratio_difference_ci(*counts(new, both, share), *counts(bundled, both, share))
    if q.mean is not None:
        print(f"{share} share pts, all {len(both)} paired items: {100*q.mean:+.1f} [{100*q.lo:+.1f}, {100*q.hi:+.1f}]")
