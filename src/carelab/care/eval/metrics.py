"""Evaluation metrics: LongBench's normalised QA F1 and exact match, and BLEU/ROUGE-L of quoted evidence.

F1/EM follow LongBench's ``metrics.py`` exactly (lowercase, strip punctuation, drop articles, collapse
whitespace; multiset token F1). Evidence BLEU uses sacrebleu and ROUGE-L uses rouge-score.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """LongBench/SQuAD normalisation: lower, drop punctuation, drop articles, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def token_f1(prediction_tokens: Sequence[str], gold_tokens: Sequence[str]) -> float:
    """Multiset token F1."""
    common = Counter(prediction_tokens) & Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(prediction_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def qa_f1_score(prediction: str, ground_truth: str) -> float:
    """LongBench ``qa_f1_score`` for one gold answer, in [0, 1].

    >>> round(qa_f1_score("The Eiffel Tower", "Eiffel tower in Paris"), 4)
    0.6667
    """
    return token_f1(normalize_answer(prediction).split(), normalize_answer(ground_truth).split())


def exact_match(prediction: str, ground_truth: str) -> float:
    """1.0 when the normalised strings are equal."""
    return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def best_over_golds(metric, prediction: str, golds: str | Iterable[str]) -> float:
    """Max of ``metric`` over several gold answers (LongBench's scoring)."""
    if isinstance(golds, str):
        golds = [golds]
    scores = [metric(prediction, g) for g in golds]
    return max(scores) if scores else 0.0


def evidence_bleu(quoted: Sequence[str], gold_facts: Sequence[str]) -> float | None:
    """Corpus-style BLEU (0–100) of the concatenated quotes against the concatenated gold facts.

    ``None`` when there are no gold facts to compare with (unlabelled data).
    """
    if not gold_facts:
        return None
    import sacrebleu

    hyp = " ".join(quoted)
    ref = " ".join(gold_facts)
    return float(sacrebleu.sentence_bleu(hyp, [ref]).score) if hyp.strip() else 0.0


def evidence_rouge_l(quoted: Sequence[str], gold_facts: Sequence[str]) -> float | None:
    """ROUGE-L F-measure (0–100) of the concatenated quotes against the concatenated gold facts."""
    if not gold_facts:
        return None

    hyp = " ".join(quoted)
    if not hyp.strip():
        return 0.0
    scorer = _rouge()
    return 100.0 * scorer.score(" ".join(gold_facts), hyp)["rougeL"].fmeasure


_ROUGE = None


def _rouge():
    global _ROUGE
    if _ROUGE is None:
        from rouge_score import rouge_scorer

        _ROUGE = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return _ROUGE
