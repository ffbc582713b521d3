"""Small reporting helpers shared by all systems: Markdown tables and matplotlib figures saved as PNG."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def fmt(value: Any, digits: int = 2) -> str:
    """Format a table cell: floats to fixed digits, None as an en dash."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(rows: Sequence[dict], columns: Sequence[str] | None = None, digits: int = 2) -> str:
    """Render dict rows as a GitHub-flavoured Markdown table (columns default to the first row's keys)."""
    if not rows:
        return "_(no rows)_\n"
    cols = list(columns or rows[0].keys())
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(c), digits) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def write_csv(path: str | Path, rows: Sequence[dict], columns: Sequence[str] | None = None) -> Path:
    """Write dict rows as CSV (union of keys, in first-seen order, unless columns are given)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if columns is None:
        seen: dict[str, None] = {}
        for r in rows:
            for k in r:
                seen.setdefault(k, None)
        columns = list(seen)
    with p.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(r)
    return p


def new_figure(width: float = 6.4, height: float = 4.0):
    """A matplotlib figure on the non-interactive Agg backend (works headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height))


def save_figure(fig, path: str | Path) -> Path:
    """Save and close a figure as PNG."""
    import matplotlib.pyplot as plt

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(p, dpi=120)
    plt.close(fig)
    return p
