"""Native loaders: every format on synthetic native files, and clear errors on hand-broken ones."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from carelab.care.data import synth
from carelab.care.data.loaders import FORMATS, detect_format, load_examples, load_examples_with_report
from carelab.runs import InputError

KIND_TO_FORMAT = {k: k for k in synth.KINDS}


@pytest.fixture(scope="module")
def native_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("native")
    return {k: synth.write(k, 6, 3, d / f"{k}{synth.SUFFIX[k]}", split="test") for k in synth.KINDS}


@pytest.mark.parametrize("kind", synth.KINDS)
def test_loader_reads_native_file(native_files, kind):
    path = native_files[kind]
    assert detect_format(path) == kind
    auto = load_examples(path)
    explicit = load_examples(path, KIND_TO_FORMAT[kind])
    assert [e.to_dict() for e in auto] == [e.to_dict() for e in explicit]
    assert len(auto) == 6
    for ex in auto:
        assert ex.question.strip() and ex.answers and ex.answer.strip()
        assert ex.passages and ex.context.strip()
        assert ex.source == kind
        if kind == "longbench":
            assert ex.supporting_facts == []
            assert ex.meta["dataset"] in ("hotpotqa", "2wikimqa", "musique", "multifieldqa_en")
        else:
            sents = ex.supporting_sentences()
            assert sents and all(s in ex.context for s in sents)
        if kind == "cofca":
            assert isinstance(ex.meta["counterfactual"], bool) and ex.meta["original_answer"]
            assert (ex.answer != ex.meta["original_answer"]) == ex.meta["counterfactual"]
        if kind in ("hotpotqa", "2wiki", "musique"):
            assert ex.hops >= 2 and ex.meta["chain"]
    assert len(load_examples(path, limit=2)) == 2


def test_musique_hops_from_decomposition(native_files):
    exs = load_examples(native_files["musique"])
    assert exs
    assert all(ex.hops == len(ex.meta["decomposition"]) for ex in exs)
    assert all(ex.id.startswith(f"{ex.hops}hop__") for ex in exs)


def test_drop_answers_cover_numbers_dates_and_spans(tmp_path):
    exs = load_examples(synth.write("drop", 60, 0, tmp_path / "d.json"))
    qs = " ".join(e.question for e in exs)
    assert "How many" in qs and "what date" in qs
    assert any(a.isdigit() for e in exs for a in e.answers)
    assert any("," in e.answer and e.answer.split(",")[-1].strip().isdigit() for e in exs)  # "May 3, 1990"


def test_msmarco_hf_row_layout_and_unanswerable(tmp_path):
    p = tmp_path / "ms.jsonl"
    rows = [
        {"query": "what is x", "query_id": 1, "query_type": "DESCRIPTION", "answers": ["X is a thing."],
         "wellFormedAnswers": [], "passages": {"is_selected": [1, 0], "passage_text": ["X is a thing.", "Y."],
                                               "url": ["u1", "u2"]}},
        {"query": "what is z", "query_id": 2, "answers": ["No Answer Present."], "wellFormedAnswers": [],
         "passages": {"is_selected": [0], "passage_text": ["Q."], "url": ["u3"]}},
    ]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    exs, rep = load_examples_with_report(p, "msmarco")
    assert len(exs) == 1 and rep.unanswerable == 1
    assert exs[0].supporting_sentences() == ["X is a thing."]


def _broken_hotpot(path, native):
    data = json.loads(native.read_text())
    del data[1]["question"]
    path.write_text(json.dumps(data))


def _jsonl_edit(native, path, lineno, fn):
    lines = native.read_text().splitlines()
    obj = json.loads(lines[lineno - 1])
    fn(obj)
    lines[lineno - 1] = json.dumps(obj)
    path.write_text("\n".join(lines) + "\n")


BROKEN = {
    "hotpotqa": (lambda nat, p: _broken_hotpot(p, nat), "item 1", "question"),
    "2wiki": (lambda nat, p: p.write_text(json.dumps(
        [r if i != 2 else {**r, "context": [["only a title"]]} for i, r in enumerate(json.loads(nat.read_text()))])),
        "item 2", "context[0]"),
    "musique": (lambda nat, p: _jsonl_edit(nat, p, 3, lambda o: o.pop("paragraphs")), "line 3", "paragraphs"),
    "longbench": (lambda nat, p: _jsonl_edit(nat, p, 2, lambda o: o.update(answers=[])), "line 2", "answers"),
    "cofca": (lambda nat, p: _jsonl_edit(nat, p, 4, lambda o: o.update(counterfactual=True, original_answer=None)),
              "line 4", "original_answer"),
    "drop": (lambda nat, p: p.write_text(json.dumps({k: {**v, "qa_pairs": [{**v["qa_pairs"][0], "answer": {
        "number": "", "spans": [], "date": {}}}] + v["qa_pairs"][1:]} if i == 0 else v
        for i, (k, v) in enumerate(json.loads(nat.read_text()).items())})), "qa_pairs[0]", "answer"),
    "msmarco": (lambda nat, p: p.write_text(json.dumps({**json.loads(nat.read_text()), "passages": {
        k: ([{"url": "u"}] if k == "0" else v) for k, v in json.loads(nat.read_text())["passages"].items()}})),
        "query 0", "passages[0].passage_text"),
}


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_broken_rows_name_file_line_and_field(native_files, tmp_path, kind):
    breaker, where, fld = BROKEN[kind]
    bad = tmp_path / f"bad{synth.SUFFIX[kind]}"
    breaker(native_files[kind], bad)
    with pytest.raises(InputError) as err:
        load_examples(bad, kind)
    msg = str(err.value)
    assert str(bad) in msg and where in msg and f"'{fld}'" in msg
    exs, rep = load_examples_with_report(bad, kind, skip_invalid=True)
    assert rep.skipped == 1 and len(exs) == 5


def test_invalid_json_line_and_carelab_roundtrip(native_files, tmp_path):
    exs = load_examples(native_files["hotpotqa"])
    p = tmp_path / "ours.jsonl"
    lines = [json.dumps(e.to_dict()) for e in exs]
    lines.insert(2, '{"id": "x", "question": ')
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"line 3"):
        load_examples(p, "carelab")
    back, rep = load_examples_with_report(p, "carelab", skip_invalid=True)
    assert rep.skipped == 1 and [b.to_dict() for b in back] == [e.to_dict() for e in exs]


def test_undetectable_format_is_a_clear_error(tmp_path):
    p = tmp_path / "odd.jsonl"
    p.write_text(json.dumps({"foo": 1}) + "\n")
    with pytest.raises(InputError, match="--format"):
        load_examples(p)
    with pytest.raises(InputError, match="unknown format"):
        load_examples(p, "squad")
    assert set(FORMATS) >= set(synth.KINDS)


def test_convert_cli_reports_skipped(native_files, tmp_path):
    from carelab.cli import app

    bad = tmp_path / "bad.json"
    _broken_hotpot(bad, native_files["hotpotqa"])
    runner = CliRunner()
    res = runner.invoke(app, ["data", "convert", "--input", str(bad), "--out", str(tmp_path / "o.jsonl")])
    assert res.exit_code == 2 and "item 1" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["data", "convert", "--input", str(bad), "--out", str(tmp_path / "o.jsonl"),
                              "--skip-invalid"])
    assert res.exit_code == 0, res.output
    assert "5 examples loaded" in res.output and "1 malformed rows skipped" in res.output
