"""Offline synthetic worlds written in each dataset's *native* format.

Why: CARE's data pipeline, training and evaluation must run (and be tested) without network access,
and every native loader must be exercised on realistic files. A world is a handful of fictional
people, cities, countries, films, books and companies whose facts are stated in short passages;
questions chain 2–4 of those facts (bridge) or compare two (comparison), and the chain is recorded
(``carelab_meta.chain``) so the ``rule`` backend can reason deterministically.

Train and test worlds never share a name: each split builds names from its own consonant set, so no
entity, title or question can appear in both. Everything is a pure function of (kind, n, seed, split).
The counterfactual (CofCA-shaped) kind uses the real common-knowledge :mod:`carelab.care.data.facts` table,
split by a hash of the fact id, with long distractor contexts (the altered fact stated once).
Each world can be worded in one of :data:`STYLES` (:class:`Style`): the original ``default``, the varied
``mixed`` training family, or the ``heldout`` family that training never sees (generalisation tests).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from carelab.care.data.facts import fact_table

KINDS = ("hotpotqa", "2wiki", "musique", "drop", "msmarco", "longbench", "cofca")
SPLITS = ("train", "test")
STYLES = ("default", "mixed", "heldout")

# Disjoint consonant sets make the two splits' name pools disjoint by construction.
_CONSONANTS = {"train": "bdklmnh", "test": "fgprstvz"}
_VOWELS = "aeiou"
_ADJ = ["Silver", "Quiet", "Northern", "Hidden", "Golden", "Broken", "Last", "Winter", "Crimson", "Distant",
        "Iron", "Paper", "Glass", "Burning", "Lonely", "Seventh"]
_NOUNS = ["Lantern", "Harbor", "Garden", "Letter", "Mirror", "Bridge", "River", "Orchard", "Crown", "Voyage",
          "Tower", "Song", "Road", "Archive", "Meadow", "Compass"]
_PROFESSIONS = ["painter", "architect", "chemist", "novelist", "composer", "engineer", "botanist", "historian",
                "sculptor", "physician", "astronomer", "lawyer", "photographer", "economist"]
_CO_SUFFIX = ["Industries", "Works", "Holdings", "Textiles", "Instruments", "Foods", "Shipping", "Press"]
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December"]
_FILLERS = [
    "{n} is often mentioned in regional histories.",
    "Several local archives keep records about {n}.",
    "Little is written about the early years of {n}.",
    "Travel guides describe {n} only briefly.",
    "Scholars have debated the importance of {n} for decades.",
    "A small museum exhibit was once dedicated to {n}.",
    "Newspapers of the period rarely discussed {n}.",
    "Some accounts of {n} are considered unreliable by historians.",
    "The name {n} appears in a number of old letters and diaries.",
    "Interest in {n} grew again during the last century.",
    "Many visitors first hear of {n} through word of mouth.",
    "Documents about {n} were partly lost in a fire.",
]


# --------------------------------------------------------------------------------------------------
# A fictional world
# --------------------------------------------------------------------------------------------------


class World:
    """Fictional entities for one item; names come from the split's own syllables."""

    def __init__(self, rng: random.Random, split: str, style: str = "default"):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.rng, self.split = rng, split
        self.style: Style = _style(style)
        self.used: set[str] = set()
        self.years: set[int] = set()
        self._vrng: random.Random | None = None

    def pick(self, options: Sequence[str]) -> str:
        """One phrasing variant; drawn from a separate generator, so the world (names, years) never depends
        on the style and the default style (one variant each) consumes no randomness at all."""
        if len(options) == 1:
            return options[0]
        if self._vrng is None:  # seeded from the world's state without advancing it
            self._vrng = random.Random(hashlib.sha1(repr(self.rng.getstate()).encode()).hexdigest())
        return self._vrng.choice(list(options))

    # names ---------------------------------------------------------------------------------------
    def _word(self, syllables: int) -> str:
        cons = _CONSONANTS[self.split]
        parts = []
        for i in range(syllables):
            syl = self.rng.choice(cons) + self.rng.choice(_VOWELS)
            if i == syllables - 1 and self.rng.random() < 0.5:
                syl += self.rng.choice(cons)
            parts.append(syl)
        return "".join(parts).capitalize()

    def name(self, kind: str) -> str:
        for _ in range(1000):
            if kind == "person":
                n = f"{self._word(2)} {self._word(self.rng.choice([2, 3]))}"
            elif kind == "film":
                n = f"The {self.rng.choice(_ADJ)} {self._word(2)}"
            elif kind == "book":
                n = f"{self._word(2)} and the {self.rng.choice(_NOUNS)}"
            elif kind == "company":
                n = f"{self._word(2)} {self.rng.choice(_CO_SUFFIX)}"
            elif kind == "country":
                n = self._word(2) + "ia"
            elif kind == "currency":
                n = self._word(2).lower()
            else:  # city, river
                n = self._word(self.rng.choice([2, 3]))
            if n not in self.used:
                self.used.add(n)
                return n
        raise RuntimeError("name pool exhausted")

    def year(self, lo: int = 1700, hi: int = 2000) -> int:
        for _ in range(1000):
            y = self.rng.randint(lo, hi)
            if y not in self.years:
                self.years.add(y)
                return y
        return self.rng.randint(lo, hi)

    # entities ------------------------------------------------------------------------------------
    def entity(self, kind: str, **fixed: Any) -> dict:
        """A new entity of ``kind``; relations not in ``fixed`` point at fresh names (no passage)."""
        e: dict[str, Any] = {"type": kind, "name": self.name(kind), "facts": {}}
        f = e["facts"]
        if kind == "person":
            f["born_in"] = fixed.get("born_in") or self.name("city")
            f["born_year"] = fixed.get("born_year") or self.year(1800, 1990)
            job = self.rng.choice(_PROFESSIONS)
            f["profession"] = ("an " if job[0] in "aeiou" else "a ") + job
        elif kind == "city":
            f["country"] = fixed.get("country") or self.name("country")
            f["founded"] = fixed.get("founded") or self.year(900, 1900)
            f["river"] = self.name("river")
        elif kind == "country":
            f["capital"] = fixed.get("capital") or self.name("city")
            f["currency"] = fixed.get("currency") or self.name("currency")
        elif kind == "film":
            f["director"] = fixed.get("director") or self.name("person")
            f["released"] = fixed.get("released") or self.year(1920, 2020)
        elif kind == "book":
            f["author"] = fixed.get("author") or self.name("person")
            f["published"] = fixed.get("published") or self.year(1750, 2020)
        elif kind == "company":
            f["founder"] = fixed.get("founder") or self.name("person")
            f["hq"] = fixed.get("hq") or self.name("city")
            f["established"] = fixed.get("established") or self.year(1850, 2010)
        else:
            raise ValueError(kind)
        return e

    def passage(self, e: dict, fillers: int = 1) -> tuple[str, list[str], dict[str, int]]:
        """(title, sentences, relation -> sentence index) for an entity; fillers pad it with no facts."""
        n, f = e["name"], e["facts"]
        stated = [(rel, self.pick(self.style.sentence[rel]).format(s=n, o=f[rel])) for rel in f]
        self.rng.shuffle(stated)
        sents = [s for _, s in stated]
        pool = self.style.fillers
        for tmpl in self.rng.sample(pool, min(fillers, len(pool))):
            sents.insert(self.rng.randint(1, len(sents)), self.pick(tmpl).format(n=n))
        index = {rel: sents.index(s) for rel, s in stated}
        return n, sents, index


_FACT_SENTENCE = {
    "born_in": "{s} was born in the city of {o}.",
    "born_year": "{s} was born in the year {o}.",
    "profession": "{s} worked as {o}.",
    "country": "{s} is a city in {o}.",
    "founded": "{s} was founded in the year {o}.",
    "river": "{s} lies on the banks of the {o} River.",
    "capital": "The capital of {s} is {o}.",
    "currency": "The currency of {s} is the {o}.",
    "director": "{s} is a film directed by {o}.",
    "released": "{s} was released in the year {o}.",
    "author": "{s} is a novel written by {o}.",
    "published": "{s} was first published in the year {o}.",
    "founder": "{s} was founded by {o}.",
    "hq": "{s} has its headquarters in {o}.",
    "established": "{s} was established in the year {o}.",
}
# Paraphrases the rule reasoner uses: the same fact, never the context's own wording.
_REASON = {
    "born_in": "{s} comes from {o}.",
    "born_year": "{s}'s year of birth is {o}.",
    "country": "{s} belongs to {o}.",
    "founded": "{s} dates back to {o}.",
    "river": "{s} sits by the {o} River.",
    "capital": "The capital city of {s} is {o}.",
    "currency": "People in {s} pay with the {o}.",
    "director": "The person behind the camera for {s} is {o}.",
    "released": "{s} came out in {o}.",
    "author": "The writer of {s} is {o}.",
    "published": "{s} appeared in print in {o}.",
    "founder": "The person who started {s} is {o}.",
    "hq": "{s} is based in {o}.",
    "established": "{s} started operating in {o}.",
}
_NP = {
    "director": "the director of {x}", "author": "the author of {x}", "founder": "the founder of {x}",
    "born_in": "the birthplace of {x}", "country": "the country in which {x} lies", "capital": "the capital of {x}",
    "hq": "the headquarters city of {x}",
}
_FINAL = {
    "director": "Who directed {x}?", "author": "Who wrote {x}?", "founder": "Who founded {x}?",
    "born_in": "In which city was {x} born?", "born_year": "In what year was {x} born?",
    "country": "In which country is {x}?", "founded": "In what year was {x} founded?",
    "river": "On which river does {x} lie?", "capital": "What is the capital of {x}?",
    "currency": "What is the currency of {x}?", "hq": "In which city does {x} have its headquarters?",
    "released": "In what year was {x} released?", "published": "In what year was {x} first published?",
    "established": "In what year was {x} established?",
}
# relation -> type of the entity it points to (None: a terminal value)
_TARGET = {"director": "person", "author": "person", "founder": "person", "born_in": "city", "country": "country",
           "capital": "city", "hq": "city", "born_year": None, "founded": None, "river": None, "currency": None,
           "released": None, "published": None, "established": None}
_OUT = {"film": ["director"], "book": ["author"], "company": ["founder", "hq"], "person": ["born_in", "born_year"],
        "city": ["country", "founded", "river"], "country": ["capital", "currency"]}
_CONNECT = ["First,", "Next,", "Then,", "After that,"]


def _step(world: World, title: str, idx: int, subj: str, rel: str, obj: Any) -> dict:
    return {"title": title, "sent": idx, "subject": subj, "relation": rel, "object": str(obj),
            "reason": world.pick(world.style.reason[rel]).format(s=subj, o=obj)}


def _bridge(world: World, hops: int) -> dict:
    """A chain of ``hops`` facts from a film/book/company to a final value, each fact in its own passage."""
    rng = world.rng
    for _ in range(200):
        start = rng.choice(["film", "book", "company"])
        rels: list[str] = []
        kind = start
        ok = True
        for h in range(hops):
            options = [r for r in _OUT[kind] if (_TARGET[r] is not None) or h == hops - 1]
            if h < hops - 1:
                options = [r for r in options if _TARGET[r] is not None and r not in rels]
            if not options:
                ok = False
                break
            r = rng.choice(options)
            rels.append(r)
            kind = _TARGET[r] or ""
        if ok:
            break
    entities, steps, passages = [], [], []
    current = world.entity(start)
    entities.append(current)
    for i, r in enumerate(rels):
        tgt = _TARGET[r]
        if tgt is not None and i < hops - 1:
            nxt = world.entity(tgt)
            current["facts"][r] = nxt["name"]
            if r == "capital":
                nxt["facts"]["country"] = current["name"]
        else:
            nxt = None
        title, sents, index = world.passage(current, fillers=rng.randint(1, 2))
        passages.append((title, sents))
        steps.append(_step(world, title, index[r], current["name"], r, current["facts"][r]))
        if nxt is not None:
            entities.append(nxt)
            current = nxt
    x = entities[0]["name"]
    for r in rels[:-1]:
        x = world.pick(world.style.np[r]).format(x=x)
    question = world.pick(world.style.final[rels[-1]]).format(x=x)
    answer = steps[-1]["object"]
    return {"question": question, "answer": answer, "type": "bridge", "steps": steps, "passages": passages,
            "types": [e["type"] for e in entities]}


_COMPARE = {
    "person": ("born_year", "Who was born earlier, {a} or {b}?", "Who was born later, {a} or {b}?"),
    "film": ("released", "Which film was released earlier, {a} or {b}?", "Which film was released later, {a} or {b}?"),
    "city": ("founded", "Which city was founded earlier, {a} or {b}?", "Which city was founded later, {a} or {b}?"),
    "book": ("published", "Which book was published earlier, {a} or {b}?",
             "Which book was published later, {a} or {b}?"),
}


# --------------------------------------------------------------------------------------------------
# Phrasing styles
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Style:
    """Every template a world is phrased with; each slot lists variants (one per slot = deterministic text).

    Why: the generalisation test needs contexts and questions whose wording training never saw, so the
    wording lives in one swappable object. ``default`` is the original output, ``mixed`` draws each slot
    from a few train-family variants (more varied SFT data), ``heldout`` uses a disjoint family for tests.
    """

    name: str
    sentence: dict[str, tuple[str, ...]]  # relation -> fact sentence ({s} subject, {o} object)
    reason: dict[str, tuple[str, ...]]  # relation -> the rule reasoner's paraphrase of the fact
    final: dict[str, tuple[str, ...]]  # relation -> question asking for the object of {x}
    np: dict[str, tuple[str, ...]]  # relation -> noun phrase for the object of {x} (bridge nesting)
    compare: dict[str, tuple[tuple[str, ...], tuple[str, ...]]]  # kind -> (earlier, later) questions
    fillers: tuple[tuple[str, ...], ...]  # 12 slots of sentences that state no fact ({n} the entity)
    drop_sents: tuple[tuple[str, ...], ...]  # the 5 game-report sentences (see _drop_data)
    drop_q: dict[str, tuple[str, ...]]  # DROP question kind -> templates
    msmarco_query: tuple[str, ...]  # {c} the company
    longbench_block: str  # one passage of a LongBench context ({j} number, {t} title, {x} text)


def _one(d: dict[str, str]) -> dict[str, tuple[str, ...]]:
    return {k: (v,) for k, v in d.items()}


def _plus(base: dict[str, str], extra: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
    """The default template first, then the extra train-family variants."""
    return {k: (v, *extra.get(k, ())) for k, v in base.items()}


_DROP_SENTS = (
    "The {ta} played the {tb} on {date}.",
    "The game took place at {venue} in front of {fans} fans.",
    "{pa} scored {ga} for the {ta}.",
    "{pb} scored {gb} for the {tb}.",
    "Both teams met again the following season.",
)
_DROP_Q = {
    "count": "How many goals did {pa} score?", "date": "On what date did the {ta} play the {tb}?",
    "span": "Who scored for the {tb}?", "total": "How many goals were scored in total?",
    "diff": "How many more goals did {pa} score than {pb}?", "fans": "How many fans attended the game?",
}

_DEFAULT_STYLE = Style(
    "default", _one(_FACT_SENTENCE), _one(_REASON), _one(_FINAL), _one(_NP),
    {k: ((e,), (late,)) for k, (_, e, late) in _COMPARE.items()}, tuple((f,) for f in _FILLERS),
    tuple((s,) for s in _DROP_SENTS), _one(_DROP_Q), ("who founded {c} and where is it based",),
    "Passage {j}:\n{t}\n{x}")

_MIXED_COMPARE = {
    "person": ("Who was born first, {a} or {b}?", "Who was born last, {a} or {b}?"),
    "film": ("Which film came out first, {a} or {b}?", "Which film came out last, {a} or {b}?"),
    "city": ("Which city is older, {a} or {b}?", "Which city is younger, {a} or {b}?"),
    "book": ("Which book came out first, {a} or {b}?", "Which book came out last, {a} or {b}?"),
}
# Train family: more ways to say the same thing, all disjoint from the held-out family below.
_MIXED_STYLE = Style(
    "mixed",
    _plus(_FACT_SENTENCE, {
        "born_in": ("{s} was born in {o}.", "{s}'s place of birth was {o}."),
        "born_year": ("{s} was born in {o}.", "In {o}, {s} was born."),
        "profession": ("{s} was {o} by profession.", "{s} earned a living as {o}."),
        "country": ("{s} is a city located in {o}.", "{s} is one of the cities of {o}."),
        "founded": ("{s} was founded in {o}.", "The city of {s} was founded in {o}."),
        "river": ("{s} is situated on the {o} River.", "The {o} River passes {s}."),
        "capital": ("{o} is the capital of {s}.", "{s} has {o} as its capital."),
        "currency": ("{s} uses the {o} as its currency.", "The official currency of {s} is the {o}."),
        "director": ("{s} was directed by {o}.", "{o} is the director of the film {s}."),
        "released": ("{s} was released in {o}.", "The film {s} was released in {o}."),
        "author": ("{s} was written by {o}.", "{o} wrote the novel {s}."),
        "published": ("{s} was first published in {o}.", "The novel {s} was published in {o}."),
        "founder": ("{o} founded {s}.", "{s} was started by {o}."),
        "hq": ("{s} is headquartered in {o}.", "The headquarters of {s} are in {o}."),
        "established": ("{s} was established in {o}.", "{s} was set up in {o}."),
    }),
    _plus(_REASON, {
        "born_in": ("{s}'s hometown is {o}.",), "born_year": ("{s} arrived in the world in {o}.",),
        "country": ("{s} is part of {o}.",), "founded": ("{s} goes back to {o}.",),
        "river": ("{s} is on the {o} River.",), "capital": ("{s} is governed from {o}.",),
        "currency": ("{s} trades in the {o}.",), "director": ("{s} was made by {o}.",),
        "released": ("{s} hit screens in {o}.",), "author": ("{s} is by {o}.",),
        "published": ("{s} first came out in {o}.",), "founder": ("{s} was begun by {o}.",),
        "hq": ("{s} operates out of {o}.",), "established": ("{s} began in {o}.",),
    }),
    _plus(_FINAL, {
        "director": ("Who is the director of {x}?",), "author": ("Who is the author of {x}?",),
        "founder": ("Who is the founder of {x}?",), "born_in": ("Where was {x} born?",),
        "born_year": ("When was {x} born?",), "country": ("In what country is {x} located?",),
        "founded": ("When was {x} founded?",), "river": ("What river is {x} on?",),
        "capital": ("What is the capital city of {x}?",), "currency": ("What currency is used in {x}?",),
        "hq": ("Where is {x} headquartered?",), "released": ("When was {x} released?",),
        "published": ("When was {x} first published?",), "established": ("When was {x} established?",),
    }),
    _plus(_NP, {
        "director": ("the person who directed {x}",), "author": ("the writer of {x}",),
        "founder": ("the person who founded {x}",), "born_in": ("the city where {x} was born",),
        "country": ("the country where {x} is",), "capital": ("the capital city of {x}",),
        "hq": ("the city where {x} is headquartered",),
    }),
    {k: ((e, _MIXED_COMPARE[k][0]), (late, _MIXED_COMPARE[k][1])) for k, (_, e, late) in _COMPARE.items()},
    tuple(zip(_FILLERS, [
        "{n} appears in several regional histories.", "Local archives hold a few records about {n}.",
        "The early years of {n} are poorly documented.", "Guidebooks mention {n} only in passing.",
        "The importance of {n} has long been debated.", "An exhibit about {n} was shown at a small museum.",
        "Period newspapers said little about {n}.", "Historians doubt some stories told about {n}.",
        "Old letters mention {n} now and then.", "Interest in {n} revived in the last century.",
        "Most people learn about {n} by word of mouth.", "A fire destroyed part of the papers about {n}.",
    ], strict=True)),
    tuple(zip(_DROP_SENTS, (
        "The {ta} met the {tb} on {date}.", "{fans} fans watched the game at {venue}.",
        "{pa} got {ga} for the {ta}.", "{pb} got {gb} for the {tb}.", "The two teams played again the next season.",
    ), strict=True)),
    _plus(_DROP_Q, {
        "count": ("How many times did {pa} score?",), "date": ("When did the {ta} play the {tb}?",),
        "span": ("Which player scored for the {tb}?",), "total": ("How many goals were there in the game?",),
        "diff": ("How many goals more did {pa} score than {pb}?",), "fans": ("How many people watched the game?",),
    }),
    ("who founded {c} and where is it based", "who started {c} and where is it located"),
    "Passage {j}:\n{t}\n{x}")

# Held-out family (generalisation tests only): encyclopedia-style prose and a disjoint question family
# ("Which city was X born in?", "What was the birth year of X?", "Of A and B, who is the elder?").
_HELDOUT_STYLE = Style(
    "heldout",
    _one({
        "born_in": "{s} is a native of {o}.", "born_year": "Records date the birth of {s} to {o}.",
        "profession": "By trade, {s} was {o}.", "country": "{s} lies within the borders of {o}.",
        "founded": "Records date the founding of {s} to {o}.", "river": "The {o} River flows through {s}.",
        "capital": "{o} serves as the seat of government of {s}.", "currency": "Prices in {s} are quoted in the {o}.",
        "director": "{o} directed the picture {s}.", "released": "{s} premiered in cinemas in {o}.",
        "author": "{o} is the author of the novel {s}.", "published": "The first edition of {s} was printed in {o}.",
        "founder": "{s} owes its creation to {o}.", "hq": "The head office of {s} is located in {o}.",
        "established": "{s} opened for business in {o}.",
    }),
    _one(_REASON),
    _one({
        "director": "Which filmmaker was behind {x}?", "author": "Which writer is {x} by?",
        "founder": "Which person set up {x}?", "born_in": "Which city was {x} born in?",
        "born_year": "What was the birth year of {x}?", "country": "Which country is {x} part of?",
        "founded": "What was the founding year of {x}?", "river": "Which river flows through {x}?",
        "capital": "Which city serves as capital of {x}?", "currency": "Which currency circulates in {x}?",
        "hq": "Which city is {x} based in?", "released": "What was the release year of {x}?",
        "published": "What was the year of first publication of {x}?",
        "established": "What was the year of establishment of {x}?",
    }),
    _one({
        "director": "the filmmaker behind {x}", "author": "the novelist who penned {x}",
        "founder": "the entrepreneur who set up {x}", "born_in": "the home town of {x}",
        "country": "the nation containing {x}", "capital": "the seat of government of {x}",
        "hq": "the city hosting the head office of {x}",
    }),
    {"person": (("Of {a} and {b}, who is the elder?",), ("Of {a} and {b}, who is the younger?",)),
     "film": (("Of {a} and {b}, which premiered first?",), ("Of {a} and {b}, which premiered more recently?",)),
     "city": (("Of {a} and {b}, which has the longer history?",),
              ("Of {a} and {b}, which was settled more recently?",)),
     "book": (("Of {a} and {b}, which reached readers first?",),
              ("Of {a} and {b}, which reached readers more recently?",))},
    tuple((f,) for f in (
        "This entry on {n} was last revised some years ago.", "Press coverage of {n} has been uneven over time.",
        "Further reading on {n} is listed at the end of this entry.", "This section on {n} draws on secondary sources.",
        "Editors have flagged parts of this entry on {n} for review.",
        "Photographs related to {n} are held in a private collection.", "A documentary once featured {n} in passing.",
        "Opinions on {n} differ among local commentators.", "The earliest surviving mention of {n} is brief.",
        "Commentators have written at length about {n}.", "Public interest in {n} peaked only briefly.",
        "The record on {n} remains incomplete.",
    )),
    tuple((s,) for s in (
        "On {date}, the {ta} faced the {tb}.", "A crowd of {fans} watched the match at {venue}.",
        "For the {ta}, {pa} finished with {ga}.", "For the {tb}, {pb} finished with {gb}.",
        "A rematch between the two sides followed a season later.",
    )),
    _one({
        "count": "What was {pa}'s goal tally?", "date": "What was the date of the match between the {ta} and the {tb}?",
        "span": "Which player found the net for the {tb}?", "total": "What was the combined goal count of both sides?",
        "diff": "By how many goals did {pa} outscore {pb}?", "fans": "What was the size of the crowd at the match?",
    }),
    ("{c} founder headquarters city",),
    "== {t} ==\n{x}")

_STYLES = {s.name: s for s in (_DEFAULT_STYLE, _MIXED_STYLE, _HELDOUT_STYLE)}


def _style(name: str) -> Style:
    if name not in _STYLES:
        raise ValueError(f"style must be one of {', '.join(STYLES)}, got {name!r}")
    return _STYLES[name]


def _comparison(world: World) -> dict:
    rng = world.rng
    kind = rng.choice(sorted(_COMPARE))
    rel = _COMPARE[kind][0]
    q_early, q_late = (world.pick(q) for q in world.style.compare[kind])
    a, b = world.entity(kind), world.entity(kind)
    earlier = rng.random() < 0.5
    ya, yb = a["facts"][rel], b["facts"][rel]
    win = a if (ya < yb) == earlier else b
    question = (q_early if earlier else q_late).format(a=a["name"], b=b["name"])
    steps, passages = [], []
    for e in (a, b):
        title, sents, index = world.passage(e, fillers=rng.randint(1, 2))
        passages.append((title, sents))
        steps.append(_step(world, title, index[rel], e["name"], rel, e["facts"][rel]))
    word = "earlier" if earlier else "later"
    conclusion = f"Comparing {ya} and {yb}, {win['name']} is the {word} one."
    return {"question": question, "answer": win["name"], "type": "comparison", "steps": steps, "passages": passages,
            "conclusion": conclusion, "types": [kind, kind]}


def _distractors(world: World, k: int, types: list[str] | None = None) -> list[tuple[str, list[str]]]:
    out = []
    pool = types or ["person", "city", "film", "book", "company", "country"]
    for _ in range(k):
        e = world.entity(world.rng.choice(pool))
        title, sents, _ = world.passage(e, fillers=world.rng.randint(1, 3))
        out.append((title, sents))
    return out


def _words(passages: list[tuple[str, list[str]]]) -> int:
    return sum(len(" ".join(s).split()) + len(t.split()) for t, s in passages)


def _reasoning_meta(item: dict) -> dict:
    steps = item["steps"]
    conclusion = item.get("conclusion") or ""
    return {"chain": steps, "conclusion": conclusion, "type": item["type"], "hops": len(steps)}


def _multihop(world: World, hops_range: tuple[int, int], comparison_rate: float, distractors: int,
              context_words: int) -> dict:
    rng = world.rng
    if rng.random() < comparison_rate:
        item = _comparison(world)
    else:
        item = _bridge(world, rng.randint(*hops_range))
    passages = list(item["passages"])
    more = _distractors(world, distractors, item.get("types"))
    while _words(passages + more) < context_words:
        more += _distractors(world, 1, item.get("types"))
    passages += more
    rng.shuffle(passages)
    item["passages"] = passages
    item["supporting_facts"] = [[s["title"], s["sent"]] for s in item["steps"]]
    return item


# --------------------------------------------------------------------------------------------------
# Native writers, one per kind
# --------------------------------------------------------------------------------------------------


def _rng(kind: str, seed: int, split: str, i: int) -> random.Random:
    return random.Random(f"{kind}|{split}|{seed}|{i}")


def _item_id(kind: str, split: str, seed: int, i: int, style: str = "default") -> str:
    h = hashlib.sha1(f"{kind}|{split}|{seed}|{i}".encode()).hexdigest()[:10]
    # other styles rephrase the same worlds: their ids say so, so files of two styles can be mixed
    return f"synth-{kind}-{split}-{h}" if style == "default" else f"synth-{kind}-{split}-{style}-{h}"


def _hotpot_rows(n: int, seed: int, split: str, *, distractors: int = 8, context_words: int = 0,
                 hops: tuple[int, int] = (2, 2), comparison_rate: float = 0.25, kind: str = "hotpotqa",
                 style: str = "default") -> list[dict]:
    rows = []
    for i in range(n):
        world = World(_rng(kind, seed, split, i), split, style)
        it = _multihop(world, hops, comparison_rate, distractors, context_words)
        row = {
            "_id": _item_id(kind, split, seed, i, style), "question": it["question"], "answer": it["answer"],
            "type": it["type"], "level": "hard" if len(it["steps"]) > 2 else "medium",
            "supporting_facts": it["supporting_facts"],
            "context": [[t, s] for t, s in it["passages"]],
            "carelab_meta": _reasoning_meta(it),
        }
        if kind == "2wiki":
            row["type"] = "compositional" if it["type"] == "bridge" else "comparison"
            row["evidences"] = [[s["subject"], s["relation"], s["object"]] for s in it["steps"]]
            row["entity_ids"] = ""
        rows.append(row)
    return rows


def _musique_rows(n: int, seed: int, split: str, *, distractors: int = 14, context_words: int = 0,
                  hops: tuple[int, int] = (2, 4), style: str = "default") -> list[dict]:
    rows = []
    for i in range(n):
        world = World(_rng("musique", seed, split, i), split, style)
        it = _multihop(world, hops, 0.0, distractors, context_words)
        titles = [t for t, _ in it["passages"]]
        paragraphs = [{"idx": j, "title": t, "paragraph_text": " ".join(s),
                       "is_supporting": t in {st["title"] for st in it["steps"]}}
                      for j, (t, s) in enumerate(it["passages"])]
        decomposition = [{"id": j, "question": world.pick(world.style.final[s["relation"]]).format(x=s["subject"]),
                          "answer": s["object"],
                          "paragraph_support_idx": titles.index(s["title"])} for j, s in enumerate(it["steps"])]
        h = len(it["steps"])
        meta = _reasoning_meta(it)
        for s in meta["chain"]:  # MuSiQue's support is paragraph-level: one "sentence" per paragraph
            s["sent"] = 0
        rows.append({
            "id": f"{h}hop__{_item_id('musique', split, seed, i, style)}", "paragraphs": paragraphs,
            "question": it["question"], "question_decomposition": decomposition, "answer": it["answer"],
            "answer_aliases": [], "answerable": True, "carelab_meta": meta,
        })
    return rows


def _drop_question(world: World, slots: dict[str, Any], key: str, **names: Any) -> str:
    return world.pick(world.style.drop_q[key]).format(**{**slots, **names})


def _drop_data(n: int, seed: int, split: str, *, style: str = "default", **_: Any) -> dict:
    """DROP's passage -> qa_pairs dict: short game reports, count/date/span/difference questions."""
    data: dict[str, dict] = {}
    count = 0
    p = 0
    while count < n:
        rng = _rng("drop", seed, split, p)
        world = World(rng, split, style)
        team_a, team_b = world.name("city") + " Rovers", world.name("city") + " United"
        pa, pb = world.name("person"), world.name("person")
        ga, gb = rng.randint(1, 5), rng.randint(0, 4)
        while gb == ga:
            gb = rng.randint(0, 4)
        fans = rng.randint(2, 60) * 1000
        day, month, year = rng.randint(1, 28), rng.choice(_MONTHS), rng.randint(1950, 2020)
        venue = world.name("city") + " Stadium"
        slots = {"ta": team_a, "tb": team_b, "pa": pa, "pb": pb, "venue": venue, "fans": fans,
                 "date": f"{month} {day}, {year}", "ga": f"{ga} {'goal' if ga == 1 else 'goals'}",
                 "gb": f"{gb} {'goal' if gb == 1 else 'goals'}"}
        sents = [world.pick(t).format(**slots) for t in world.style.drop_sents]
        ask = functools.partial(_drop_question, world, slots)
        qas = [
            (ask("count"), {"number": str(ga)}, [2], f"{pa} scored {ga} for the {team_a}."),
            (ask("date"), {"date": {"day": str(day), "month": month, "year": str(year)}}, [0],
             f"The match was held on {month} {day}, {year}."),
            (ask("span"), {"spans": [pb]}, [3], f"The goals for the {team_b} came from {pb}."),
            (ask("total"), {"number": str(ga + gb)}, [2, 3],
             f"{pa} scored {ga} and {pb} scored {gb}, so {ga} + {gb} = {ga + gb}."),
            (ask("diff") if ga > gb else ask("diff", pa=pb, pb=pa), {"number": str(abs(ga - gb))}, [2, 3],
             f"{pa} scored {ga} and {pb} scored {gb}, a difference of {abs(ga - gb)}."),
            (ask("fans"), {"number": str(fans)}, [1], f"The crowd was {fans} people."),
        ]
        rng.shuffle(qas)
        pairs = []
        for q, ans, sup, reason in qas[:3]:
            if count >= n:
                break
            answer = {"number": "", "date": {"day": "", "month": "", "year": ""}, "spans": []}
            answer.update(ans)
            qid = f"{_item_id('drop', split, seed, p, style)}-{len(pairs)}"
            chain = [{"title": "", "sent": j, "subject": "", "relation": "passage", "object": "", "reason": ""}
                     for j in sup]
            chain[-1]["reason"] = reason
            pairs.append({"question": q, "answer": answer, "query_id": qid, "validated_answers": [answer],
                          "carelab_meta": {"chain": chain, "conclusion": "", "type": "drop",
                                           "supporting_facts": [["", j] for j in sup]}})
            count += 1
        key = f"synth_drop_{split}_{seed}_{p}" if style == "default" else f"synth_drop_{split}_{style}_{seed}_{p}"
        data[key] = {"passage": " ".join(sents), "qa_pairs": pairs, "wiki_url": ""}
        p += 1
    return data


def _msmarco_data(n: int, seed: int, split: str, *, distractors: int = 9, style: str = "default", **_: Any) -> dict:
    """MS MARCO v2.1's column-oriented JSON: long multi-passage contexts, sentence-long answers."""
    cols: dict[str, dict[str, Any]] = {k: {} for k in
                                       ("query", "query_id", "query_type", "passages", "answers", "wellFormedAnswers")}
    for i in range(n):
        rng = _rng("msmarco", seed, split, i)
        world = World(rng, split, style)
        co = world.entity("company")
        f = co["facts"]
        answer = f"{co['name']} was founded by {f['founder']} in {f['established']} and is based in {f['hq']}."
        query = world.pick(world.style.msmarco_query).format(c=co["name"])
        passages = []
        texts = []
        for e in [co] + [world.entity(rng.choice(["company", "company", "person", "city"]))
                         for _ in range(distractors)]:
            _, sents, _ = world.passage(e, fillers=rng.randint(3, 5))
            texts.append((e is co, " ".join(sents)))
        rng.shuffle(texts)
        for sel, text in texts:
            url = f"https://example.org/{hashlib.sha1(text.encode()).hexdigest()[:8]}"
            passages.append({"is_selected": int(sel), "passage_text": text, "url": url})
        k = str(i)
        cols["query"][k] = query
        cols["query_id"][k] = 900000 + i if split == "train" else 800000 + i
        cols["query_type"][k] = "DESCRIPTION"
        cols["passages"][k] = passages
        cols["answers"][k] = [answer]
        cols["wellFormedAnswers"][k] = "[]"
        sel_url = next(p["url"] for p in passages if p["is_selected"])
        chain = [_step(world, sel_url, 0, co["name"], rel, f[rel]) for rel in ("founder", "hq")]
        cols.setdefault("carelab_meta", {})[k] = {"chain": chain, "type": "description", "conclusion": ""}
    return cols


_LB_DATASETS = ["hotpotqa", "2wikimqa", "musique", "multifieldqa_en"]


def _longbench_rows(n: int, seed: int, split: str, *, context_words: int = 600, distractors: int = 8,
                    style: str = "default", **_: Any) -> list[dict]:
    rows = []
    for i in range(n):
        rng = _rng("longbench", seed, split, i)
        world = World(rng, split, style)
        ds = _LB_DATASETS[i % len(_LB_DATASETS)]
        if ds == "multifieldqa_en":
            it = _multihop(world, (1, 1), 0.0, distractors, context_words)
        elif ds == "hotpotqa":
            it = _multihop(world, (2, 2), 0.25, distractors, context_words)
        elif ds == "2wikimqa":
            it = _multihop(world, (2, 2), 0.5, distractors, context_words)
        else:
            it = _multihop(world, (2, 4), 0.0, distractors, context_words)
        block = world.style.longbench_block
        context = "\n\n".join(block.format(j=j + 1, t=t, x=" ".join(s)) for j, (t, s) in enumerate(it["passages"]))
        meta = _reasoning_meta(it)
        rows.append({
            "input": it["question"], "context": context, "answers": [it["answer"]], "length": len(context.split()),
            "dataset": ds, "language": "en", "all_classes": None, "_id": _item_id("longbench", split, seed, i, style),
            "carelab_meta": meta,
        })
    return rows


def fact_split(fact_id: str) -> str:
    """Which split a real-world fact belongs to (a stable hash; one third train, two thirds test)."""
    return "train" if int(hashlib.sha256(fact_id.encode()).hexdigest(), 16) % 3 == 0 else "test"


# Held-out phrasings of the fact table's groups: (question, sentence); {s} topic, {S} capitalised, {o} answer.
_HELDOUT_FACT = {
    "capital": ("Which city serves as capital of {s}?", "{o} serves as the seat of government of {s}."),
    "landmark": ("Which city is home to the {s}?", "Visitors find the {s} in {o}."),
    "language": ("Which language is spoken by most people in {s}?", "The main language of {s} is {o}."),
    "continent": ("Which continent is {s} part of?", "{S} lies in {o}."),
    "currency": ("Which currency circulates in {s}?", "Prices in {s} are quoted in the {o}."),
    "author": ("Which writer is {s} by?", "{o} is the author of {s}."),
    "sport": ("Which sport did {s} become famous for?", "{S} became a star of {o}."),
    "country": ("Which country is {s} part of?", "{S} can be found in {o}."),
    "origin": ("Which country is {s} most closely linked with?", "{S} is closely linked with {o}."),
}
# Sentence openers that may be lowercased after "It is recorded that" (the others are names).
_PLAIN_OPENERS = frozenset("The A An At When Most There One We".split())


def fact_phrasing(fact: Any, counterfactual: bool, style: str = "default") -> tuple[str, str]:
    """(question, sentence stating the fact or its altered twin) of a fact-table entry in ``style``.

    Why: the held-out CofCA test must ask and state each fact in words training never used; group facts
    get their own templates, free-form facts a generic rewrite ("According to the text, ...").
    """
    answer = fact.altered if counterfactual else fact.answer
    if _style(style).name != "heldout":
        return fact.question, fact.altered_sentence if counterfactual else fact.sentence
    if fact.category in _HELDOUT_FACT:
        q, sent = _HELDOUT_FACT[fact.category]
        fmt = {"s": fact.topic, "S": fact.topic[:1].upper() + fact.topic[1:], "o": answer}
        return q.format(**fmt), sent.format(**fmt)
    sentence = fact.altered_sentence if counterfactual else fact.sentence
    first, _, rest = sentence.partition(" ")
    if first in _PLAIN_OPENERS or f" {first.lower()} " in f" {fact.question[:-1]} ":
        first = first.lower()
    return f"According to the text, {fact.question[:1].lower()}{fact.question[1:]}", \
        f"It is recorded that {first} {rest}"


def cofca_item(fact, counterfactual: bool, rng: random.Random, split: str, *, context_words: int = 450,
               distractors: int = 0, item_id: str = "", style: str = "default") -> dict:
    """One CofCA-style row: a long context of fictional distractor passages plus one passage stating the
    (altered, if ``counterfactual``) fact once; the gold answer is what the context says."""
    world = World(rng, split, style)
    question, sentence = fact_phrasing(fact, counterfactual, style)
    answer = fact.altered if counterfactual else fact.answer
    title = fact.topic[:1].upper() + fact.topic[1:]
    fact_passage = (title, [sentence])
    others = _distractors(world, distractors)
    while _words(others + [fact_passage]) < context_words:
        others += _distractors(world, 1)
    passages = list(others)
    passages.insert(rng.randint(0, len(passages)), fact_passage)
    chain = [{"title": title, "sent": 0, "subject": fact.topic, "relation": "fact", "object": answer,
              "reason": f"The passage titled {title} settles this: the answer is {answer}."}]
    return {
        "id": item_id, "question": question, "answer": answer, "original_answer": fact.answer,
        "counterfactual": counterfactual, "passages": [{"title": t, "sentences": s} for t, s in passages],
        "supporting_facts": [[title, 0]], "fact_id": fact.id, "category": fact.category,
        "carelab_meta": {"chain": chain, "conclusion": "", "type": "counterfactual" if counterfactual else "factual"},
    }


def _cofca_rows(n: int, seed: int, split: str, *, context_words: int = 450, distractors: int = 0,
                counterfactual_rate: float = 0.7, style: str = "default", **_: Any) -> list[dict]:
    facts = [f for f in fact_table() if fact_split(f.id) == split]
    order = list(range(len(facts)))
    random.Random(f"cofca-order|{split}|{seed}").shuffle(order)
    rows = []
    for i in range(n):
        rng = _rng("cofca", seed, split, i)
        fact = facts[order[i % len(order)]]
        cf = rng.random() < counterfactual_rate
        rows.append(cofca_item(fact, cf, rng, split, context_words=context_words, distractors=distractors,
                               item_id=_item_id("cofca", split, seed, i, style), style=style))
    return rows


_DEFAULTS: dict[str, dict[str, Any]] = {
    "hotpotqa": {"distractors": 8, "context_words": 0},
    "2wiki": {"distractors": 8, "context_words": 0},
    "musique": {"distractors": 14, "context_words": 0},
    "drop": {},
    "msmarco": {"distractors": 9},
    "longbench": {"distractors": 8, "context_words": 600},
    "cofca": {"distractors": 0, "context_words": 450},
}


def generate(kind: str, n: int, seed: int = 0, *, split: str = "train", style: str = "default",
             **opts: Any) -> list[dict] | dict:
    """``n`` synthetic items of ``kind`` as native rows (a dict for DROP and MS MARCO, whose files are dicts).

    ``style`` (one of :data:`STYLES`) words the same worlds differently: ``default`` (the original text),
    ``mixed`` (each sentence/question drawn from a few train-family variants, for varied SFT data) or
    ``heldout`` (encyclopedia-style sentences and a disjoint question family, for generalisation tests;
    use it with ``split="test"``). A seed gives the same questions' answers in every style (and the same
    passages, unless ``context_words`` adds distractors up to a length); non-default ids carry the style.

    Options: ``context_words`` (minimum words of context; distractor passages are added until reached),
    ``distractors`` (distractor passages per item), ``hops`` ((min, max) for multi-hop kinds),
    ``comparison_rate``, ``counterfactual_rate`` (cofca). ``None`` values take the kind's defaults.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if n < 0:
        raise ValueError("n must be >= 0")
    _style(style)
    params = dict(_DEFAULTS[kind])
    params.update({k: v for k, v in opts.items() if v is not None})
    params["style"] = style
    if "hops" in params:
        h = params["hops"]
        params["hops"] = (int(h), int(h)) if isinstance(h, int) else (int(h[0]), int(h[1]))
    makers: dict[str, Callable[..., Any]] = {
        "hotpotqa": lambda: _hotpot_rows(n, seed, split, kind="hotpotqa", **params),
        "2wiki": lambda: _hotpot_rows(n, seed, split, kind="2wiki", **params),
        "musique": lambda: _musique_rows(n, seed, split, **params),
        "drop": lambda: _drop_data(n, seed, split, **params),
        "msmarco": lambda: _msmarco_data(n, seed, split, **params),
        "longbench": lambda: _longbench_rows(n, seed, split, **params),
        "cofca": lambda: _cofca_rows(n, seed, split, **params),
    }
    return makers[kind]()


#: Native file suffix per kind (what ``carelab data synth`` writes when given a bare stem).
SUFFIX = {"hotpotqa": ".json", "2wiki": ".json", "musique": ".jsonl", "drop": ".json", "msmarco": ".json",
          "longbench": ".jsonl", "cofca": ".jsonl"}


def write(kind: str, n: int, seed: int, out: str | os.PathLike, *, split: str = "train", style: str = "default",
          **opts: Any) -> Path:
    """Generate and write ``n`` items of ``kind`` in ``style`` to ``out`` in the kind's native file format."""
    data = generate(kind, n, seed, split=split, style=style, **opts)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        if SUFFIX[kind] == ".jsonl":
            for row in data:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        else:
            json.dump(data, fh, ensure_ascii=False)
    tmp.replace(path)
    return path
