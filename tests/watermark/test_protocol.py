"""HumanEval plumbing, metrics and the CLI of the robustness experiment."""

from __future__ import annotations

import gzip
import json
from itertools import product

import numpy as np
import pytest
from typer.testing import CliRunner

from carelab.runs import InputError
from carelab.watermark.cli import app, parse_depths
from carelab.watermark.humaneval import (
    build_program,
    completion_of,
    extract_code,
    load_problems,
    scored_text,
    truncate,
)
from carelab.watermark.robustness import (
    RobustnessConfig,
    compute_metrics,
    roc_auc,
    token_share_changed,
    tpr_at_fpr,
)


def test_bundled_problems_load():
    problems = load_problems()
    assert len(problems) == 164 and problems[0].task_id == "HumanEval/0"
    assert len(load_problems(limit=5)) == 5


def test_bad_problem_file_names_line_and_field(tmp_path):
    path = tmp_path / "he.jsonl.gz"
    with gzip.open(path, "wt") as fh:
        fh.write(json.dumps({"task_id": "x", "prompt": "p", "entry_point": "f", "canonical_solution": "s",
                             "test": "t"}) + "\n")
        fh.write(json.dumps({"task_id": "y", "prompt": "p", "entry_point": 3}) + "\n")
    with pytest.raises(InputError, match=r"line 2, field 'entry_point'"):
        load_problems(path)
    with pytest.raises(InputError, match="no such file"):
        load_problems(tmp_path / "missing.jsonl")


def test_scored_text_keeps_only_the_completion_body():
    program = (
        "from typing import List\n\n\ndef f(xs: List[int]) -> int:\n    \"\"\"Sum.\n    >>> f([1])\n    1\n    \"\"\"\n"
        "    import math\n\n    total = 0\n    for x in xs:\n        total += x\n    return total\n"
    )
    assert scored_text(program, "f") == "    total = 0\n    for x in xs:\n        total += x\n    return total"
    # a chat reply redefines the function after the prompt's stub: the last definition is scored
    stub = 'def f(xs):\n    """doc"""\n'
    prog = build_program(type("P", (), {"prompt": stub})(), "def f(xs):\n    return 1\n", "chat")
    assert scored_text(prog, "f") == "    return 1"


def test_completion_clean_up():
    assert truncate("    return 1\n\ndef other():\n    pass") == "    return 1\n"
    assert truncate("    return x\nprint(f(2))") == "    return x\n"
    reply = "Here:\n```python\ndef f(x):\n    return x\n\nprint(f(1))\n```\nThis works because..."
    assert extract_code(reply) == "def f(x):\n    return x\n"
    assert completion_of(reply, "chat") == extract_code(reply)


def test_auc_and_tpr_at_fpr_match_brute_force():
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(2, 1, 40).round(1), rng.normal(0, 1, 30).round(1)
    brute = np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p, n in product(pos, neg)])
    assert roc_auc(pos, neg) == pytest.approx(brute)
    thr = max(neg)  # fewer than 100 negatives: 1 % FPR means no negative above the threshold
    assert tpr_at_fpr(pos, neg) == pytest.approx(np.mean(pos > thr))
    assert roc_auc([], [1.0]) is None


def test_token_share_changed():
    assert token_share_changed([1, 2, 3], [1, 2, 3]) == 0.0
    assert token_share_changed([1, 2, 3], [1, 9, 2, 3]) == pytest.approx(0.25)
    assert token_share_changed([1, 2], []) == 0.0


def test_metrics_on_planted_detections():
    cfg = RobustnessConfig(schemes=["kgw"], transforms=["rename"], depths=[1])

    def rec(variant, i, t, z0, z1):
        depths = {"0": {"z": {"kgw": z0}, "changed": 0.0}} if t == "original" else \
            {"1": {"z": {"kgw": z1}, "changed": 0.1}}
        return {"id": f"{variant}:{i}|{t}", "gen": f"{variant}:{i}", "variant": variant, "transform": t,
                "depths": depths}

    dets = {}
    for i in range(10):
        for t in ("original", "rename"):
            r = rec("kgw", i, t, 5.0 if i < 8 else 1.0, 4.0 if i < 5 else 0.0)
            dets[r["id"]] = r
            r = rec("plain", i, t, 0.5 if i else 3.5, 0.0)
            dets[r["id"]] = r
    execs = {f"kgw:{i}": {"status": "pass" if i < 3 else "fail"} for i in range(10)}
    checks = {f"kgw:{i}|rename": {"status": "pass" if i < 3 else "fail"} for i in range(10)}
    all_rows = compute_metrics(cfg, dets, checks, execs)
    assert {r["scheme"] for r in all_rows} == {"kgw", "kgw-win"}
    assert all(r["n_pos"] == 0 for r in all_rows if r["scheme"] == "kgw-win")  # no windowed z recorded
    rows = {(r["transform"], r["depth"]): r for r in all_rows if r["scheme"] == "kgw"}
    orig, ren = rows[("original", 0)], rows[("rename", 1)]
    assert (orig["tpr"], orig["fpr"]) == (0.8, 0.1)
    assert orig["tpr_lo"] < 0.8 < orig["tpr_hi"] and orig["auc_lo"] <= orig["auc"] <= orig["auc_hi"]
    assert (ren["tpr"], ren["fpr"]) == (0.5, 0.0)
    assert ren["pass1_before"] == ren["pass1_after"] == 0.3 and ren["same_outcome"] == 1.0
    assert ren["tokens_changed"] == pytest.approx(0.1)


def test_parse_depths():
    assert parse_depths("1..5") == [1, 2, 3, 4, 5]
    assert parse_depths("5") == [5]
    assert parse_depths("3,1") == [1, 3]
    with pytest.raises(ValueError):
        parse_depths("0..2")


@pytest.mark.parametrize("args,message", [
    (["--depth", "x"], "--depth"),
    (["--scheme", "minhash"], "--scheme"),
    (["--transforms", "paraphrase"], "--transforms"),
])
def test_cli_bad_options_are_one_line_errors(tmp_path, args, message):
    result = CliRunner().invoke(app, ["robustness", "--out", str(tmp_path), *args])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


def test_cli_transform_and_sandbox(tmp_path):
    src = tmp_path / "p.py"
    src.write_text("def f(x):\n    y = x * 2\n    return y\n")
    out = CliRunner().invoke(app, ["transform", str(src), "--name", "mixed", "--depth", "3"])
    assert out.exit_code == 0 and out.output != src.read_text()
    bad = tmp_path / "bad.py"
    bad.write_text("def f(:\n")
    out = CliRunner().invoke(app, ["transform", str(bad)])
    assert out.exit_code == 2 and "not valid Python" in out.output
    out = CliRunner().invoke(app, ["sandbox", str(src)])
    assert out.exit_code == 0 and json.loads(out.output)["status"] == "pass"


def test_end_to_end_tiny_model_resumes(tmp_path):
    """The whole pipeline on a tiny random model; a rerun reuses the caches instead of regenerating."""
    args = ["robustness", "--model", "tiny-random-qwen2", "--limit", "1", "--max-new-tokens", "6",
            "--transforms", "rename,insert_print", "--depth", "1..2", "--keep", "all", "--out", str(tmp_path)]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    for name in ("generations.jsonl", "detections.jsonl", "metrics.csv", "table.md", "report.md",
                 "tpr_vs_depth.png", "config.json"):
        assert (tmp_path / name).exists(), name
    lines = (tmp_path / "generations.jsonl").read_text().splitlines()
    assert len(lines) == 3  # plain, kgw, unigram
    second = CliRunner().invoke(app, args)
    assert second.exit_code == 0
    assert (tmp_path / "generations.jsonl").read_text().splitlines() == lines
    assert "InsertPrint" in (tmp_path / "table.md").read_text()


def test_dev_and_test_splits_partition_humaneval():
    from carelab.watermark.robustness import in_split

    ids = [p.task_id for p in load_problems()]
    dev = [t for t in ids if in_split(t, "dev")]
    test = [t for t in ids if in_split(t, "test")]
    assert sorted(dev + test) == sorted(ids) and not set(dev) & set(test)
    assert 25 <= len(dev) <= 60


def test_per_scheme_deltas_reach_the_schemes():
    from carelab.watermark.cli import parse_scheme_values
    from carelab.watermark.robustness import build_schemes

    assert parse_scheme_values("kgw=8, unigram=4", "--scheme-deltas") == {"kgw": 8.0, "unigram": 4.0}
    with pytest.raises(ValueError, match="name=number"):
        parse_scheme_values("kgw", "--scheme-deltas")
    cfg = RobustnessConfig(schemes=["kgw", "unigram", "sweet"], scheme_deltas={"kgw": 8.0}, delta=3.0)
    schemes = build_schemes(cfg, 100)
    assert (schemes["kgw"].delta, schemes["unigram"].delta, schemes["sweet"].delta) == (8.0, 3.0, 3.0)
    assert cfg.detectors == ["kgw", "unigram", "sweet", "kgw-win", "unigram-win"]
    with pytest.raises(ValueError, match="scheme_deltas"):
        RobustnessConfig(schemes=["kgw"], scheme_deltas={"sweet": 2.0}).validate()


def test_pass_cost_is_paired_by_problem():
    from carelab.watermark.robustness import pass_cost

    cfg = RobustnessConfig(schemes=["kgw"])
    gens = {f"{v}:{t}": {"variant": v, "task_id": t} for v in ("plain", "kgw") for t in "abcd"}
    execs = {**{f"plain:{t}": {"status": "pass"} for t in "abcd"},
             **{f"kgw:{t}": {"status": "pass" if t in "ab" else "fail"} for t in "abcd"}}
    (row,) = pass_cost(cfg, gens, execs)
    assert (row["n"], row["pass1"], row["pass1_plain"], row["diff"]) == (4, 0.5, 1.0, -0.5)
    assert row["diff_lo"] <= -0.5 <= row["diff_hi"]


def test_dev_choice_needs_enough_kept_programs():
    """A TPR of 1.0 on the one program that survived a strong bias must not win the dev selection."""
    from carelab.watermark.robustness import choose_settings

    def row(delta, n_pos, tpr, fpr=0.0):
        return {"setting": f"delta{delta}", "delta": delta, "detector": "kgw", "n_pos": n_pos, "tpr": tpr,
                "fpr": fpr}

    rows = [row(2, 6, 0.3), row(4, 5, 0.6, fpr=0.2), row(6, 5, 0.8), row(8, 1, 1.0)]
    pick = choose_settings(rows, ["kgw"], ["delta"], min_kept=5)["kgw"]
    assert (pick["delta"], pick["reached"]) == (6, True)
    pick = choose_settings(rows[:2] + rows[3:], ["kgw"], ["delta"], min_kept=5)["kgw"]
    assert (pick["delta"], pick["reached"]) == (4, False)  # best TPR among points with enough programs
    pick = choose_settings([row(4, 2, 0.0), row(8, 1, 1.0)], ["kgw"], ["delta"], min_kept=5)["kgw"]
    assert (pick["delta"], pick["reached"]) == (4, False)  # none has enough: the one that kept most code
