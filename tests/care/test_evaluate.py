"""The CARE evaluation harness: scoring against hand-computed cases, every method on a tiny model,
resuming, truncation, native LongBench/CofCA files and the CLI's error handling."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from carelab.care.data.examples import Passage, QAExample
from carelab.care.eval import harness as ev
from carelab.care.eval.harness import EvalConfig, MethodSpec, aggregate, run_eval, score_output
from carelab.runs import InputError, read_jsonl

CTX_A = [Passage("Alice", ["Alice was born in Paris.", "She studied law."]),
         Passage("Bob", ["Bob lives in Rome.", "He sells bread."])]


def ex(i: str, q: str, answers: list[str], passages=None, **meta) -> QAExample:
    return QAExample(id=i, question=q, answers=answers, passages=passages or CTX_A,
                     supporting_facts=[("Alice", 0)], meta=meta)


def write_examples(path: Path, examples: list[QAExample]) -> str:
    path.write_text("".join(json.dumps(e.to_dict()) + "\n" for e in examples))
    return str(path)


# --------------------------------------------------------------------------- scoring, hand-computed
def test_score_care_output_hand_computed():
    e = ex("a", "Where was Alice born?", ["Paris"])
    raw = ("<think>The context says <retrieval>Alice was born in Paris.</retrieval> and "
           "<retrieval>alice was born in pariss</retrieval> and <retrieval>Unicorns exist.</retrieval></think>\n"
           "Answer: Paris<|im_end|>")
    rec = score_output(raw, e, care_style=True, seen_context=e.context, eos=("<|im_end|>",))
    assert rec["prediction"] == "Paris"  # EOS stripped, only the text after Answer:
    assert rec["f1"] == 1.0 and rec["em"] == 1.0
    assert [q["match"] for q in rec["quotes"]] == ["exact", "fuzzy", "none"]
    assert rec["well_formed"] is True
    assert rec["f1_lenient"] == rec["f1"]
    # No "Answer:" -> F1 0 under the protocol; the lenient diagnostic reads the line after the reasoning.
    unformatted = score_output("<think>hmm</think>\nThe answer is: Paris", e, True, e.context)
    assert unformatted["prediction"] == "" and unformatted["f1"] == 0.0 and unformatted["f1_lenient"] == 1.0
    # Quoting more than the gold fact lowers ROUGE-L below 100 but keeps it positive.
    assert 0 < rec["evidence_rouge_l"] < 100


def test_score_plain_output_first_line_and_answer_prefix():
    e = ex("b", "Where does Bob live?", ["Rome"])
    rec = score_output("Answer: the Rome\nBecause the context says so.", e, care_style=False, seen_context=e.context)
    assert rec["prediction"] == "the Rome"
    assert rec["f1"] == 1.0 and rec["em"] == 1.0  # the article is dropped by LongBench normalisation
    assert rec["quotes"] == [] and rec["well_formed"] is None
    # A CARE-style answer on a plain method would not be parsed into think/answer.
    rec2 = score_output("Paris France", ex("c", "q", ["Paris"]), care_style=False, seen_context="")
    # F1 by hand: precision 1/2, recall 1/1 -> 2·0.5·1 / 1.5
    assert rec2["f1"] == pytest.approx(2 * 0.5 * 1 / 1.5)


def test_aggregate_hand_computed():
    e = ex("a", "Where was Alice born?", ["Paris"])
    outs = [
        "<think><retrieval>Alice was born in Paris.</retrieval> <retrieval>alice was born in pariss</retrieval> "
        "<retrieval>Unicorns exist.</retrieval></think> Answer: Paris",   # f1 1, em 1, well-formed
        "Answer: the Paris",                                                # f1 1, em 1, not well-formed
        "<think>no quotes</think> Answer: Paris France",                  # f1 2/3, em 0, not well-formed
    ]
    recs = [score_output(o, e, True, e.context) for o in outs]
    m = aggregate(recs, "qa", care_style=True)
    assert m["n"] == 3
    assert m["f1"] == pytest.approx(100 * (1 + 1 + 2 / 3) / 3)
    assert m["em"] == pytest.approx(100 * 2 / 3)
    assert m["format_rate"] == pytest.approx(100 / 3)
    assert m["quotes_per_item"] == pytest.approx(1.0)
    assert m["quote_exact_share"] == pytest.approx(100 / 3)
    assert m["quote_fuzzy_share"] == pytest.approx(100 / 3)
    assert m["quote_in_context_share"] == pytest.approx(200 / 3)
    assert m["score"] == m["f1"]
    assert m["evidence_bleu"] is not None and m["evidence_rouge_l"] is not None


def test_counterfactual_metrics_hand_computed():
    cf1 = ex("c1", "Where was Alice born?", ["Berlin"], counterfactual=True, original_answers=["Paris"])
    cf2 = ex("c2", "Where was Alice born?", ["Berlin"], counterfactual=True, original_answers=["Paris"])
    ctl = ex("f1", "Where does Bob live?", ["Rome"], counterfactual=False)
    recs = [score_output("Answer: Paris", cf1, False, ""),   # memorised: F1 0 vs altered, 1 vs original
            score_output("Answer: Berlin", cf2, False, ""),  # follows the context
            score_output("Answer: Rome", ctl, False, "")]
    assert recs[0]["memorised"] is True and recs[1]["memorised"] is False
    m = aggregate(recs, "counterfactual", care_style=False)
    assert (m["n_counterfactual"], m["n_factual"]) == (2, 1)
    assert m["f1_counterfactual"] == pytest.approx(50.0)
    assert m["f1_factual"] == pytest.approx(100.0)
    assert m["memorised_share"] == pytest.approx(50.0)
    assert m["score"] == pytest.approx(50.0)  # the paper's CofCA number: counterfactual items only
    assert m["f1"] == pytest.approx(200 / 3)
    assert m["format_rate"] is None  # plain methods do not quote


# --------------------------------------------------------------------------- the harness on a tiny model
def test_every_method_on_tiny_model_writes_files_and_resumes(tmp_path, scripted_generation):
    data = write_examples(tmp_path / "qa.jsonl", [
        ex(f"q{i}", f"Where was person {i} born?", [f"Town{i}"],
           passages=[Passage("Person", [f"Person {i} was born in Town{i}.", "He liked tea."]),
                     Passage("Cats", ["Cats are animals.", "The sky is blue."]),
                     Passage("Dogs", ["Dogs bark.", "Rain is wet."])])
        for i in range(4)])
    methods = [MethodSpec("original"), MethodSpec("care-prompt"), MethodSpec("care", label="CARE"),
               MethodSpec("rag", rag_k=1), MethodSpec("crag")]
    cfg = EvalConfig(model="tiny-random-qwen2", data=[data], methods=methods, out=str(tmp_path / "run"),
                     limit=3, max_new_tokens=8, batch_size=2)
    metrics = run_eval(cfg, progress=False)
    run = Path(cfg.out)
    assert {p.name for p in run.iterdir()} >= {"config.json", "metrics.json", "metrics.csv", "report.md",
                                               "viewer.html", "scores.png", "predictions"}
    assert len(metrics["results"]) == len(methods)
    for spec in methods:
        recs = [r for _, r in read_jsonl(ev.predictions_path(run, spec.name, "qa"))]
        assert [r["id"] for r in sorted(recs, key=lambda r: r["id"])] == ["q0", "q1", "q2"]  # --limit 3
        for r in recs:
            assert {"raw", "think", "quotes", "prediction", "answers", "f1", "em", "context"} <= set(r)
            assert 0.0 <= r["f1"] <= 1.0 and r["label"] == spec.name
    rag = [r for _, r in read_jsonl(ev.predictions_path(run, "rag", "qa"))]
    assert len(rag) == 3
    # BM25 top-1 keeps only the passage about the person.
    assert all(r["context"].startswith("Person:") and "Cats" not in r["context"] for r in rag)
    row = {r["label"]: r for r in metrics["results"]}
    assert row["care-prompt"]["format_rate"] is not None and row["original"]["format_rate"] is None

    # Resume: nothing left to generate; a larger limit generates only the new item.
    calls: list[int] = []
    scripted_generation({}, calls)
    run_eval(cfg, progress=False)
    assert calls == []
    cfg.limit = 4
    run_eval(cfg, progress=False)
    assert sum(calls) == len(methods)
    for spec in methods:
        ids = [r["id"] for _, r in read_jsonl(ev.predictions_path(run, spec.name, "qa"))]
        assert sorted(ids) == ["q0", "q1", "q2", "q3"] and len(ids) == 4


def test_resume_refuses_different_settings(tmp_path, scripted_generation):
    scripted_generation({})
    data = write_examples(tmp_path / "d.jsonl", [ex("a", "Where was Alice born?", ["Paris"])])
    cfg = EvalConfig(model="tiny-random-qwen2", data=[data], methods=[MethodSpec("original")],
                     out=str(tmp_path / "run"), max_new_tokens=8, report=False)
    run_eval(cfg, progress=False)
    cfg.max_new_tokens = 16
    with pytest.raises(InputError, match="max_new_tokens"):
        run_eval(cfg, progress=False)


def test_a_later_call_on_a_subset_keeps_the_other_files(tmp_path, scripted_generation):
    """One more label on one of two files adds its row; the rows of the other file stay in metrics.json."""
    scripted_generation({"Where was Alice born?": "Paris", "Where does Bob live?": "Rome"})
    first = write_examples(tmp_path / "first.jsonl", [ex("a", "Where was Alice born?", ["Paris"])])
    second = write_examples(tmp_path / "second.jsonl", [ex("b", "Where does Bob live?", ["Rome"])])
    out = str(tmp_path / "run")
    run_eval(EvalConfig(model="tiny-random-qwen2", data=[first, second], methods=[MethodSpec("original")],
                        out=out, max_new_tokens=8, report=False), progress=False)
    metrics = run_eval(EvalConfig(model="tiny-random-qwen2", data=[first], methods=[MethodSpec("care-prompt")],
                                  out=out, max_new_tokens=8, report=False), progress=False)
    rows = {(r["label"], r["dataset"]): r["n"] for r in metrics["results"]}
    assert rows == {("original", "first"): 1, ("original", "second"): 1, ("care-prompt", "first"): 1}
    assert json.loads((Path(out) / "config.json").read_text())["data"] == [second, first]


def test_scripted_end_to_end_metrics_and_report(tmp_path, scripted_generation):
    scripted_generation({
        "Where was Alice born?": "<think><retrieval>Alice was born in Paris.</retrieval></think>\nAnswer: Paris",
        "Where does Bob live?": "<think>I recall</think> Answer: Milan",
    })
    data = write_examples(tmp_path / "mini.jsonl", [ex("a", "Where was Alice born?", ["Paris"]),
                                                     ex("b", "Where does Bob live?", ["Rome"])])
    cfg = EvalConfig(model="tiny-random-qwen2", data=[data], methods=[MethodSpec("care", label="CARE")],
                     out=str(tmp_path / "run"), max_new_tokens=8)
    metrics = run_eval(cfg, progress=False)
    (row,) = metrics["results"]
    assert row["f1"] == pytest.approx(50.0) and row["em"] == pytest.approx(50.0)
    assert row["format_rate"] == pytest.approx(50.0)
    assert row["quote_exact_share"] == pytest.approx(100.0) and row["quotes_per_item"] == pytest.approx(0.5)
    # Exactly the gold supporting fact quoted on item a; no quote on b -> ROUGE-L mean (100 + 0) / 2.
    assert row["evidence_rouge_l"] == pytest.approx(50.0)
    csv_text = (Path(cfg.out) / "metrics.csv").read_text()
    assert csv_text.splitlines()[0].startswith("label,") and "CARE" in csv_text
    assert "| CARE | 50.0 [0.0, 100.0] | 50.0 [0.0, 100.0] |" in (Path(cfg.out) / "report.md").read_text()


def test_long_inputs_are_middle_truncated_with_one_warning(tmp_path, scripted_generation):
    scripted_generation({})
    filler = [f"Filler sentence number {k} talks about nothing in particular." for k in range(60)]
    exs = [ex(f"l{i}", f"Question {i}: where was Alice born?", ["Paris"],
              passages=[Passage("Long", filler + ["Alice was born in Paris."])]) for i in range(3)]
    data = write_examples(tmp_path / "long.jsonl", exs)
    cfg = EvalConfig(model="tiny-random-qwen2", data=[data], methods=[MethodSpec("original")],
                     out=str(tmp_path / "run"), max_new_tokens=8, max_prompt_tokens=300, report=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics = run_eval(cfg, progress=False)
    msgs = [str(w.message) for w in caught if "middle-truncated" in str(w.message)]
    assert msgs == ["3 of 3 prompts were middle-truncated to fit 300 tokens (the question is always kept)"]
    recs = [r for _, r in read_jsonl(ev.predictions_path(cfg.out, "original", "long"))]
    assert len(recs) == 3
    assert all(r["truncated"] and r["prompt_tokens"] <= 300 for r in recs)
    # Middle truncation keeps the head and the tail (where the answer sentence is) and marks the cut.
    assert all(r["context"].startswith("Long: Filler") and r["context"].endswith("Alice was born in Paris.")
               and " … " in r["context"] for r in recs)
    assert metrics["results"][0]["n_truncated"] == 3


def test_duplicate_ids_are_an_input_error(tmp_path):
    data = write_examples(tmp_path / "dup.jsonl", [ex("a", "q1", ["x"]), ex("a", "q2", ["y"])])
    with pytest.raises(InputError, match="duplicate id"):
        ev.load_datasets([data])


def test_longbench_and_cofca_files(tmp_path, scripted_generation):
    lb = tmp_path / "hotpotqa.jsonl"
    lb.write_text("".join(json.dumps({
        "input": f"Where was Alice {i} born?", "context": f"Passage 1:\nAlice {i} was born in Paris.\nPassage 2:\nBob "
        "lives in Rome.", "answers": ["Paris", "Paris, France"], "length": 12, "dataset": "hotpotqa",
        "language": "en", "all_classes": None, "_id": f"lb{i}"}) + "\n" for i in range(3)))
    cof = tmp_path / "cofca.jsonl"  # CofCA-shaped native rows: the gold is the altered answer
    cof.write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "c1", "question": "Where was Alice born?", "answer": "Berlin", "counterfactual": True,
         "original_answer": "Paris", "context": "Alice was born in Berlin. Bob lives in Rome."},
        {"id": "c2", "question": "Where does Bob live?", "answer": "Rome", "counterfactual": False,
         "original_answer": "Rome", "context": "Alice was born in Berlin. Bob lives in Rome."}]))
    scripted_generation({"Alice 0": "Paris, France", "Alice 1": "Answer: Paris", "Alice 2": "Lyon",
                         "Where was Alice born?": "Paris", "Where does Bob live?": "Rome"})
    cfg = EvalConfig(model="tiny-random-qwen2", data=[str(lb), str(cof)], methods=[MethodSpec("original")],
                     out=str(tmp_path / "run"), max_new_tokens=8)
    metrics = run_eval(cfg, progress=False)
    rows = {r["dataset_name"]: r for r in metrics["results"]}
    assert rows["HotpotQA"]["kind"] == "longbench"
    assert rows["HotpotQA"]["f1"] == pytest.approx(100 * 2 / 3)  # max over golds: 1, 1, 0
    cf_row = rows["CofCA"]
    assert cf_row["kind"] == "counterfactual"
    assert cf_row["f1_counterfactual"] == 0.0 and cf_row["f1_factual"] == 100.0
    assert cf_row["memorised_share"] == 100.0 and cf_row["score"] == 0.0


def test_eval_command_errors_are_one_line(tmp_path):
    import typer
    from typer.testing import CliRunner

    from carelab.care.cli.eval import eval_command, parse_method

    app = typer.Typer()
    app.command()(eval_command)
    res = CliRunner().invoke(app, ["--data", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o"),
                                   "--model", "tiny-random-qwen2"])
    assert res.exit_code == 2 and "missing.jsonl" in res.output and "Traceback" not in res.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(ex("a", "q", ["x"]).to_dict()) + "\n{not json\n")
    res = CliRunner().invoke(app, ["--data", str(bad), "--out", str(tmp_path / "o"), "--model", "tiny-random-qwen2"])
    assert res.exit_code == 2 and "bad.jsonl, line 2" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(app, ["--data", "x.jsonl", "--out", str(tmp_path / "o"), "--method", "magic"])
    assert res.exit_code == 2 and "unknown method 'magic'" in res.output
    spec = parse_method("SFT-only=care@runs/sft", default_adapter="runs/grpo")
    assert (spec.label, spec.method, spec.adapter) == ("SFT-only", "care", "runs/sft")
    assert parse_method("care", default_adapter="runs/grpo").adapter == "runs/grpo"
    assert parse_method("original", default_adapter="runs/grpo").adapter is None


@pytest.mark.slow
@pytest.mark.timeout(900)  # SmolLM2 generates for two methods on CPU
def test_embedded_smollm2_end_to_end(tmp_path):
    """The real model through the whole harness: plain answers from a one-sentence context are scored > 0."""
    facts = [("Freedonia", "Zorbatown"), ("Klopstan", "Vemirra"), ("Ostravia", "Pellucid")]
    exs = [QAExample(f"s{i}", f"What is the capital of {c}?", [cap],
                     [Passage(c, [f"The capital of {c} is {cap}."])]) for i, (c, cap) in enumerate(facts)]
    data = write_examples(tmp_path / "easy.jsonl", exs)
    cfg = EvalConfig(data=[data], methods=[MethodSpec("original"), MethodSpec("care-prompt")],
                     out=str(tmp_path / "run"), max_new_tokens=32, batch_size=3)
    metrics = run_eval(cfg, progress=False)
    rows = {r["label"]: r for r in metrics["results"]}
    assert rows["original"]["f1"] > 0  # the instruct model copies a stated fact
    recs = [r for _, r in read_jsonl(ev.predictions_path(cfg.out, "care-prompt", "easy"))]
    assert len(recs) == 3 and all(r["raw"].strip() for r in recs)
    assert (Path(cfg.out) / "viewer.html").exists()
