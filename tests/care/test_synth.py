"""Synthetic worlds: deterministic per seed, train/test disjoint, shaped like the datasets they imitate."""

from __future__ import annotations

import inspect
import json
import re

import pytest
from typer.testing import CliRunner

from carelab.care.data import synth
from carelab.care.data.facts import candidate_facts, fact_table, known_ids
from carelab.care.data.loaders import load_examples


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
        assert e.meta["chain"]
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
    from carelab.care.data import fact_check as facts_mod

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


# --------------------------------------------------------------------------------------------------
# Styles: default (unchanged output), mixed (train-family variants), heldout (unseen wording)
# --------------------------------------------------------------------------------------------------

# sha256[:16] of `synth.write(kind, 12, seed, ..., split=split)` computed with the code before styles existed
# (commit b04b058): the default style must keep producing these exact files.
_BEFORE_STYLES = {
    ("hotpotqa", 0, "train"): "be10f794cb1311e3", ("hotpotqa", 3, "test"): "3be1c3bb3d406c5d",
    ("2wiki", 3, "test"): "8b745a0ce9cf5828", ("musique", 0, "train"): "9b169b5ad5a94916",
    ("drop", 3, "test"): "8a4300d22d38e8b2", ("msmarco", 0, "train"): "0f69b0566e4bce2b",
    ("longbench", 3, "test"): "66e19dc4f2d551aa",
}


@pytest.mark.parametrize(("kind", "seed", "split"), sorted(_BEFORE_STYLES))
def test_default_style_is_byte_identical_to_before(tmp_path, kind, seed, split):
    import hashlib

    for style in ({}, {"style": "default"}):
        path = synth.write(kind, 12, seed, tmp_path / f"{kind}{synth.SUFFIX[kind]}", split=split, **style)
        assert hashlib.sha256(path.read_bytes()).hexdigest()[:16] == _BEFORE_STYLES[(kind, seed, split)]


def _rx(template: str) -> re.Pattern:
    """A template ("Who directed {x}?") as a regex matching every text it can produce."""
    return re.compile(re.sub(r"\\\{\w+\\\}", "(.+)", re.escape(template)))


def _templates(style: synth.Style, *, questions: bool) -> list[str]:
    if questions:
        groups = [*style.final.values(), *style.drop_q.values(), style.msmarco_query,
                  *(q for pair in style.compare.values() for q in pair)]
    else:
        groups = [*style.sentence.values(), *style.fillers, *style.drop_sents]
    return [t for g in groups for t in g]


def _train_family(questions: bool) -> list[re.Pattern]:
    from carelab.care.data.facts import table_data

    out = [_rx(t) for name in ("default", "mixed") for t in _templates(synth._style(name), questions=questions)]
    out += [_rx(g["question"] if questions else g["sentence"]) for g in table_data()["groups"]]
    if questions:
        out += [re.compile(re.escape(q)) for _, _, q, _, _ in table_data()["free"]]
    return out


def _heldout_texts(kind: str, n: int = 40) -> tuple[list[str], list[str]]:
    """(questions, context sentences) of ``n`` heldout test items of ``kind``."""
    data = synth.generate(kind, n, 0, split="test", style="heldout")
    if kind == "drop":
        qs = [qa["question"] for v in data.values() for qa in v["qa_pairs"]]
        return qs, [s for v in data.values() for s in re.split(r"(?<=\.) (?=[A-Z0-9])", v["passage"])]
    if kind == "msmarco":
        return list(data["query"].values()), []
    qs = [r.get("question") or r.get("input") for r in data]
    if kind == "musique":
        qs += [d["question"] for r in data for d in r["question_decomposition"]]
        return qs, []  # paragraph text: checked through hotpotqa, which states the same sentences
    if kind == "longbench":
        return qs, []
    if kind == "cofca":
        return qs, [s for r in data for p in r["passages"] for s in p["sentences"]]
    return qs, [s for r in data for _, sents in r["context"] for s in sents]


@pytest.mark.parametrize("kind", ["hotpotqa", "2wiki", "musique", "drop", "msmarco", "longbench", "cofca"])
def test_heldout_wording_is_disjoint_from_the_training_family(kind):
    questions, sentences = _heldout_texts(kind)
    assert questions
    train_q, train_s = _train_family(True), _train_family(False)
    for q in questions:
        assert not any(rx.fullmatch(q) for rx in train_q), q
    # nested noun phrases of the training family ("the director of X") never appear either
    np_frames = {t.split("{x}")[0] for name in ("default", "mixed") for g in synth._style(name).np.values()
                 for t in g}
    assert not [q for q in questions if any(f in q for f in np_frames)]
    if kind == "cofca":  # free-form facts keep their clause after "It is recorded that": compare sentences only
        from carelab.care.data.facts import candidate_facts

        default = {s for f in candidate_facts() for s in (f.sentence, f.altered_sentence)}
        assert not default & set(sentences)
        sentences = [s for s in sentences if not s.startswith("It is recorded that ")]
    assert sentences or kind in ("musique", "msmarco", "longbench")  # those are checked through hotpotqa
    for s in sentences:
        assert not any(rx.fullmatch(s) for rx in train_s), s


def test_heldout_longbench_has_no_passage_headers():
    rows = synth.generate("longbench", 8, 0, split="test", style="heldout")
    assert len(rows) == 8
    for r in rows:
        assert not re.search(r"Passage \d+:", r["context"]) and r["context"].startswith("== ")
        assert r["answers"][0] in r["context"]


@pytest.mark.parametrize("kind", ["hotpotqa", "2wiki", "musique"])
def test_heldout_evidence_states_the_answer(tmp_path, kind):
    exs = load_examples(synth.write(kind, 40, 0, tmp_path / f"h{synth.SUFFIX[kind]}", split="test",
                                    style="heldout"))
    default = load_examples(synth.write(kind, 40, 0, tmp_path / f"d{synth.SUFFIX[kind]}", split="test"))
    assert exs
    for e, d in zip(exs, default, strict=True):
        assert e.answers == d.answers and e.question != d.question  # same world, other words
        assert e.id != d.id and "heldout" in e.id
        by_title = {p.title: p for p in e.passages}
        assert {(s["title"], s["sent"]) for s in e.meta["chain"]} == set(e.supporting_facts)
        sents = [by_title[s["title"]].sentences[s["sent"]] for s in e.meta["chain"]]  # MuSiQue: paragraphs
        assert sents
        for step, sent in zip(e.meta["chain"], sents, strict=True):
            assert step["object"] in sent and step["subject"] in sent
        if e.meta["type"] != "comparison":
            assert e.answer in sents[-1]
        else:
            assert any(e.answer in s for s in sents)


def test_heldout_cofca_keeps_the_answer_and_states_it_once():
    from carelab.care.data.facts import candidate_facts
    from carelab.care.eval.metrics import normalize_answer

    facts = {f.id: f for f in candidate_facts()}
    rows = synth.generate("cofca", 80, 1, split="test", style="heldout")
    default = synth.generate("cofca", 80, 1, split="test")
    assert {r["counterfactual"] for r in rows} == {True, False}
    for r, d in zip(rows, default, strict=True):
        f = facts[r["fact_id"]]
        assert (r["answer"], r["original_answer"], r["counterfactual"]) == (d["answer"], d["original_answer"],
                                                                            d["counterfactual"])
        assert r["question"] != f.question
        (title, idx), = r["supporting_facts"]
        sent = next(p["sentences"][idx] for p in r["passages"] if p["title"] == title)
        assert f" {normalize_answer(r['answer'])} " in f" {normalize_answer(sent)} "
        ctx = " ".join(s for p in r["passages"] for s in p["sentences"])
        assert ctx.count(sent) == 1
        if r["counterfactual"]:
            assert f" {normalize_answer(f.answer)} " not in f" {normalize_answer(sent)} "


def test_mixed_varies_wording_within_the_training_family():
    rows = synth.generate("hotpotqa", 150, 0, split="train", style="mixed")
    default = synth.generate("hotpotqa", 150, 0, split="train")
    train_q = _train_family(True)
    heldout_q = [_rx(t) for t in _templates(synth._style("heldout"), questions=True)]
    used = {next(i for i, rx in enumerate(train_q) if rx.fullmatch(r["question"])) for r in rows}
    assert len(used) > len({next(i for i, rx in enumerate(train_q) if rx.fullmatch(r["question"]))
                            for r in default})
    assert not [r["question"] for r in rows if any(rx.fullmatch(r["question"]) for rx in heldout_q)]
    assert [r["answer"] for r in rows] == [r["answer"] for r in default]
    reasons = {s["reason"] for r in rows for s in r["carelab_meta"]["chain"]}
    assert reasons - {s["reason"] for r in default for s in r["carelab_meta"]["chain"]}


@pytest.mark.parametrize(("kind", "split"), [("hotpotqa", "test"), ("cofca", "test"), ("cofca", "train"),
                                             ("musique", "test"), ("drop", "test")])
def test_rule_pipeline_solves_heldout_items(tmp_path, kind, split):
    from carelab.care.sft.pipeline import SftDataConfig, run_pipeline

    src = synth.write(kind, 30, 0, tmp_path / f"in{synth.SUFFIX[kind]}", split=split, style="heldout")
    stats = run_pipeline(SftDataConfig(input=str(src), format=kind, out=str(tmp_path / "sft.jsonl")),
                         echo=lambda *_: None)
    assert stats["stages"]["stage3_tags"]["kept"] >= 0.7 * 30, stats["drop_reasons"]


def test_synth_cli_style(tmp_path):
    from carelab.cli import app

    out = tmp_path / "h.json"
    res = CliRunner().invoke(app, ["data", "synth", "--kind", "hotpotqa", "--n", "3", "--split", "test",
                                   "--style", "heldout", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert len(load_examples(out)) == 3 and all("heldout" in e.id for e in load_examples(out))
    res = CliRunner().invoke(app, ["data", "synth", "--kind", "hotpotqa", "--style", "fancy", "--out", str(out)])
    assert res.exit_code == 2 and "--style" in res.output
    with pytest.raises(ValueError, match="style"):
        synth.generate("drop", 2, style="fancy")
