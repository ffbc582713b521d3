"""Synthetic worlds: deterministic per seed, train/test disjoint, shaped like the datasets they imitate."""

from __future__ import annotations

import inspect
import json
import re

import pytest
from typer.testing import CliRunner

from carelab.care import synth
from carelab.care.datasets import load_examples
from carelab.care.facts import candidate_facts, fact_table, known_ids


def _names(rows) -> set[str]:
    """Every capitalised fictional token in questions, titles and answers."""
    text = json.dumps(rows)
    return set(re.findall(r"\b[A-Z][a-z]{3,}\b", text))


@pytest.mark.parametrize("kind", synth.KINDS)
def test_deterministic_per_seed(kind):
    a = synth.generate(kind, 5, seed=7, split="train")
    b = synth.generate(kind, 5, seed=7, split="train")
    c = synth.generate(kind, 5, seed=8, split="train")
    assert json.dumps(a) == json.dumps(b)
    assert json.dumps(a) != json.dumps(c)


@pytest.mark.parametrize("kind", ["hotpotqa", "2wiki", "musique", "drop", "msmarco", "longbench"])
def test_train_and_test_worlds_share_no_name(kind):
    train = synth.generate(kind, 20, seed=0, split="train")
    test = synth.generate(kind, 20, seed=0, split="test")
    template_words = set(re.findall(r"\b[A-Z][a-z]+\b", inspect.getsource(synth)))
    assert len(_names(train) - template_words) > 20
    # only words of the generator's own templates may be shared, never a fictional name
    assert not (_names(train) & _names(test)) - template_words


def test_cofca_train_and_test_use_disjoint_facts():
    train = synth.generate("cofca", 60, seed=0, split="train")
    test = synth.generate("cofca", 60, seed=0, split="test")
    assert not {r["fact_id"] for r in train} & {r["fact_id"] for r in test}
    assert not {r["question"] for r in train} & {r["question"] for r in test}


def test_multihop_shapes(tmp_path):
    exs = load_examples(synth.write("musique", 40, 1, tmp_path / "m.jsonl"))
    assert {e.hops for e in exs} == {2, 3, 4}
    hp = load_examples(synth.write("hotpotqa", 40, 1, tmp_path / "h.json"))
    types = {e.meta["type"] for e in hp}
    assert types == {"bridge", "comparison"}
    for e in hp:
        assert len(e.passages) >= 10  # 2 gold + >= 8 distractors
        assert e.meta["chain"][-1]["object"] == e.answer or e.meta["type"] == "comparison"
        for step, sent in zip(e.meta["chain"], e.supporting_sentences(), strict=True):
            assert step["object"] in sent  # the chain is stated by the supporting facts
    # DROP-shaped is short, MS MARCO-shaped is long with long answers
    drop = load_examples(synth.write("drop", 10, 1, tmp_path / "d.json"))
    ms = load_examples(synth.write("msmarco", 10, 1, tmp_path / "ms.json"))
    assert max(len(e.context.split()) for e in drop) < 80
    assert min(len(e.context.split()) for e in ms) > 300
    assert min(len(e.answer.split()) for e in ms) > 8 > max(len(e.answer.split()) for e in drop)


@pytest.mark.parametrize("words", [300, 600])
def test_long_context_length_is_configurable(tmp_path, words):
    for kind in ("cofca", "longbench"):
        exs = load_examples(synth.write(kind, 6, 2, tmp_path / f"{kind}{synth.SUFFIX[kind]}", split="test",
                                        context_words=words, distractors=0))
        lengths = [len(e.context.split()) for e in exs]
        assert min(lengths) >= words * 0.9 and max(lengths) < words * 1.6


def test_cofca_states_the_altered_fact_once(tmp_path):
    rows = synth.generate("cofca", 40, seed=3, split="test")
    assert {r["counterfactual"] for r in rows} == {True, False}
    facts = {f.id: f for f in candidate_facts()}
    for r in rows:
        f = facts[r["fact_id"]]
        ctx = " ".join(" ".join(p["sentences"]) for p in r["passages"])
        if r["counterfactual"]:
            assert r["answer"] == f.altered and r["original_answer"] == f.answer
            assert ctx.count(f.altered_sentence) == 1 and f.sentence not in ctx
        else:
            assert r["answer"] == f.answer and ctx.count(f.sentence) == 1


def test_fact_table():
    cands = candidate_facts()
    assert len(cands) >= 300 and len({f.id for f in cands}) == len(cands)
    for f in cands:
        assert f.altered != f.answer and not f.accepts(f.altered)
        assert f.altered in f.altered_sentence and f.answer not in f.altered_sentence.split()
        assert f.accepts(f.sentence) and f.accepts(f.altered_sentence, counterfactual=True)
    if known_ids() is not None:  # measured with `carelab data check-facts`
        assert len(fact_table()) >= 200


def test_synth_cli(tmp_path):
    from carelab.cli import app

    out = tmp_path / "lb.jsonl"
    res = CliRunner().invoke(app, ["data", "synth", "--kind", "longbench", "--n", "4", "--seed", "1", "--split",
                                   "test", "--out", str(out), "--context-words", "350", "--distractors", "3"])
    assert res.exit_code == 0, res.output
    assert len(load_examples(out)) == 4
    res = CliRunner().invoke(app, ["data", "synth", "--kind", "squad", "--out", str(out)])
    assert res.exit_code == 2 and "--kind" in res.output


def test_check_facts_scores(monkeypatch):
    """check-facts' bookkeeping, with a fake model that knows every other fact and always follows context."""
    import carelab.generation as gen
    from carelab.care import facts as facts_mod

    by_q = {f.question: f for f in candidate_facts()[:10]}

    def fake_generate_chat(model, tok, conversations, settings=None, progress=None):
        outs = []
        for conv in conversations:
            f = next(v for q, v in by_q.items() if conv[-1]["content"].endswith(q))
            if conv[0]["content"] == facts_mod.CLOSED_BOOK_SYSTEM:
                outs.append(f"It is {f.answer}." if list(by_q).index(f.question) % 2 == 0 else "I am not sure.")
            else:
                outs.append(f.altered if f.altered_sentence in conv[-1]["content"] else f.answer)
        return outs

    monkeypatch.setattr(gen, "generate_chat", fake_generate_chat)
    cfg = facts_mod.CheckFactsConfig(limit=10, context_sample=3, context_words=120)
    rows, summary = facts_mod.check_facts(None, None, cfg)
    assert len(rows) == 10 and summary["known"] == 5 and summary["closed_book_accuracy"] == 50.0
    assert summary["with_context_sample"] == 3
    assert summary["counterfactual_long_context_accuracy"] == 100.0
    assert summary["factual_long_context_accuracy"] == 100.0
    assert summary["counterfactual_long_context_says_original"] == 0.0
    assert summary["mean_context_words"] >= 120
