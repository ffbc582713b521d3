"""Reports across runs: the paper-layout table with averages, the ablation table, counterfactual and
grounding tables, the PNG chart, the viewer, and ``report_command``."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from carelab.care.data.examples import Passage, QAExample
from carelab.care.eval.harness import EvalConfig, MethodSpec, run_eval
from carelab.care.eval.results import (
    ablation_table,
    collect_rows,
    difference_table,
    main_table,
    throughput_table,
    with_ci,
    write_report,
)
from carelab.runs import InputError

PASSAGES = [Passage("Alice", ["Alice was born in Paris.", "She studied law."]),
            Passage("Bob", ["Bob lives in Rome.", "He sells bread."])]

# Scripted answers per (label, question): F1 of each is 1 (right) or 0 (wrong), so averages are by hand.
RIGHT = "<think><retrieval>Alice was born in Paris.</retrieval></think>\nAnswer: {gold}"
WRONG = "<think>I think</think>\nAnswer: Nowhere"


def _write(path: Path, exs: list[QAExample]) -> str:
    path.write_text("".join(json.dumps(e.to_dict()) + "\n" for e in exs))
    return str(path)


def _runs(tmp_path, scripted_generation):
    multi = _write(tmp_path / "multihop.jsonl", [
        QAExample(f"m{i}", f"Where was Alice born? (m{i})", ["Paris"], PASSAGES, [("Alice", 0)]) for i in range(2)])
    cf = _write(tmp_path / "counterfactual.jsonl", [
        QAExample("c0", "Where was Alice born? (c0)", ["Berlin"], PASSAGES, meta={"counterfactual": True,
                                                                                  "original_answers": ["Paris"]}),
        QAExample("c1", "Where does Bob live? (c1)", ["Rome"], PASSAGES, meta={"counterfactual": False})])
    # Which items each label gets right: -> hand-computed scores below.
    right = {"original": {"m0", "c1"}, "SFT-only": {"m0", "m1", "c1"}, "CARE": {"m0", "m1", "c0", "c1"},
             "no-curriculum": {"m0", "c0"}}
    gold = {"m0": "Paris", "m1": "Paris", "c0": "Berlin", "c1": "Rome"}
    state = {"label": None}

    def reply(text: str) -> str:
        item = next(k for k in gold if f"({k})" in text)
        # A wrong answer on the counterfactual item is the memorised original answer.
        wrong = WRONG.replace("Nowhere", "Paris") if item == "c0" else WRONG
        return RIGHT.format(gold=gold[item]) if item in right[state["label"]] else wrong

    scripted_generation(reply)
    dirs = []
    for run, labels in (("base", ["original"]), ("trained", ["SFT-only", "CARE", "no-curriculum"])):
        for label in labels:  # one label per call so the fake knows whose answers to give
            state["label"] = label
            method = "original" if label == "original" else "care"
            run_eval(EvalConfig(model="tiny-random-qwen2", data=[multi, cf], out=str(tmp_path / run),
                                methods=[MethodSpec(method, label=label)], max_new_tokens=8, report=False),
                     progress=False)
        dirs.append(str(tmp_path / run))
    return dirs


def test_report_tables_chart_and_viewer(tmp_path, scripted_generation):
    runs = _runs(tmp_path, scripted_generation)
    # The trained run was extended label by label; its metrics keep every label evaluated there.
    labels = [r["label"] for r in json.loads((Path(runs[1]) / "metrics.json").read_text())["results"]]
    assert labels == ["SFT-only", "SFT-only", "CARE", "CARE", "no-curriculum", "no-curriculum"]
    out = tmp_path / "report"
    paths = write_report(runs, out)
    table, cols = main_table(collect_rows(runs))
    assert cols == ["Method", "multihop", "counterfactual", "Avg"]
    by = {r["Method"]: r for r in table}
    # multihop: share of m0/m1 right; counterfactual: c0 only (the counterfactual item) -> 0 or 100.
    assert (by["original"]["multihop"], by["original"]["counterfactual"], by["original"]["Avg"]) == (50.0, 0.0, 25.0)
    assert (by["SFT-only"]["multihop"], by["SFT-only"]["counterfactual"]) == (100.0, 0.0)
    assert (by["CARE"]["multihop"], by["CARE"]["counterfactual"], by["CARE"]["Avg"]) == (100.0, 100.0, 100.0)

    # 95 % bootstrap intervals by hand: two items scoring 100 and 0 resample to means 0, 50 or 100; one item is
    # a point; the Avg resamples each dataset separately (multihop 0/50/100, counterfactual always 0).
    shown = {r["Method"]: r for r in with_ci(table, cols)}
    assert (shown["original"]["multihop"], shown["original"]["counterfactual"], shown["original"]["Avg"]) == (
        "50.0 [0.0, 100.0]", "0.0 [0.0, 0.0]", "25.0 [0.0, 50.0]")
    assert (by["original"]["multihop_n"], by["original"]["counterfactual_n"], by["original"]["Avg_n"]) == (2, 1, 3)

    # A method evaluated on only some of the sets (an ablation) gets no Avg: it would average other sets.
    partial = [r for r in collect_rows(runs)
               if not (r["label"] == "CARE" and r.get("dataset_name", r["dataset"]) == "counterfactual")]
    by_partial = {r["Method"]: r for r in main_table(partial)[0]}
    assert by_partial["CARE"]["Avg"] is None and by_partial["original"]["Avg"] == 25.0

    abl, _ = ablation_table(collect_rows(runs))
    assert [r["Method"] for r in abl] == ["Baseline (Original)", "SFT only", "No curriculum", "CARE"]
    assert abl[2]["Avg"] == pytest.approx((50.0 + 100.0) / 2)

    md = paths["markdown"].read_text()
    assert "## Ablation (paper Table 3 layout)" in md and "## Counterfactual fidelity" in md
    assert "## Format and evidence grounding" in md and "## Paired differences" in md
    assert "| original | counterfactual | 1 / 1 | 0.0 [0.0, 0.0] | 100.0 [100.0, 100.0] | 100.0 [100.0, 100.0] |" in md
    assert "| original | 50.0 [0.0, 100.0] | 0.0 [0.0, 0.0] | 25.0 [0.0, 50.0] |" in md
    assert "## Throughput" in md and {r["Method"] for r in throughput_table(collect_rows(runs))} == {
        "original", "SFT-only", "CARE", "no-curriculum"}
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = paths["viewer"].read_text()
    assert html.count('<section class="item"') == 4  # one card per item (2 datasets × 2) ...
    assert len(re.findall(r'<div class="col" data-method=', html)) == 4 * 4  # ... with a column per label
    assert 'class="q q-exact"' in html
    assert (out / "results.csv").read_text().splitlines()[0] == (
        "Method,multihop,multihop_lo,multihop_hi,multihop_n,counterfactual,counterfactual_lo,counterfactual_hi,"
        "counterfactual_n,Avg,Avg_lo,Avg_hi,Avg_n")
    # one per-item row per (label, dataset, item): 4 labels × (2 multihop + 2 counterfactual items)
    with (out / "items.csv").open() as fh:
        items = list(csv.DictReader(fh))
    assert len(items) == 4 * 4 and {r["method"] for r in items} == {"original", "SFT-only", "CARE", "no-curriculum"}
    care_multihop = [r for r in items if r["method"] == "CARE" and r["dataset"] == "multihop"]
    assert [float(r["f1"]) for r in care_multihop] == [1.0, 1.0]  # CARE's multihop cell is 100.0, as above
    assert "[items.csv](items.csv)" in md


def test_paired_differences_hand_computed(tmp_path, scripted_generation):
    """Per-item differences on the same items, resampled jointly; Avg resamples within each dataset."""
    diff = {r["Comparison"]: r for r in difference_table(collect_rows(_runs(tmp_path, scripted_generation)))}
    assert list(diff) == ["SFT-only − original", "CARE − original", "no-curriculum − original",
                          "CARE − SFT-only", "no-curriculum − SFT-only"]
    # SFT-only vs original: multihop differences (0, 100); the counterfactual item is wrong for both.
    assert [diff["SFT-only − original"][k] for k in ("multihop", "counterfactual", "Avg", "n (pairs)")] == [
        "+50.0 [0.0, 100.0]", "+0.0 [0.0, 0.0]", "+25.0 [0.0, 50.0]", "2 / 1"]
    # Every resample of CARE − original is positive on the counterfactual item and on the average: marked *.
    assert diff["CARE − original"]["counterfactual"] == "+100.0 [100.0, 100.0] *"
    assert diff["CARE − original"]["Avg"] == "+75.0 [50.0, 100.0] *"
    # Equal per-item differences (0, 0) on multihop: a zero-width interval at the point.
    assert diff["CARE − SFT-only"]["multihop"] == "+0.0 [0.0, 0.0]"
    assert diff["no-curriculum − SFT-only"]["multihop"] == "-50.0 [-100.0, 0.0]"


def test_report_command_and_errors(tmp_path, scripted_generation):
    import typer
    from typer.testing import CliRunner

    from carelab.care.cli.eval import report_command

    runs = _runs(tmp_path, scripted_generation)
    app = typer.Typer()
    app.command()(report_command)
    res = CliRunner().invoke(app, [runs[0]])
    assert res.exit_code == 0, res.output
    assert "| original | 50.0 [0.0, 100.0] | 0.0 [0.0, 0.0] | 25.0 [0.0, 50.0] |" in res.output
    assert (Path(runs[0]) / "viewer.html").exists()
    res = CliRunner().invoke(app, [runs[0], runs[1]])
    assert res.exit_code == 2 and "--out" in res.output
    res = CliRunner().invoke(app, [str(tmp_path / "nope")])
    assert res.exit_code == 2 and "metrics.json" in res.output and "Traceback" not in res.output
    with pytest.raises(InputError):
        write_report([], tmp_path / "x")


def test_same_label_in_two_runs_is_disambiguated(tmp_path, scripted_generation):
    runs = _runs(tmp_path, scripted_generation)
    rows = collect_rows([runs[0], runs[0]])
    labels = list(dict.fromkeys(r["label"] for r in rows))
    assert labels == ["original"]  # the same directory twice is not a clash
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(runs[0], copy)
    labels = list(dict.fromkeys(r["label"] for r in collect_rows([runs[0], str(copy)])))
    assert labels == ["original", "original [copy]"]


def test_runs_without_intervals_still_render(tmp_path, scripted_generation):
    """metrics.json written before the CI fields existed: plain means, no paired-difference section."""
    runs = _runs(tmp_path, scripted_generation)
    path = Path(runs[0]) / "metrics.json"
    data = json.loads(path.read_text())
    data["results"] = [{k: v for k, v in r.items() if not k.endswith(("_lo", "_hi")) and k != "item_scores"}
                       for r in data["results"]]
    path.write_text(json.dumps(data))
    md = write_report([runs[0]], tmp_path / "old")["markdown"].read_text()
    assert "| original | 50.0 | 0.0 | 25.0 |" in md and "## Paired differences" not in md


def test_grounding_differences_against_sft_only(tmp_path, scripted_generation):
    """Per-item format / pooled quote shares of each CARE-format method minus SFT-only, from the predictions."""
    from carelab.care.eval.results import grounding_difference_table

    runs = _runs(tmp_path, scripted_generation)
    table = grounding_difference_table(collect_rows(runs))
    by = {(r["Comparison"], r["Dataset"]): r for r in table}
    assert set(by) == {(c, d) for c in ("CARE − SFT-only", "no-curriculum − SFT-only")
                       for d in ("multihop", "counterfactual", "all sets")}
    # multihop: both answer m0, m1 right with the same exact quote -> no difference, zero width
    same = by[("CARE − SFT-only", "multihop")]
    assert (same["n (items)"], same["Format pts"], same["Exact-quote share pts"]) == (2, "+0.0 [0.0, 0.0]",
                                                                                      "+0.0 [0.0, 0.0]")
    # no-curriculum misses m1 (no quote, not well-formed) where SFT-only quotes: format 0 vs 100 on one of two
    worse = by[("no-curriculum − SFT-only", "multihop")]
    assert worse["Format pts"] == "-50.0 [-100.0, 0.0]"
    # every quote anyone made is exact, so pooled shares agree even where the number of quotes differs
    assert by[("no-curriculum − SFT-only", "all sets")]["Exact-quote share pts"] == "+0.0 [0.0, 0.0]"
    assert by[("CARE − SFT-only", "all sets")]["n (items)"] == 4
    md = write_report(runs, tmp_path / "report")["markdown"].read_text()
    assert "## Paired differences in grounding (vs SFT-only)" in md
    # per-item means carry intervals from the predictions: CARE quotes once on every multi-hop item
    from carelab.care.eval.results import grounding_table

    care = next(r for r in grounding_table(collect_rows(runs)) if r["Method"] == "CARE" and r["Dataset"] == "multihop")
    assert care["Quotes/answer"] == "1.00 [1.00, 1.00]"
