"""Plain-text helpers every CARE stage shares: the one sentence splitter and the one stop-word list.

Loaders cut passages into sentences (supporting-fact indices point into them), the RAG/CRAG baselines
chunk and refine by sentence, and the rule backend aligns facts with reasoning sentences; one splitter
means a "sentence" is the same thing in all three.
"""

from __future__ import annotations

import re

_SENT_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")

#: English function words that say nothing about a passage's topic (BM25, the CRAG refiner, fact alignment)
STOP_WORDS = frozenset(
    "a an the of in on at to for from by with and or is are was were be been being what which who whom whose "
    "when where why how did does do that this these those it its as than then there their his her he she they "
    "them you your i we our not no".split()
)


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text``: end punctuation, whitespace, then a capital, digit, quote or bracket; never drops text.

    >>> split_sentences('Ada was born in Lorn. "Yes," she said. 3 days later she left! e.g. here')
    ['Ada was born in Lorn.', '"Yes," she said.', '3 days later she left! e.g. here']
    """
    text = text.strip()
    return [s.strip() for s in _SENT_SPLIT.split(text) if s.strip()] if text else []
