"""The three-stage SFT data pipeline: rule end to end, filters, a tiny HF model, kill-and-resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from carelab.care import format as care_format
from carelab.care.data import synth
from carelab.care.sft.backends import BackendOptions, HFBackend, RuleBackend
from carelab.care.sft.pipeline import SftDataConfig, insert_tags, run_pipeline, sidecar
from carelab.runs import read_jsonl

FIELDS = {"id", "question", "answer", "level", "context", "supporting_facts", "reasoning", "output", "system",
          "prompt", "messages"}


def _records(path) -> list[dict]:
    return [o for _, o in read_jsonl(path)]


@pytest.fixture(scope="module")
def hotpot_file(tmp_path_factory):
    return synth.write("hotpotqa", 30, 11, tmp_path_factory.mktemp("sd") / "h.json")


def test_rule_pipeline_end_to_end(hotpot_file, tmp_path):
    out = tmp_path / "sft.jsonl"
    stats = run_pipeline(SftDataConfig(input=str(hotpot_file), out=str(out)), echo=lambda s: None)
    recs = _records(out)
    assert len(recs) == 30 == stats["stages"]["stage3_tags"]["kept"]
    for r in recs:
        assert set(r) >= FIELDS
        assert r["system"] == care_format.DEFAULT_SYSTEM_PROMPT
        msgs = r["messages"]
        assert [m["role"] for m in msgs] == ["system", "user", "assistant"]
        assert msgs[1]["content"] == r["prompt"] == care_format.user_content(r["context"], r["question"])
        assert msgs[2]["content"] == r["output"]
        parsed = care_format.parse(r["output"])
        assert parsed.well_formed and parsed.answer == r["answer"]
        assert len(parsed.retrievals) == len(r["supporting_facts"])
        assert all(q in care_format.collapse_ws(r["context"]) for q in parsed.retrievals)
        assert care_format.RETRIEVAL_OPEN not in r["reasoning"]
    saved = json.loads(sidecar(out, "stats.json").read_text())
    assert saved["stages"] == stats["stages"]
    assert json.loads(sidecar(out, "config.json").read_text())["reasoner"] == "rule"
    again = run_pipeline(SftDataConfig(input=str(hotpot_file), out=str(out)), echo=lambda s: None)
    assert again["written_this_run"] == 0 and again["cache"]["misses"] == 0
    assert len(_records(out)) == 30


class _WrongSometimes(RuleBackend):
    """Rule reasoning, but every third answer is wrong; every other rewrite forgets a fact."""

    name = "stub"

    def reason(self, examples):
        outs = super().reason(examples)
        return [o.replace(f"{care_format.ANSWER_MARKER} {e.answer}", f"{care_format.ANSWER_MARKER} Nobody")
                if int(e.id.encode().hex(), 16) % 3 == 0 else o for e, o in zip(examples, outs, strict=True)]

    def inject(self, examples, reasonings, facts):
        outs = super().inject(examples, reasonings, facts)
        return [o.replace(f[0], f[0][0].swapcase() + f[0][1:]) if i % 2 else o
                for i, (o, f) in enumerate(zip(outs, facts, strict=True))]


def test_filters_drop_wrong_and_incomplete(hotpot_file, tmp_path):
    stub = _WrongSometimes()
    out = tmp_path / "f.jsonl"
    stats = run_pipeline(SftDataConfig(input=str(hotpot_file), out=str(out)), echo=lambda s: None,
                         reasoner=stub, injector=stub)
    s1, s2 = stats["stages"]["stage1_reasoning"], stats["stages"]["stage2_evidence"]
    assert s1["in"] == 30 and 0 < s1["dropped"] < 30 and s1["kept"] + s1["dropped"] == 30
    assert s2["in"] == s1["kept"] and s2["dropped"] > 0
    dropped = _records(sidecar(out, "dropped.jsonl"))
    assert {d["stage"] for d in dropped} == {"stage1_reasoning", "stage2_evidence"}
    assert len(_records(out)) == stats["stages"]["stage3_tags"]["kept"]
    # the similarity filter keeps the near-verbatim rewrites and stage 3 quotes the exact context sentence
    out2 = tmp_path / "g.jsonl"
    stats2 = run_pipeline(SftDataConfig(input=str(hotpot_file), out=str(out2), completeness="similarity",
                                        similarity=0.8), echo=lambda s: None, reasoner=stub, injector=stub)
    assert stats2["stages"]["stage2_evidence"]["dropped"] == 0 < s2["dropped"]
    assert _records(out2)
    for r in _records(out2):
        ctx = care_format.collapse_ws(r["context"])
        assert all(q in ctx for q in care_format.parse(r["output"]).retrievals)
    em = run_pipeline(SftDataConfig(input=str(hotpot_file), out=str(tmp_path / "em.jsonl"), metric="em",
                                    threshold=1.0), echo=lambda s: None, reasoner=stub, injector=stub)
    assert em["stages"]["stage1_reasoning"]["kept"] == s1["kept"]


def test_insert_tags():
    text = "First the bridge. Ada Kim was born in Lorn. So it is Lorn."
    out = insert_tags(text, ["Ada Kim was born in Lorn."], "Lorn")
    assert care_format.parse(out).retrievals == ["Ada Kim was born in Lorn."]


def test_hf_tiny_model_backend(hotpot_file, tmp_path, tiny_qwen):
    model, tok = tiny_qwen
    hf = HFBackend("tiny-random-qwen2", BackendOptions(max_new_tokens=6, batch_size=4), model, tok)
    out = tmp_path / "hf.jsonl"
    cfg = SftDataConfig(input=str(hotpot_file), out=str(out), limit=4, reasoner=hf.name, max_new_tokens=6)
    stats = run_pipeline(cfg, echo=lambda s: None, reasoner=hf, injector=RuleBackend())
    assert stats["stages"]["stage1_reasoning"]["in"] == 4 and stats["cache"]["misses"] == 4
    cache = _records(sidecar(out, "cache.jsonl"))
    assert len(cache) == 4 and {c["backend"] for c in cache} == {"hf:tiny-random-qwen2"}
    # as injector after rule reasoning: random text never contains the facts -> dropped at stage 2
    out2 = tmp_path / "hf2.jsonl"
    stats2 = run_pipeline(SftDataConfig(input=str(hotpot_file), out=str(out2), limit=4), echo=lambda s: None,
                          reasoner=RuleBackend(), injector=hf)
    assert stats2["stages"]["stage2_evidence"] == {"in": 4, "kept": 0, "dropped": 4}
    # rerun: everything from cache, the model is not called
    hf.chat = None  # type: ignore[assignment]
    again = run_pipeline(SftDataConfig(input=str(hotpot_file), out=str(out2), limit=4), echo=lambda s: None,
                         reasoner=RuleBackend(), injector=hf)
    assert again["cache"]["misses"] == 0 and again["stages"] == stats2["stages"]


def test_cli_errors_are_one_line(tmp_path):
    from carelab.cli import app

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1}\n')
    res = CliRunner().invoke(app, ["care", "sft-data", "--input", str(bad), "--format", "carelab", "--out",
                                   str(tmp_path / "o.jsonl")])
    assert res.exit_code == 2 and "line 1" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(app, ["care", "sft-data", "--input", str(bad), "--reasoner", "nope", "--out",
                                   str(tmp_path / "o.jsonl"), "--format", "carelab", "--skip-invalid"])
    assert res.exit_code == 2 and "unknown backend" in res.output


def test_kill_and_resume(tmp_path):
    src = synth.write("2wiki", 120, 4, tmp_path / "w.json")
    full = tmp_path / "full.jsonl"
    run_pipeline(SftDataConfig(input=str(src), out=str(full)), echo=lambda s: None)
    expected = [r["id"] for r in _records(full)]
    out = tmp_path / "killed.jsonl"
    cmd = [sys.executable, "-m", "carelab.cli", "care", "sft-data", "--input", str(src), "--out", str(out),
           "--batch-size", "2", "--item-delay", "0.05"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 90
    while time.time() < deadline:
        if out.exists() and len(out.read_text().splitlines()) >= 10:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = len(_records(out))
    assert 10 <= partial < len(expected), "the run must be killed mid-way"
    cache_before = len(_records(sidecar(out, "cache.jsonl")))
    stats = run_pipeline(SftDataConfig(input=str(src), out=str(out), batch_size=2), echo=lambda s: None)
    ids = [r["id"] for r in _records(out)]
    assert len(ids) == len(set(ids)), "no duplicates"
    assert sorted(ids) == sorted(expected), "no lost items"
    assert stats["written_this_run"] == len(expected) - partial
    keys = [c["key"] for c in _records(sidecar(out, "cache.jsonl"))]
    assert len(keys) == len(set(keys)) and cache_before <= len(keys), "no backend call repeated"
