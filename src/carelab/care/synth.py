"""Offline synthetic worlds written in each dataset's *native* format.

Why: CARE's data pipeline, training and evaluation must run (and be tested) without network access,
and every native loader must be exercised on realistic files. A world is a handful of fictional
people, cities, countries, films, books and companies whose facts are stated in short passages;
questions chain 2–4 of those facts (bridge) or compare two (comparison), and the chain is recorded
(``carelab_meta.chain``) so the ``rule`` backend can reason deterministically.

Train and test worlds never share a name: each split builds names from its own consonant set, so no
entity, title or question can appear in both. Everything is a pure function of (kind, n, seed, split).
The counterfactual (CofCA-shaped) kind uses the real common-knowledge :mod:`carelab.care.facts` table,
split by a hash of the fact id, with long distractor contexts (the altered fact stated once).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

KINDS = ("hotpotqa", "2wiki", "musique", "drop", "msmarco", "longbench", "cofca")
SPLITS = ("train", "test")

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

    def __init__(self, rng: random.Random, split: str):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.rng, self.split = rng, split
        self.used: set[str] = set()
        self.years: set[int] = set()

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
        stated = [(rel, _FACT_SENTENCE[rel].format(s=n, o=f[rel])) for rel in f]
        self.rng.shuffle(stated)
        sents = [s for _, s in stated]
        for tmpl in self.rng.sample(_FILLERS, min(fillers, len(_FILLERS))):
            sents.insert(self.rng.randint(1, len(sents)), tmpl.format(n=n))
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


def _step(title: str, idx: int, subj: str, rel: str, obj: Any) -> dict:
    return {"title": title, "sent": idx, "subject": subj, "relation": rel, "object": str(obj),
            "reason": _REASON[rel].format(s=subj, o=obj)}


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
        steps.append(_step(title, index[r], current["name"], r, current["facts"][r]))
        if nxt is not None:
            entities.append(nxt)
            current = nxt
    x = entities[0]["name"]
    for r in rels[:-1]:
        x = _NP[r].format(x=x)
    question = _FINAL[rels[-1]].format(x=x)
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


def _comparison(world: World) -> dict:
    rng = world.rng
    kind = rng.choice(sorted(_COMPARE))
    rel, q_early, q_late = _COMPARE[kind]
    a, b = world.entity(kind), world.entity(kind)
    earlier = rng.random() < 0.5
    ya, yb = a["facts"][rel], b["facts"][rel]
    win = a if (ya < yb) == earlier else b
    question = (q_early if earlier else q_late).format(a=a["name"], b=b["name"])
    steps, passages = [], []
    for e in (a, b):
        title, sents, index = world.passage(e, fillers=rng.randint(1, 2))
        passages.append((title, sents))
        steps.append(_step(title, index[rel], e["name"], rel, e["facts"][rel]))
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


def _item_id(kind: str, split: str, seed: int, i: int) -> str:
    h = hashlib.sha1(f"{kind}|{split}|{seed}|{i}".encode()).hexdigest()[:10]
    return f"synth-{kind}-{split}-{h}"


def _hotpot_rows(n: int, seed: int, split: str, *, distractors: int = 8, context_words: int = 0,
                 hops: tuple[int, int] = (2, 2), comparison_rate: float = 0.25, kind: str = "hotpotqa") -> list[dict]:
    rows = []
    for i in range(n):
        world = World(_rng(kind, seed, split, i), split)
        it = _multihop(world, hops, comparison_rate, distractors, context_words)
        row = {
            "_id": _item_id(kind, split, seed, i), "question": it["question"], "answer": it["answer"],
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
                  hops: tuple[int, int] = (2, 4)) -> list[dict]:
    rows = []
    for i in range(n):
        world = World(_rng("musique", seed, split, i), split)
        it = _multihop(world, hops, 0.0, distractors, context_words)
        titles = [t for t, _ in it["passages"]]
        paragraphs = [{"idx": j, "title": t, "paragraph_text": " ".join(s),
                       "is_supporting": t in {st["title"] for st in it["steps"]}}
                      for j, (t, s) in enumerate(it["passages"])]
        decomposition = [{"id": j, "question": _FINAL[s["relation"]].format(x=s["subject"]), "answer": s["object"],
                          "paragraph_support_idx": titles.index(s["title"])} for j, s in enumerate(it["steps"])]
        h = len(it["steps"])
        meta = _reasoning_meta(it)
        for s in meta["chain"]:  # MuSiQue's support is paragraph-level: one "sentence" per paragraph
            s["sent"] = 0
        rows.append({
            "id": f"{h}hop__{_item_id('musique', split, seed, i)}", "paragraphs": paragraphs,
            "question": it["question"], "question_decomposition": decomposition, "answer": it["answer"],
            "answer_aliases": [], "answerable": True, "carelab_meta": meta,
        })
    return rows


def _drop_data(n: int, seed: int, split: str, **_: Any) -> dict:
    """DROP's passage -> qa_pairs dict: short game reports, count/date/span/difference questions."""
    data: dict[str, dict] = {}
    count = 0
    p = 0
    while count < n:
        rng = _rng("drop", seed, split, p)
        world = World(rng, split)
        team_a, team_b = world.name("city") + " Rovers", world.name("city") + " United"
        pa, pb = world.name("person"), world.name("person")
        ga, gb = rng.randint(1, 5), rng.randint(0, 4)
        while gb == ga:
            gb = rng.randint(0, 4)
        fans = rng.randint(2, 60) * 1000
        day, month, year = rng.randint(1, 28), rng.choice(_MONTHS), rng.randint(1950, 2020)
        venue = world.name("city") + " Stadium"
        sents = [
            f"The {team_a} played the {team_b} on {month} {day}, {year}.",
            f"The game took place at {venue} in front of {fans} fans.",
            f"{pa} scored {ga} {'goal' if ga == 1 else 'goals'} for the {team_a}.",
            f"{pb} scored {gb} {'goal' if gb == 1 else 'goals'} for the {team_b}.",
            "Both teams met again the following season.",
        ]
        qas = [
            (f"How many goals did {pa} score?", {"number": str(ga)}, [2], f"{pa} scored {ga} for the {team_a}."),
            (f"On what date did the {team_a} play the {team_b}?",
             {"date": {"day": str(day), "month": month, "year": str(year)}}, [0],
             f"The match was held on {month} {day}, {year}."),
            (f"Who scored for the {team_b}?", {"spans": [pb]}, [3], f"The goals for the {team_b} came from {pb}."),
            ("How many goals were scored in total?", {"number": str(ga + gb)}, [2, 3],
             f"{pa} scored {ga} and {pb} scored {gb}, so {ga} + {gb} = {ga + gb}."),
            (f"How many more goals did {pa} score than {pb}?" if ga > gb else
             f"How many more goals did {pb} score than {pa}?", {"number": str(abs(ga - gb))}, [2, 3],
             f"{pa} scored {ga} and {pb} scored {gb}, a difference of {abs(ga - gb)}."),
            ("How many fans attended the game?", {"number": str(fans)}, [1], f"The crowd was {fans} people."),
        ]
        rng.shuffle(qas)
        pairs = []
        for q, ans, sup, reason in qas[:3]:
            if count >= n:
                break
            answer = {"number": "", "date": {"day": "", "month": "", "year": ""}, "spans": []}
            answer.update(ans)
            qid = f"{_item_id('drop', split, seed, p)}-{len(pairs)}"
            chain = [{"title": "", "sent": j, "subject": "", "relation": "passage", "object": "", "reason": ""}
                     for j in sup]
            chain[-1]["reason"] = reason
            pairs.append({"question": q, "answer": answer, "query_id": qid, "validated_answers": [answer],
                          "carelab_meta": {"chain": chain, "conclusion": "", "type": "drop",
                                           "supporting_facts": [["", j] for j in sup]}})
            count += 1
        data[f"synth_drop_{split}_{seed}_{p}"] = {"passage": " ".join(sents), "qa_pairs": pairs, "wiki_url": ""}
        p += 1
    return data


def _msmarco_data(n: int, seed: int, split: str, *, distractors: int = 9, **_: Any) -> dict:
    """MS MARCO v2.1's column-oriented JSON: long multi-passage contexts, sentence-long answers."""
    cols: dict[str, dict[str, Any]] = {k: {} for k in
                                       ("query", "query_id", "query_type", "passages", "answers", "wellFormedAnswers")}
    for i in range(n):
        rng = _rng("msmarco", seed, split, i)
        world = World(rng, split)
        co = world.entity("company")
        f = co["facts"]
        answer = f"{co['name']} was founded by {f['founder']} in {f['established']} and is based in {f['hq']}."
        query = f"who founded {co['name']} and where is it based"
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
        chain = [{"title": sel_url, "sent": 0, "subject": co["name"], "relation": "founder", "object": f["founder"],
                  "reason": _REASON["founder"].format(s=co["name"], o=f["founder"])},
                 {"title": sel_url, "sent": 0, "subject": co["name"], "relation": "hq", "object": f["hq"],
                  "reason": _REASON["hq"].format(s=co["name"], o=f["hq"])}]
        cols.setdefault("carelab_meta", {})[k] = {"chain": chain, "type": "description", "conclusion": ""}
    return cols


_LB_DATASETS = ["hotpotqa", "2wikimqa", "musique", "multifieldqa_en"]


def _longbench_rows(n: int, seed: int, split: str, *, context_words: int = 600, distractors: int = 8,
                    **_: Any) -> list[dict]:
    rows = []
    for i in range(n):
        rng = _rng("longbench", seed, split, i)
        world = World(rng, split)
        ds = _LB_DATASETS[i % len(_LB_DATASETS)]
        if ds == "multifieldqa_en":
            it = _multihop(world, (1, 1), 0.0, distractors, context_words)
        elif ds == "hotpotqa":
            it = _multihop(world, (2, 2), 0.25, distractors, context_words)
        elif ds == "2wikimqa":
            it = _multihop(world, (2, 2), 0.5, distractors, context_words)
        else:
            it = _multihop(world, (2, 4), 0.0, distractors, context_words)
        context = "\n\n".join(f"Passage {j + 1}:\n{t}\n{' '.join(s)}" for j, (t, s) in enumerate(it["passages"]))
        meta = _reasoning_meta(it)
        rows.append({
            "input": it["question"], "context": context, "answers": [it["answer"]], "length": len(context.split()),
            "dataset": ds, "language": "en", "all_classes": None, "_id": _item_id("longbench", split, seed, i),
            "carelab_meta": meta,
        })
    return rows


def fact_split(fact_id: str) -> str:
    """Which split a real-world fact belongs to (a stable hash; one third train, two thirds test)."""
    return "train" if int(hashlib.sha256(fact_id.encode()).hexdigest(), 16) % 3 == 0 else "test"


def cofca_item(fact, counterfactual: bool, rng: random.Random, split: str, *, context_words: int = 450,
               distractors: int = 0, item_id: str = "") -> dict:
    """One CofCA-style row: a long context of fictional distractor passages plus one passage stating the
    (altered, if ``counterfactual``) fact once; the gold answer is what the context says."""
    world = World(rng, split)
    sentence = fact.altered_sentence if counterfactual else fact.sentence
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
        "id": item_id, "question": fact.question, "answer": answer, "original_answer": fact.answer,
        "counterfactual": counterfactual, "passages": [{"title": t, "sentences": s} for t, s in passages],
        "supporting_facts": [[title, 0]], "fact_id": fact.id, "category": fact.category,
        "carelab_meta": {"chain": chain, "conclusion": "", "type": "counterfactual" if counterfactual else "factual"},
    }


def _cofca_rows(n: int, seed: int, split: str, *, context_words: int = 450, distractors: int = 0,
                counterfactual_rate: float = 0.7, **_: Any) -> list[dict]:
    from carelab.care.facts import fact_table

    facts = [f for f in fact_table() if fact_split(f.id) == split]
    order = list(range(len(facts)))
    random.Random(f"cofca-order|{split}|{seed}").shuffle(order)
    rows = []
    for i in range(n):
        rng = _rng("cofca", seed, split, i)
        fact = facts[order[i % len(order)]]
        cf = rng.random() < counterfactual_rate
        rows.append(cofca_item(fact, cf, rng, split, context_words=context_words, distractors=distractors,
                               item_id=_item_id("cofca", split, seed, i)))
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


def generate(kind: str, n: int, seed: int = 0, *, split: str = "train", **opts: Any) -> list[dict] | dict:
    """``n`` synthetic items of ``kind`` as native rows (a dict for DROP and MS MARCO, whose files are dicts).

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
    params = dict(_DEFAULTS[kind])
    params.update({k: v for k, v in opts.items() if v is not None})
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


def write(kind: str, n: int, seed: int, out: str | os.PathLike, *, split: str = "train", **opts: Any) -> Path:
    """Generate and write ``n`` items of ``kind`` to ``out`` in the kind's native file format."""
    data = generate(kind, n, seed, split=split, **opts)
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
