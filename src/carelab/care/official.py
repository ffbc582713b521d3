"""Slow, literal transcriptions of the public CARE reward rules, kept only as a reference.

The fast rewards in :mod:`carelab.care.rewards` and the linear-time parser in :mod:`carelab.care.format`
are tested and benchmarked against these, so any divergence from the official semantics shows up as a
failing test. Do not "fix" them: their regexes backtrack quadratically on tag spam, on purpose.
"""

from __future__ import annotations

import difflib
import re


def official_retrieval_reward(predict_str: str, context: str, threshold: float = 0.85) -> float:
    """Official rule: exact substring → 1, else any lower-cased word window with ratio ≥ 0.85 → 0.5."""
    spans = [re.sub(r"\s+", " ", s).strip() for s in re.findall(r"<retrieval>(.*?)</retrieval>", predict_str, re.DOTALL)]
    spans = [s for s in spans if s]
    if not spans:
        return 0.2
    found = 0.0
    for span in spans:
        if span in context:
            found += 1
            continue
        words, span_words = context.lower().split(), span.lower().split()
        for i in range(len(words) - len(span_words) + 1):
            window = " ".join(words[i:i + len(span_words)])
            if difflib.SequenceMatcher(None, window, span.lower()).ratio() >= threshold:
                found += 0.5
                break
    return min(1.0, found / len(spans))


def official_accuracy_reward(predict_str: str, ground_truth: str) -> float:
    """Official rule: set F1 of whitespace tokens of the text after the first 'Answer:'."""
    m = re.search(r"Answer:(.*)", predict_str, re.DOTALL)
    answer = m.group(1).strip() if m else ""
    if not answer:
        return 0.0
    pred, gold = set(answer.split()), set(ground_truth.split())
    common = pred & gold
    if not common:
        return 0.0
    p, r = len(common) / len(pred), len(common) / len(gold)
    return 2 * p * r / (p + r)


def official_format_reward(predict_str: str) -> float:
    """Official rule: full match of think…Answer: and ≥ 1 retrieval inside the first think block."""
    s = predict_str.strip()
    if not re.fullmatch(r"<think>.*</think>.*Answer:.*", s, re.DOTALL):
        return 0.0
    m = re.search(r"<think>(.*?)</think>", s, re.DOTALL)
    return 1.0 if m and re.findall(r"<retrieval>.*?</retrieval>", m.group(1), re.DOTALL) else 0.0


# The official regexes as used by the parser (``format.parse``), exposed one by one as test oracles.
def official_quote_spans(predict_str: str) -> list[str]:
    """Raw bodies of ``<retrieval>(.*?)</retrieval>`` (DOTALL), as ``re.findall`` gives them."""
    return re.findall(r"<retrieval>(.*?)</retrieval>", predict_str, re.DOTALL)


def official_think(predict_str: str) -> tuple[str, int] | None:
    """Body and end offset of the first ``<think>(.*?)</think>`` match (DOTALL), or None."""
    m = re.search(r"<think>(.*?)</think>", predict_str, re.DOTALL)
    return (m.group(1), m.end()) if m else None


def official_answer_text(predict_str: str) -> str:
    """The official answer: the text after the first ``Answer:`` (``Answer:(.*)``, DOTALL), stripped."""
    m = re.search(r"Answer:(.*)", predict_str, re.DOTALL)
    return m.group(1).strip() if m else ""
