"""Real datasets through 🤗 datasets, offline: rows in each hub layout, built locally, loaded by the same code path.

Each test writes rows shaped like the hub copy (column-wise HotpotQA/2Wiki context and facts, one DROP question
per row, MS MARCO passages as a dict of lists, LongBench and MuSiQue as published) into a ``save_to_disk``
folder or a local file and checks the QAExamples carelab makes of them. No network: the hub call itself is
checked by replacing ``datasets.load_dataset`` with one that returns such a local dataset.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets as hf
import pytest
from typer.testing import CliRunner

from carelab.care.data import hub
from carelab.cli import app
from carelab.runs import InputError, read_jsonl

HOTPOT_ROW = {
    "id": "5a8b57f25542995d1e6f1371", "question": "Were Scott Derrickson and Ed Wood of the same nationality?",
    "answer": "yes", "type": "comparison", "level": "hard",
    "supporting_facts": {"title": ["Scott Derrickson", "Ed Wood"], "sent_id": [0, 0]},
    "context": {"title": ["Ed Wood", "Scott Derrickson"],
                "sentences": [["Edward Davis Wood Jr. was an American filmmaker.", " He directed films."],
                              ["Scott Derrickson is an American director.", " He lives in Los Angeles."]]},
}
TWOWIKI_ROW = {
    "id": "a1", "type": "compositional", "question": "Who is the mother of the director of Polish-Russian War?",
    "answer": "Małgorzata Braunek",
    "context": {"title": ["Polish-Russian War (film)", "Xawery Żuławski"],
                "sentences": [["Polish-Russian War is a film directed by Xawery Żuławski."],
                              ["Xawery Żuławski is the son of Małgorzata Braunek."]]},
    "supporting_facts": {"title": ["Polish-Russian War (film)", "Xawery Żuławski"], "sent_id": [0, 0]},
    "evidences": [["Polish-Russian War", "director", "Xawery Żuławski"],
                  ["Xawery Żuławski", "mother", "Małgorzata Braunek"]],
}
MUSIQUE_ROW = {
    "id": "2hop__1_2", "question": "Where was the author of Tom Sawyer born?", "answer": "Florida, Missouri",
    "answer_aliases": ["Florida"], "answerable": True,
    "paragraphs": [{"idx": 0, "title": "Tom Sawyer", "paragraph_text": "Tom Sawyer was written by Mark Twain.",
                    "is_supporting": True},
                   {"idx": 1, "title": "Mark Twain", "paragraph_text": "Mark Twain was born in Florida, Missouri.",
                    "is_supporting": True},
                   {"idx": 2, "title": "Cats", "paragraph_text": "Cats sleep a lot.", "is_supporting": False}],
    "question_decomposition": [{"id": 1, "question": "author of Tom Sawyer", "answer": "Mark Twain",
                                "paragraph_support_idx": 0},
                               {"id": 2, "question": "where was #1 born", "answer": "Florida, Missouri",
                                "paragraph_support_idx": 1}],
}
LONGBENCH_ROW = {
    "input": "Which city is the capital of France?", "answers": ["Paris"], "length": 30,
    "context": "Passage 1:\nFrance\nParis is the capital of France. It is large.\n\nPassage 2:\nSpain\nMadrid is in Spain.",
    "dataset": "hotpotqa", "language": "en", "all_classes": None, "_id": "lb-1",
}
DROP_ROWS = [
    {"section_id": "nfl_1", "query_id": "q1", "passage": "The Bears scored 3 touchdowns. The Lions scored 2.",
     "question": "How many touchdowns did the Bears score?", "answers_spans": {"spans": ["3"], "types": ["number"]}},
    {"section_id": "nfl_1", "query_id": "q2", "passage": "The Bears scored 3 touchdowns. The Lions scored 2.",
     "question": "Which team scored 2 touchdowns?", "answers_spans": {"spans": ["Lions"], "types": ["span"]}},
]
MSMARCO_ROWS = [
    {"answers": ["About 20 minutes."], "query": "how long to boil an egg", "query_id": 19699, "query_type": "NUMERIC",
     "passages": {"is_selected": [0, 1], "passage_text": ["Eggs are food.", "Boil an egg for about 20 minutes."],
                  "url": ["http://a.example", "http://b.example"]}, "wellFormedAnswers": []},
    {"answers": ["No Answer Present."], "query": "what is zzz", "query_id": 2, "query_type": "DESCRIPTION",
     "passages": {"is_selected": [0], "passage_text": ["Nothing here."], "url": ["http://c.example"]},
     "wellFormedAnswers": []},
]


def saved(tmp_path: Path, rows: list[dict], split: str | None = None) -> str:
    """Rows as a ``save_to_disk`` folder (a DatasetDict when ``split`` is given), as the hub copy would be."""
    ds = hf.Dataset.from_list(rows)
    folder = tmp_path / "saved"
    (hf.DatasetDict({split: ds}) if split else ds).save_to_disk(str(folder))
    return str(folder)


def test_hotpotqa_distractor_columns_become_passages_and_facts(tmp_path):
    [ex] = hub.load(saved(tmp_path, [HOTPOT_ROW], "validation"), "hotpotqa", "validation")
    assert ex.id == HOTPOT_ROW["id"] and ex.answers == ["yes"] and ex.source == "hotpotqa"
    assert [p.title for p in ex.passages] == ["Ed Wood", "Scott Derrickson"]
    assert ex.supporting_sentences() == ["Scott Derrickson is an American director.",
                                         "Edward Davis Wood Jr. was an American filmmaker."]
    assert ex.meta["level"] == "hard" and ex.hops == 2
    assert hub.load_hub_dataset(saved(tmp_path / "again", [HOTPOT_ROW], "validation"), "validation",
                                "hotpotqa") == [ex]  # the documented (name, split, format) entry point


def test_2wiki_musique_longbench_drop_msmarco_shapes(tmp_path):
    def load(rows, fmt, name):
        return hub.load(saved(tmp_path / name, rows), fmt)

    [wiki] = load([TWOWIKI_ROW], "2wiki", "w")
    assert wiki.source == "2wiki" and wiki.hops == 2 and len(wiki.supporting_sentences()) == 2
    [mus] = load([MUSIQUE_ROW], "musique", "m")
    assert mus.answers == ["Florida, Missouri", "Florida"] and mus.hops == 2
    assert mus.supporting_facts == [("Tom Sawyer", 0), ("Mark Twain", 0)]
    [lb] = load([LONGBENCH_ROW], "longbench", "l")
    assert lb.meta["dataset"] == "hotpotqa" and [p.title for p in lb.passages] == ["France", "Spain"]
    drop = load(DROP_ROWS, "drop", "d")
    assert [(e.id, e.answers) for e in drop] == [("q1", ["3"]), ("q2", ["Lions"])]
    assert drop[0].meta["passage_id"] == "nfl_1"
    marco = load(MSMARCO_ROWS, "msmarco", "s")  # the unanswerable query is dropped, as from files
    assert [(e.id, e.answers) for e in marco] == [("19699", ["About 20 minutes."])]
    assert marco[0].supporting_facts == [("http://b.example", 0)]


def test_cofca_from_a_local_file_through_datasets(tmp_path):
    path = tmp_path / "cofca.jsonl"
    rows = [{"id": "c1", "question": "Who wrote Hamlet?", "answers": ["Marlowe"], "counterfactual": True,
             "original_answer": "Shakespeare", "context": "Hamlet was written by Marlowe. It is a tragedy."},
            {"id": "c2", "question": "What is 2+2?", "answers": ["4"], "counterfactual": False,
             "original_answer": None, "context": "Two and two make 4."}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    exs = hub.load(str(path), "cofca")
    assert [e.meta["counterfactual"] for e in exs] == [True, False] and exs[0].meta["original_answer"] == "Shakespeare"


def test_short_names_call_the_hub_with_their_id_config_and_split(tmp_path, monkeypatch):
    calls = []

    def fake_load_dataset(name, config=None, split=None, **kw):
        calls.append((name, config, split))
        return hf.Dataset.from_list([LONGBENCH_ROW if name == "THUDM/LongBench" else HOTPOT_ROW])

    monkeypatch.setattr(hf, "load_dataset", fake_load_dataset)
    assert hub.load("longbench-hotpotqa", limit=5)[0].meta["dataset"] == "hotpotqa"
    assert hub.load("hotpotqa", split="train", limit=1)[0].id == HOTPOT_ROW["id"]  # an explicit split wins
    assert calls[0] == ("THUDM/LongBench", "hotpotqa", "test")
    assert calls[1] == ("hotpotqa/hotpot_qa", "distractor", "train")


def test_bad_rows_and_sources_are_one_line_errors(tmp_path):
    bad = dict(HOTPOT_ROW, supporting_facts={"title": ["Nobody"], "sent_id": [0]})
    with pytest.raises(InputError, match=r"item 0.*supporting_facts\[0\]"):
        hub.load(saved(tmp_path, [bad]), "hotpotqa")
    with pytest.raises(InputError, match="--format"):
        hub.load(str(tmp_path / "saved"))
    with pytest.raises(InputError, match="no split 'test'"):
        hub.load(saved(tmp_path / "s", [HOTPOT_ROW], "validation"), "hotpotqa", "test")


def test_data_hub_command_writes_carelab_jsonl_the_other_commands_read(tmp_path):
    out = tmp_path / "hotpot.jsonl"
    result = CliRunner().invoke(app, ["data", "hub", "--source", saved(tmp_path, [HOTPOT_ROW] * 1),
                                      "--format", "hotpotqa", "--out", str(out)])
    assert result.exit_code == 0, result.output
    [(_, rec)] = list(read_jsonl(out))
    from carelab.care.data.loaders import load_examples

    [ex] = load_examples(out)
    assert rec["id"] == ex.id == HOTPOT_ROW["id"] and len(ex.supporting_sentences()) == 2
