"""LongBench F1/EM on hand-computed cases, and evidence BLEU/ROUGE-L."""

from __future__ import annotations

import pytest

from carelab.care.eval import metrics as M


@pytest.mark.parametrize("pred,gold,expected", [
    ("Paris", "Paris", 1.0),
    ("The Paris.", "paris", 1.0),             # article, punctuation and case dropped
    ("Paris France", "Paris", 2 / 3),          # P=1/2, R=1 -> 2/3
    ("a b c d", "c d e f", 4 / 7),             # article 'a' dropped: b c d vs c d e f -> P=2/3, R=1/2
    ("New York City", "new york", 0.8),        # P=2/3 R=1 -> 0.8
    ("", "Paris", 0.0),
    ("the", "Paris", 0.0),
    ("1,000 people", "1000", 0.6666666666666666),  # '1000' 'people' vs '1000'
])
def test_qa_f1_hand_computed(pred, gold, expected):
    assert M.qa_f1_score(pred, gold) == pytest.approx(expected)


def test_multiset_counts():
    # 'x x' vs 'x': common = 1, P = 1/2, R = 1
    assert M.qa_f1_score("x x", "x") == pytest.approx(2 / 3)


def test_exact_match_and_best_over_golds():
    assert M.exact_match("The Beatles!", "beatles") == 1.0
    assert M.exact_match("Beatles band", "beatles") == 0.0
    assert M.best_over_golds(M.qa_f1_score, "Rome", ["Paris", "Rome"]) == 1.0
    assert M.best_over_golds(M.qa_f1_score, "Rome", []) == 0.0


def test_evidence_bleu_rouge():
    gold = ["Marie Curie was born in Warsaw."]
    assert M.evidence_bleu(gold, gold) == pytest.approx(100.0)
    assert M.evidence_rouge_l(gold, gold) == pytest.approx(100.0)
    assert M.evidence_bleu([], gold) == 0.0
    assert M.evidence_rouge_l(["Warsaw is big"], gold) < 50
    assert M.evidence_bleu(["x"], []) is None


def test_aggregate_carries_bootstrap_intervals_and_n():
    """Each metric cell of a (method, dataset) row has its 95 % interval; hand-computed on two items."""
    from carelab.care.eval.harness import CI_METRICS, aggregate

    recs = [{"id": "a", "f1": 1.0, "em": 1.0, "well_formed": True, "gen_seconds": 2.0,
             "quotes": [{"match": "exact"}, {"match": "fuzzy"}]},
            {"id": "b", "f1": 0.0, "em": 0.0, "well_formed": True, "gen_seconds": 2.0,
             "quotes": [{"match": "exact"}, {"match": "none"}]}]
    m = aggregate(recs, "qa", care_style=True)
    assert (m["f1"], m["f1_lo"], m["f1_hi"], m["score_n"]) == (50.0, 0.0, 100.0, 2)  # means 0/50/100
    assert (m["format_rate"], m["format_rate_lo"], m["format_rate_hi"]) == (100.0, 100.0, 100.0)
    # Every item has exactly one exact quote of two, so the exact share is 50 % in every resample; in-context
    # is 2/2 for a and 1/2 for b, so resamples give 50, 75 or 100 %.
    assert (m["quote_exact_share"], m["quote_exact_share_lo"], m["quote_exact_share_hi"]) == (50.0, 50.0, 50.0)
    assert (m["quote_in_context_share"], m["quote_in_context_share_lo"], m["quote_in_context_share_hi"]) == (
        75.0, 50.0, 100.0)
    assert m["item_scores"] == {"a": 100.0, "b": 0.0} and m["n_quotes"] == 4
    assert m["items_per_s"] == pytest.approx(0.5)
    counterfactual_only = {"f1_counterfactual", "f1_factual", "memorised_share"}
    assert all(f"{k}_lo" in m and f"{k}_hi" in m for k in set(CI_METRICS) - counterfactual_only)
