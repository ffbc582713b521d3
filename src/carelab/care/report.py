"""Reports for CARE evaluation runs: the paper's tables, a bar chart and the HTML evidence viewer.

Why separate from the evaluator: tables are often wanted across several runs (a baseline run and a
trained run made on different days), so the report reads only what runs leave on disk
(``metrics.json`` and the predictions JSONL) and can be rebuilt at any time with ``carelab care report``.

Layout follows the paper: Table 1/2 style (methods × datasets, with the average), the Table 3 ablation
(when the run labels name ablations), a counterfactual breakdown (counterfactual vs factual-control F1
and the share of answers that repeat the memorised original), and a format/grounding table (format
compliance, quotes per answer, share of quotes that are exact / fuzzy / in the context, evidence
BLEU/ROUGE-L) — the numbers behind the paper's evidence-quality figure.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from carelab.report import markdown_table, new_figure, save_figure, write_csv
from carelab.runs import InputError, read_jsonl

#: The paper's dataset column order; other datasets follow in the order they were given.
PAPER_ORDER = ("MFQA", "HotpotQA", "2WikiMQA", "MuSiQue", "CofCA")
#: Ablation rows (normalised label -> row name), in the paper's Table 3 order.
ABLATIONS = (
    (("original", "baseline"), "Baseline (Original)"),
    (("sftonly", "sft"), "SFT only"),
    (("noretrievalreward", "noretrieval", "noret"), "No retrieval reward"),
    (("nocurriculum", "nocurr"), "No curriculum"),
    (("care",), "CARE"),
)
_ABLATION_MARKERS = {"sftonly", "sft", "noretrievalreward", "noretrieval", "noret", "nocurriculum", "nocurr"}


def _norm_label(label: str) -> str:
    return re.sub(r"[^a-z0-9]", "", label.lower())


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """Read a run directory's ``metrics.json`` (an input error names the missing file)."""
    path = Path(run_dir) / "metrics.json"
    if not path.exists():
        raise InputError(path, "no metrics.json here; is this a `carelab care eval` output directory?")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(path, f"invalid JSON ({exc.msg})", line=exc.lineno) from None
    if not isinstance(data.get("results"), list):
        raise InputError(path, "missing the 'results' list", field="results")
    data["run_dir"] = str(run_dir)
    return data


def collect_rows(run_dirs: Sequence[str | Path]) -> list[dict[str, Any]]:
    """Result rows of several runs; a label seen in two runs gets the run folder's name appended."""
    rows: list[dict[str, Any]] = []
    seen: dict[tuple[str, str], str] = {}
    for run_dir in run_dirs:
        data = load_run(run_dir)
        for r in data["results"]:
            r = dict(r, run_dir=str(run_dir))
            key = (r["label"], r.get("dataset_name", r["dataset"]))
            if key in seen and seen[key] != str(run_dir):
                r["label"] = f"{r['label']} [{Path(run_dir).name}]"
            seen.setdefault((r["label"], r.get("dataset_name", r["dataset"])), str(run_dir))
            rows.append(r)
    return rows


def _dataset_order(rows: Sequence[dict]) -> list[str]:
    names = list(dict.fromkeys(r.get("dataset_name", r["dataset"]) for r in rows))
    return [n for n in PAPER_ORDER if n in names] + [n for n in names if n not in PAPER_ORDER]


def _pivot(rows: Sequence[dict], metric: str, first_col: str = "Method") -> tuple[list[dict], list[str]]:
    datasets = _dataset_order(rows)
    labels = list(dict.fromkeys(r["label"] for r in rows))
    table = []
    for label in labels:
        row: dict[str, Any] = {first_col: label}
        vals = []
        for ds in datasets:
            v = next((r.get(metric) for r in rows if r["label"] == label
                      and r.get("dataset_name", r["dataset"]) == ds), None)
            row[ds] = v
            if v is not None:
                vals.append(v)
        row["Avg"] = sum(vals) / len(vals) if vals else None
        table.append(row)
    return table, [first_col, *datasets, "Avg"]


def main_table(rows: Sequence[dict]) -> tuple[list[dict], list[str]]:
    """Methods × datasets of the headline score (QA F1 ×100; counterfactual F1 on CofCA-shaped files)."""
    return _pivot(rows, "score")


def ablation_table(rows: Sequence[dict]) -> tuple[list[dict], list[str]] | None:
    """The Table 3 ablation, when the labels include at least one ablation (e.g. "SFT-only")."""
    norm = {_norm_label(r["label"]) for r in rows}
    if not norm & _ABLATION_MARKERS:
        return None
    table, cols = main_table(rows)
    by_norm = {_norm_label(t["Method"]): t for t in table}
    out = []
    for keys, name in ABLATIONS:
        hit = next((by_norm[k] for k in keys if k in by_norm), None)
        if hit is not None:
            out.append(dict(hit, Method=name if _norm_label(hit["Method"]) in keys else hit["Method"]))
    return out, cols


def counterfactual_table(rows: Sequence[dict]) -> list[dict]:
    """Per method and counterfactual file: F1 on counterfactual items, on factual controls, memorised share."""
    out = []
    for r in rows:
        if r.get("kind") != "counterfactual":
            continue
        out.append({"Method": r["label"], "Dataset": r.get("dataset_name", r["dataset"]),
                    "n (cf / control)": f"{r.get('n_counterfactual', 0)} / {r.get('n_factual', 0)}",
                    "F1 counterfactual": r.get("f1_counterfactual"), "F1 factual control": r.get("f1_factual"),
                    "Answered from memory %": r.get("memorised_share")})
    return out


def grounding_table(rows: Sequence[dict]) -> list[dict]:
    """Format compliance and quote grounding of CARE-format methods (where a method quotes at all)."""
    out = []
    for r in rows:
        if r.get("format_rate") is None:
            continue
        out.append({"Method": r["label"], "Dataset": r.get("dataset_name", r["dataset"]),
                    "Format %": r.get("format_rate"), "Quotes/answer": r.get("quotes_per_item"),
                    "Exact %": r.get("quote_exact_share"), "Fuzzy %": r.get("quote_fuzzy_share"),
                    "In context %": r.get("quote_in_context_share"),
                    "Evidence BLEU": r.get("evidence_bleu"), "Evidence ROUGE-L": r.get("evidence_rouge_l")})
    return out


def bar_chart(table: Sequence[dict], columns: Sequence[str], path: str | Path, ylabel: str = "F1 ×100") -> Path:
    """Grouped bars: one group per dataset (and Avg), one bar per method."""
    import numpy as np

    groups = list(columns[1:])
    fig, ax = new_figure(max(6.4, 1.3 * len(groups) + 2), 4.0)
    n = max(1, len(table))
    width = 0.8 / n
    x = np.arange(len(groups))
    for i, row in enumerate(table):
        vals = [row.get(g) if row.get(g) is not None else 0.0 for g in groups]
        ax.bar(x + (i - (n - 1) / 2) * width, vals, width, label=str(row[columns[0]]))
    ax.set_xticks(x)
    ax.set_xticklabels(groups)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, max(5.0, max((row.get(g) or 0.0) for row in table for g in groups) * 1.15) if table else 100)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)


def viewer_records(rows: Sequence[dict], max_per_group: int | None = 20) -> list[dict]:
    """Prediction records for the viewer: up to ``max_per_group`` per (method, dataset), in file order."""
    records = []
    for r in rows:
        path = Path(r["run_dir"]) / r["predictions"]
        if not path.exists():
            continue
        for k, (_, rec) in enumerate(read_jsonl(path, skip_invalid=True)):
            if max_per_group is not None and k >= max_per_group:
                break
            records.append(dict(rec, label=r["label"], dataset_name=r.get("dataset_name", r["dataset"])))
    return records


def write_report(run_dirs: Sequence[str | Path], out_dir: str | Path, max_viewer_examples: int | None = 20
                 ) -> dict[str, Path]:
    """Write ``report.md``, ``results.csv``, ``scores.png`` and ``viewer.html`` for one or more runs."""
    from carelab.care.viewer import write_viewer

    if not run_dirs:
        raise InputError("RUN_DIR", "give at least one run directory")
    rows = collect_rows(run_dirs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table, cols = main_table(rows)
    paths = {"csv": write_csv(out / "results.csv", table, cols)}
    paths["png"] = bar_chart(table, cols, out / "scores.png") if table else None
    paths["viewer"] = write_viewer(viewer_records(rows, max_viewer_examples), out / "viewer.html")

    md = ["# CARE evaluation report", "",
          "Runs: " + ", ".join(f"`{d}`" for d in run_dirs), "",
          "## Results (F1 ×100)", "",
          "QA F1 is LongBench's `qa_f1_score` (max over gold answers) ×100; on counterfactual (CofCA-shaped) "
          "files the number is F1 against the altered gold on the counterfactual items. Avg is the mean over "
          "the datasets shown.", "",
          markdown_table(table, cols)]
    abl = ablation_table(rows)
    if abl:
        md += ["## Ablation (paper Table 3 layout)", "", markdown_table(abl[0], abl[1])]
    cf = counterfactual_table(rows)
    if cf:
        md += ["## Counterfactual fidelity", "",
               "F1 on the counterfactual items vs the factual controls, and the share of counterfactual items "
               "answered with the original (memorised) answer instead of the one the context states.", "",
               markdown_table(cf)]
    gr = grounding_table(rows)
    if gr:
        md += ["## Format and evidence grounding (CARE-format methods)", "",
               "Quotes are matched against the prompt the model saw: exact = case-sensitive substring; fuzzy = a "
               "same-length word window with difflib ratio ≥ 0.85 (the official retrieval-reward rule). Evidence "
               "BLEU/ROUGE-L compare the quotes with the gold supporting facts where the data labels them.", "",
               markdown_table(gr)]
    details = [{"Method": r["label"], "Dataset": r.get("dataset_name", r["dataset"]), "n": r.get("n"),
                "F1": r.get("f1"), "EM": r.get("em"), "F1 lenient": r.get("f1_lenient"),
                "truncated": r.get("n_truncated")} for r in rows]
    md += ["## Per-run details", "",
           "F1 lenient (a diagnostic, not the protocol): a CARE-format output without `Answer:` is read like a "
           "plain answer (first line after the reasoning), separating wrong answers from right answers in the "
           "wrong format.", "", markdown_table(details),
           "", "![scores](scores.png)" if paths["png"] else "",
           "", f"Evidence viewer: [viewer.html](viewer.html) (open in a browser; file `{paths['viewer']}`)", ""]
    paths["markdown"] = out / "report.md"
    paths["markdown"].write_text("\n".join(md))
    return paths


def results_text(run_dirs: Sequence[str | Path]) -> str:
    """The main table as Markdown (for printing at the end of a command)."""
    table, cols = main_table(collect_rows(run_dirs))
    return markdown_table(table, cols)


__all__ = ["write_report", "results_text", "main_table", "ablation_table", "counterfactual_table",
           "grounding_table", "collect_rows", "load_run"]
