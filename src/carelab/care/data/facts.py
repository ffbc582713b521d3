"""The built-in common-knowledge fact table behind the offline counterfactual (CofCA-shaped) test.

Context fidelity can only be measured on facts the model already *knows*: a counterfactual context
then pulls against its memory. Each :class:`Fact` has a question, its true answer, one sentence
stating it and an altered answer of the same type (drawn from the same group, so a capital is
replaced by another capital). The candidates are data, ``src/carelab/data/facts.json``; which of them
SmolLM2-135M-Instruct answers right without context is measured with
``carelab data check-facts --write-known src/carelab/data/facts_smollm2.json``; once that file exists
:func:`fact_table` returns only those facts (until then, all candidates).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

from carelab.care.eval.metrics import normalize_answer


@dataclass(frozen=True)
class Fact:
    """One common-knowledge fact and its counterfactual twin."""

    id: str
    category: str
    topic: str
    question: str
    answer: str
    sentence: str
    altered: str
    aliases: tuple[str, ...] = field(default_factory=tuple)

    @property
    def altered_sentence(self) -> str:
        """The sentence stating the altered fact (the answer replaced once)."""
        return _answer_re(self.answer).sub(lambda _m: self.altered, self.sentence, count=1)

    def accepts(self, prediction: str, counterfactual: bool = False) -> bool:
        """True when the prediction contains the (altered, if ``counterfactual``) answer or an alias."""
        golds = (self.altered,) if counterfactual else (self.answer, *self.aliases)
        pred = f" {normalize_answer(prediction)} "
        return any(f" {normalize_answer(g)} " in pred for g in golds if normalize_answer(g))


#: the candidate facts, a data file beside :data:`KNOWN_FILE` (the ids of those SmolLM2 knows)
TABLE_FILE = "facts.json"
KNOWN_FILE = "facts_smollm2.json"

_NUMBER_WORDS = {"2": "two", "3": "three", "4": "four", "5": "five", "6": "six", "7": "seven", "8": "eight",
                 "10": "ten", "11": "eleven", "12": "twelve", "24": "twenty-four", "26": "twenty-six",
                 "60": "sixty", "100": "hundred"}


def _answer_re(answer: str) -> re.Pattern:
    return re.compile(rf"(?<!\w){re.escape(answer)}(?!\w)")


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _pick_altered(fid: str, answer: str, pool: list[str]) -> str:
    """A deterministic different answer of the same group (same type)."""
    options = sorted({a for a in pool if normalize_answer(a) != normalize_answer(answer)})
    h = int(hashlib.sha256(fid.encode()).hexdigest(), 16)
    return options[h % len(options)]


def _aliases(category: str, answer: str) -> tuple[str, ...]:
    out: list[str] = []
    if category in ("author", "person") and " " in answer:
        out.append(answer.split()[-1] if not answer.endswith("Jr.") else "King")
    if answer in _NUMBER_WORDS:
        out.append(_NUMBER_WORDS[answer])
    if answer.endswith(" Ocean"):
        out.append(answer.removesuffix(" Ocean"))
    if category == "sport" and answer == "football":
        out.append("soccer")
    return tuple(out)


@lru_cache(maxsize=1)
def table_data() -> dict:
    """The raw table file: ``groups`` (question/sentence templates over (subject, answer) pairs) and ``free`` facts."""
    return json.loads(resources.files("carelab").joinpath("data", TABLE_FILE).read_text(encoding="utf-8"))


@lru_cache(maxsize=1)
def candidate_facts() -> tuple[Fact, ...]:
    """Every candidate fact (before checking which ones the model knows), in a fixed order."""
    table = table_data()
    facts: list[Fact] = []
    for group in table["groups"]:
        category, qt, st = group["category"], group["question"], group["sentence"]
        pairs = [(s, o) for s, o in group["pairs"]]
        pool = [o for _, o in pairs]
        for s, o in pairs:
            fid = f"{category}:{s}"
            facts.append(Fact(fid, category, s, qt.format(s=s), o, st.format(s=s, S=_cap(s), o=o),
                              _pick_altered(fid, o, pool), _aliases(category, o)))
    by_cat: dict[str, list[str]] = {}
    for cat, _, _, _, ans in table["free"]:
        by_cat.setdefault(cat, []).append(ans)
    for cat, topic, q, sent, ans in table["free"]:
        fid = f"{cat}:{topic}"
        facts.append(Fact(fid, cat, topic, q, ans, sent, _pick_altered(fid, ans, by_cat[cat]), _aliases(cat, ans)))
    # The table's invariant: the answer is stated exactly once (else the altered sentence would be ambiguous).
    return tuple(f for f in facts if len(_answer_re(f.answer).findall(f.sentence)) == 1)




@lru_cache(maxsize=1)
def known_ids() -> frozenset[str] | None:
    """Ids of the facts SmolLM2-135M-Instruct answered right closed-book (None if never measured)."""
    try:
        text = resources.files("carelab").joinpath("data", KNOWN_FILE).read_text(encoding="utf-8")
    except (FileNotFoundError, OSError):
        return None
    return frozenset(json.loads(text)["known"])


def fact_table(known_only: bool = True) -> list[Fact]:
    """The fact table; by default only the facts the embedded model is measured to know."""
    facts = list(candidate_facts())
    known = known_ids()
    if known_only and known is not None:
        facts = [f for f in facts if f.id in known]
    return facts
