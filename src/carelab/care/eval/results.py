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
from collections.abc import Iterator, Sequence
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
#: How every interval in the report is made (stated once under the results table).
CI_NOTE = ("Brackets: 95 % percentile-bootstrap interval over items (2000 resamples, seed 0); per-item n is "
           "in the per-run details.")
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


def _row_for(rows: Sequence[dict], label: str, ds: str) -> dict | None:
    return next((r for r in rows if r["label"] == label and r.get("dataset_name", r["dataset"]) == ds), None)


def _pivot(rows: Sequence[dict], metric: str, first_col: str = "Method") -> tuple[list[dict], list[str]]:
    """Labels × datasets of ``metric`` plus ``Avg``; each cell also has ``<col>_lo``/``_hi``/``_n`` when known.

    The Avg interval is a stratified bootstrap over the per-item scores of the datasets
    (``stats.mean_of_means_ci``), so it weighs datasets equally, as the Avg itself does. A row missing some of the
    datasets (an ablation evaluated on two sets) has no Avg: its mean would be over other sets than its neighbours'.
    """
    from carelab.stats import mean_of_means_ci

    datasets = _dataset_order(rows)
    labels = list(dict.fromkeys(r["label"] for r in rows))
    table = []
    for label in labels:
        row: dict[str, Any] = {first_col: label}
        vals, items = [], []
        for ds in datasets:
            r = _row_for(rows, label, ds) or {}
            v = r.get(metric)
            row[ds] = v
            row[f"{ds}_lo"], row[f"{ds}_hi"] = r.get(f"{metric}_lo"), r.get(f"{metric}_hi")
            row[f"{ds}_n"] = r.get(f"{metric}_n", r.get("n")) if r else None
            if v is not None:
                vals.append(v)
                items.append(r.get("item_scores") if metric == "score" else None)
        complete = bool(vals) and len(vals) == len(datasets)  # a mean over fewer sets is not comparable
        row["Avg"] = sum(vals) / len(vals) if complete else None
        row["Avg_lo"] = row["Avg_hi"] = None
        if complete and all(isinstance(x, dict) and x for x in items):
            est = mean_of_means_ci([list(x.values()) for x in items])
            row["Avg_lo"], row["Avg_hi"], row["Avg_n"] = est.lo, est.hi, est.n
        table.append(row)
    return table, [first_col, *datasets, "Avg"]


def with_ci(table: Sequence[dict], columns: Sequence[str], digits: int = 1) -> list[dict]:
    """The table with every numeric cell rendered as ``42.9 [31.2, 54.0]`` (for Markdown and the console)."""
    from carelab.stats import format_ci

    out = []
    for row in table:
        cells = dict(row)
        for col in columns:
            value = row.get(col)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                cells[col] = format_ci(value, row.get(f"{col}_lo"), row.get(f"{col}_hi"), digits)
        out.append(cells)
    return out


def ci_columns(columns: Sequence[str]) -> list[str]:
    """CSV columns: each value column followed by its ``_lo``, ``_hi`` and ``_n``."""
    return [columns[0]] + [c for col in columns[1:] for c in (col, f"{col}_lo", f"{col}_hi", f"{col}_n")]


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


#: the eval label of the bundled adapter's row (as `carelab care reproduce` writes it; `care ship` compares with it)
BUNDLED_LABEL = "CARE (bundled)"
#: Reference rows of the paired comparisons (normalised labels -> name), as `carelab care reproduce` labels them.
ORIGINAL_REF = (("original", "baseline"), "Original")
SFT_REF = (("sftonly", "sft"), "SFT-only")
BUNDLED_REF = (("carebundled", "bundled"), BUNDLED_LABEL)
REFERENCES = (ORIGINAL_REF, SFT_REF, BUNDLED_REF)


def paired_comparison(rows: Sequence[dict], label: str, ref: str) -> tuple[dict[str, Any], Any]:
    """``label`` − ``ref`` on their common items: per dataset ``(Estimate, per-item differences)`` and the Avg
    (stratified bootstrap of the per-dataset mean differences; ``None`` when no dataset has common items)."""
    from carelab.stats import mean_of_means_ci, paired_difference_ci

    per_dataset: dict[str, Any] = {}
    for ds in _dataset_order(rows):
        a, b = _row_for(rows, label, ds), _row_for(rows, ref, ds)
        sa, sb = (a or {}).get("item_scores") or {}, (b or {}).get("item_scores") or {}
        common = [i for i in sa if i in sb]
        if common:
            per_dataset[ds] = (paired_difference_ci([sa[i] for i in common], [sb[i] for i in common]),
                               [sa[i] - sb[i] for i in common])
    avg = mean_of_means_ci([d for _, d in per_dataset.values()]) if per_dataset else None
    return per_dataset, avg


def difference_table(rows: Sequence[dict]) -> list[dict]:
    """Paired differences of the headline score: every method − Original, − SFT-only and − the bundled adapter,
    per dataset and Avg.

    Paired = the same items, each item's difference resampled (``stats.paired_difference_ci``); the Avg
    difference is the stratified bootstrap of the per-dataset mean differences. Cells are
    ``+3.1 [-2.0, 8.4]``; an interval that excludes 0 is marked ``*``. Needs ``item_scores`` in the runs'
    metrics (``carelab care eval`` writes them; re-running it on an older run directory adds them).
    """
    from carelab.stats import format_ci

    datasets = _dataset_order(rows)
    labels = list(dict.fromkeys(r["label"] for r in rows))
    out = []
    done: set[str] = set()
    for keys, _name in REFERENCES:
        ref = next((lb for lb in labels if _norm_label(lb) in keys), None)
        if ref is None:
            continue
        done.add(ref)
        for label in labels:
            if label in done:
                continue
            per_dataset, avg = paired_comparison(rows, label, ref)
            if avg is None:
                continue
            cells: dict[str, Any] = {"Comparison": f"{label} − {ref}"}
            for ds in datasets:
                est = per_dataset.get(ds, (None,))[0]
                cells[ds] = None if est is None else _marked(format_ci(est.mean, est.lo, est.hi, signed=True), est)
            cells["Avg"] = _marked(format_ci(avg.mean, avg.lo, avg.hi, signed=True), avg)
            cells["n (pairs)"] = " / ".join(str(per_dataset[ds][0].n) if ds in per_dataset else "–"
                                            for ds in datasets)
            out.append(cells)
    return out


def _marked(text: str, est) -> str:
    """Append ``*`` when the interval excludes 0 (the items tell the two methods apart)."""
    excludes_zero = est.lo is not None and (est.lo > 0 or est.hi < 0)
    return f"{text} *" if excludes_zero else text


def _ci(r: dict, key: str) -> str:
    from carelab.stats import format_ci

    return format_ci(r.get(key), r.get(f"{key}_lo"), r.get(f"{key}_hi"))


def counterfactual_table(rows: Sequence[dict]) -> list[dict]:
    """Per method and counterfactual file: F1 on counterfactual items, on factual controls, memorised share."""
    out = []
    for r in rows:
        if r.get("kind") != "counterfactual":
            continue
        out.append({"Method": r["label"], "Dataset": r.get("dataset_name", r["dataset"]),
                    "n (cf / control)": f"{r.get('n_counterfactual', 0)} / {r.get('n_factual', 0)}",
                    "F1 counterfactual": _ci(r, "f1_counterfactual"), "F1 factual control": _ci(r, "f1_factual"),
                    "Answered from memory %": _ci(r, "memorised_share")})
    return out


def grounding_table(rows: Sequence[dict]) -> list[dict]:
    """Format compliance and quote grounding of CARE-format methods (where a method quotes at all); the per-item
    means (quotes per answer, evidence BLEU/ROUGE-L) get their intervals from the run's predictions."""
    from carelab.stats import bootstrap_ci, format_ci

    def item_ci(items: dict[str, dict], key: str, fallback: float | None, digits: int = 1) -> str:
        values = [v[key] for v in items.values() if v[key] is not None]
        if not values:
            return format_ci(fallback, digits=digits)
        est = bootstrap_ci(values)
        return format_ci(est.mean, est.lo, est.hi, digits=digits)

    out = []
    for r in rows:
        if r.get("format_rate") is None:
            continue
        items = _grounding_items(r)
        out.append({"Method": r["label"], "Dataset": r.get("dataset_name", r["dataset"]), "n": r.get("n"),
                    "Format %": _ci(r, "format_rate"),
                    "Quotes/answer": item_ci(items, "quotes", r.get("quotes_per_item"), digits=2),
                    "Exact %": _ci(r, "quote_exact_share"), "Fuzzy %": _ci(r, "quote_fuzzy_share"),
                    "In context %": _ci(r, "quote_in_context_share"),
                    "Evidence BLEU": item_ci(items, "bleu", r.get("evidence_bleu")),
                    "Evidence ROUGE-L": item_ci(items, "rouge", r.get("evidence_rouge_l"))})
    return out


def _predictions(r: dict) -> Iterator[tuple[dict, int, int, int]]:
    """The prediction records of one (method, dataset) row (none when its file is gone)."""
    path = Path(r["run_dir"]) / r["predictions"] if r.get("predictions") else None
    if path is None or not path.exists():
        return
    for _, rec in read_jsonl(path, skip_invalid=True):
        labels = [q.get("match") for q in rec.get("quotes") or []]
        yield rec, len(labels), labels.count("exact"), labels.count("fuzzy")


def _grounding_items(r: dict) -> dict[str, dict]:
    """Per-item grounding facts of one (method, dataset) row, by item id, from its predictions file."""
    return {str(rec.get("id")): {"format": 100.0 * bool(rec.get("well_formed")), "quotes": n, "exact": exact,
                                 "in_context": exact + fuzzy, "rouge": rec.get("evidence_rouge_l"),
                                 "bleu": rec.get("evidence_bleu")}
            for rec, n, exact, fuzzy in _predictions(r)}


ITEM_COLUMNS = ["method", "dataset", "id", "counterfactual", "f1", "em", "well_formed", "n_quotes", "n_exact",
                "n_fuzzy", "evidence_rouge_l"]


def item_rows(rows: Sequence[dict]) -> list[dict]:
    """One row per (method, dataset, item) from the predictions files: what every interval in the report resamples,
    so a reader can recompute any cell or paired difference without the run folder."""
    return [{"method": r["label"], "dataset": r.get("dataset_name", r["dataset"]), "id": rec.get("id"),
             "counterfactual": rec.get("counterfactual"), "f1": rec.get("f1"), "em": rec.get("em"),
             "well_formed": rec.get("well_formed"), "n_quotes": n, "n_exact": exact, "n_fuzzy": fuzzy,
             "evidence_rouge_l": rec.get("evidence_rouge_l")}
            for r in rows for rec, n, exact, fuzzy in _predictions(r)]


def grounding_difference_table(rows: Sequence[dict]) -> list[dict]:
    """What GRPO changed in the *quoting*: every CARE-format method − SFT-only on the same items, per dataset and
    pooled over all of them: format points, exact-quote and in-context share points (pooled over quotes, items
    resampled jointly), evidence ROUGE-L (items where both have gold evidence). ``*`` = interval excludes 0."""
    grounded = [r for r in rows if r.get("format_rate") is not None]
    labels = list(dict.fromkeys(r["label"] for r in grounded))
    ref = next((lb for lb in labels if _norm_label(lb) in SFT_REF[0]), None)
    if ref is None:
        return []
    out = []
    for label in labels:
        if label == ref:
            continue
        pooled: list[tuple[dict, dict]] = []
        n_sets = 0
        for ds in _dataset_order(grounded):
            a, b = _row_for(grounded, label, ds), _row_for(grounded, ref, ds)
            if a is None or b is None:
                continue
            ia, ib = _grounding_items(a), _grounding_items(b)
            pairs = [(ia[i], ib[i]) for i in ia if i in ib]
            if pairs:
                pooled += pairs
                n_sets += 1
                out.append(_grounding_row(f"{label} − {ref}", ds, pairs))
        if n_sets > 1:
            out.append(_grounding_row(f"{label} − {ref}", "all sets", pooled))
    return out


def _grounding_row(comparison: str, dataset: str, pairs: list[tuple[dict, dict]]) -> dict:
    """One row of :func:`grounding_difference_table` from (method, reference) per-item facts."""
    from carelab.stats import format_ci, paired_difference_ci, paired_ratio_difference_ci

    def cell(est, scale: float = 1.0) -> str:
        if est.mean is None:
            return "–"
        return _marked(format_ci(est.mean * scale, est.lo * scale, est.hi * scale, signed=True), est)

    def share(key: str) -> str:
        return cell(paired_ratio_difference_ci([x[key] for x, _ in pairs], [x["quotes"] for x, _ in pairs],
                                               [y[key] for _, y in pairs], [y["quotes"] for _, y in pairs]), 100.0)

    both = [(x["rouge"], y["rouge"]) for x, y in pairs if x["rouge"] is not None and y["rouge"] is not None]
    return {"Comparison": comparison, "Dataset": dataset, "n (items)": len(pairs),
            "Format pts": cell(paired_difference_ci([x["format"] for x, _ in pairs], [y["format"] for _, y in pairs])),
            "Exact-quote share pts": share("exact"), "In-context share pts": share("in_context"),
            "Evidence ROUGE-L": cell(paired_difference_ci([x for x, _ in both], [y for _, y in both]))
            if both else "–",
            "n (ROUGE-L)": len(both)}


def throughput_table(rows: Sequence[dict]) -> list[dict]:
    """Generation throughput per method label (items generated / seconds, summed over its datasets)."""
    out = []
    for label in dict.fromkeys(r["label"] for r in rows):
        mine = [r for r in rows if r["label"] == label and r.get("gen_seconds")]
        seconds = sum(float(r["gen_seconds"]) for r in mine)
        items = sum(int(r.get("n_timed") or 0) for r in mine)
        if items and seconds > 0:
            out.append({"Method": label, "items": items, "seconds": seconds, "items/s": items / seconds})
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
        # 95 % bootstrap intervals as error bars (zero-length where a cell has none).
        pairs = list(zip(groups, vals, strict=True))
        err = [[max(0.0, v - row[f"{g}_lo"]) if row.get(f"{g}_lo") is not None else 0.0 for g, v in pairs],
               [max(0.0, row[f"{g}_hi"] - v) if row.get(f"{g}_hi") is not None else 0.0 for g, v in pairs]]
        ax.bar(x + (i - (n - 1) / 2) * width, vals, width, yerr=err, capsize=2, label=str(row[columns[0]]))
    ax.set_xticks(x)
    ax.set_xticklabels(groups)
    ax.set_ylabel(ylabel)
    top = max(max(row.get(f"{g}_hi") or 0.0, row.get(g) or 0.0) for row in table for g in groups) if table else 0.0
    ax.set_ylim(0, max(5.0, top * 1.15) if table else 100)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)


def viewer_records(rows: Sequence[dict], max_per_group: int | None = 20) -> list[dict]:
    """Prediction records for the viewer: the same ``max_per_group`` items of each dataset for every method.

    Why: the viewer puts every method's answer to an item side by side, so each method contributes the
    same items; items every method evaluated come first (complete cards), then file order.
    """
    from carelab.care.eval.viewer import item_key

    sources = []  # (label, dataset, predictions file)
    for r in rows:
        path = Path(r["run_dir"]) / r["predictions"]
        if path.exists():
            sources.append((r["label"], r.get("dataset_name", r["dataset"]), path))
    # First pass: which methods evaluated which items, keeping only ids (contexts can be long).
    coverage: dict[str, dict[str, set[str]]] = {}  # dataset -> item id -> labels
    for label, ds, path in sources:
        for _, rec in read_jsonl(path, skip_invalid=True):
            coverage.setdefault(ds, {}).setdefault(item_key(dict(rec, dataset_name=ds))[1], set()).add(label)
    chosen: dict[str, list[str]] = {}
    for ds, items in coverage.items():
        order = sorted(items, key=lambda k: -len(items[k]))  # stable: file order among equally covered items
        chosen[ds] = order if max_per_group is None else order[:max(max_per_group, 0)]
    # Second pass: those items' records, grouped by dataset and item, methods in row order.
    found: dict[tuple[str, str], dict[str, dict]] = {}
    for label, ds, path in sources:
        wanted = set(chosen.get(ds, ()))
        for _, rec in read_jsonl(path, skip_invalid=True):
            rec = dict(rec, label=label, dataset_name=ds)
            key = item_key(rec)
            if key[1] in wanted:
                found.setdefault(key, {}).setdefault(label, rec)
    return [rec for ds, ids in chosen.items() for k in ids for rec in found.get((ds, k), {}).values()]


def write_report(run_dirs: Sequence[str | Path], out_dir: str | Path, max_viewer_examples: int | None = 20
                 ) -> dict[str, Path]:
    """Write ``report.md``, ``results.csv``, ``items.csv`` (per-item scores), ``scores.png`` and ``viewer.html``."""
    from carelab.care.eval.viewer import write_viewer

    if not run_dirs:
        raise InputError("RUN_DIR", "give at least one run directory")
    rows = collect_rows(run_dirs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table, cols = main_table(rows)
    paths = {"csv": write_csv(out / "results.csv", table, ci_columns(cols)),
             "items": write_csv(out / "items.csv", item_rows(rows), ITEM_COLUMNS)}
    paths["png"] = bar_chart(table, cols, out / "scores.png") if table else None
    paths["viewer"] = write_viewer(viewer_records(rows, max_viewer_examples), out / "viewer.html")

    md = ["# CARE evaluation report", "",
          "Runs: " + ", ".join(f"`{d}`" for d in run_dirs), "",
          "## Results (F1 ×100)", "",
          "QA F1 is LongBench's `qa_f1_score` (max over gold answers) ×100; on counterfactual (CofCA-shaped) "
          "files the number is F1 against the altered gold on the counterfactual items. Avg is the mean over "
          "the datasets shown, left out (–) for a method evaluated on only some of them. "
          f"{CI_NOTE}", "",
          markdown_table(with_ci(table, cols), cols)]
    diff = difference_table(rows)
    if diff:
        md += ["## Paired differences (F1 ×100)", "",
               "Each method minus the reference on the *same* items: the per-item differences are resampled "
               "jointly (paired bootstrap, 2000 resamples), which removes the item difficulty both methods share; "
               "Avg resamples within each dataset and covers the datasets with pairs (see n). `*` = the 95 % "
               "interval excludes 0, i.e. these items tell the two apart; otherwise the difference may be noise.", "",
               markdown_table(diff)]
    abl = ablation_table(rows)
    if abl:
        md += ["## Ablation (paper Table 3 layout)", "", markdown_table(with_ci(abl[0], abl[1]), abl[1])]
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
               "same-length word window with difflib ratio ≥ 0.85 (the official retrieval-reward rule). Quote "
               "shares are over all quotes, their intervals from resampling items. Evidence "
               "BLEU/ROUGE-L compare the quotes with the gold supporting facts where the data labels them.", "",
               markdown_table(gr)]
    grd = grounding_difference_table(rows)
    if grd:
        md += ["## Paired differences in grounding (vs SFT-only)", "",
               "What training after SFT changed in the quoting, on the same items: format and evidence ROUGE-L "
               "per item; exact-quote and in-context shares pooled over each method's quotes, the items "
               "resampled jointly (2000 resamples). `*` = the 95 % interval excludes 0.", "",
               markdown_table(grd)]
    details = [{"Method": r["label"], "Dataset": r.get("dataset_name", r["dataset"]), "n": r.get("n"),
                "F1": _ci(r, "f1"), "EM": _ci(r, "em"), "F1 lenient": _ci(r, "f1_lenient"),
                "truncated": r.get("n_truncated"), "items/s": r.get("items_per_s")} for r in rows]
    md += ["## Per-run details", "",
           "F1 lenient (a diagnostic, not the protocol): a CARE-format output without `Answer:` is read like a "
           "plain answer (first line after the reasoning), separating wrong answers from right answers in the "
           "wrong format. items/s = generated items per second of generation wall time.", "",
           markdown_table(details)]
    speed = throughput_table(rows)
    if speed:
        md += ["## Throughput", "", "Generation wall time summed over a method's datasets (all runs resumed "
               "into the directory): a timing of this run on this machine, not a quality comparison; n = items. "
               "Engine speed-ups are measured as ratios in one run by `benchmarks/eval_throughput.py`.", "",
               markdown_table(speed)]
    md += ["", "![scores](scores.png)" if paths["png"] else "",
           "", f"Evidence viewer: [viewer.html](viewer.html) (open in a browser; file `{paths['viewer']}`)", "",
           "Per-item scores of every row, so each interval above can be recomputed: [items.csv](items.csv)", ""]
    paths["markdown"] = out / "report.md"
    paths["markdown"].write_text("\n".join(md))
    return paths


def results_text(run_dirs: Sequence[str | Path]) -> str:
    """The main table (with 95 % intervals) and the paired differences as Markdown, for the console."""
    rows = collect_rows(run_dirs)
    table, cols = main_table(rows)
    text = markdown_table(with_ci(table, cols), cols)
    diff = difference_table(rows)
    return text + ("\nPaired differences (* = 95 % interval excludes 0):\n\n" + markdown_table(diff) if diff else "")


__all__ = ["write_report", "results_text", "main_table", "ablation_table", "counterfactual_table",
           "grounding_table", "difference_table", "throughput_table", "with_ci", "collect_rows", "load_run"]
