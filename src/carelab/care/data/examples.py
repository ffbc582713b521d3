"""The one record every CARE stage reads: :class:`QAExample` (a question over titled passages) and :class:`Passage`.

Kept apart from the loaders so that synthesis, the pipeline and training depend on the record, not on file formats.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Passage:
    """A titled passage split into sentences (HotpotQA's shape; other formats use one sentence per chunk)."""

    title: str
    sentences: list[str]

    @property
    def text(self) -> str:
        return " ".join(s.strip() for s in self.sentences if s.strip())


@dataclass
class QAExample:
    """One question over a context, with gold answers and (when labelled) gold supporting facts."""

    id: str
    question: str
    answers: list[str]
    passages: list[Passage] = field(default_factory=list)
    supporting_facts: list[tuple[str, int]] = field(default_factory=list)
    source: str = "carelab"
    hops: int = 1
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def answer(self) -> str:
        """The first gold answer (the training target)."""
        return self.answers[0] if self.answers else ""

    @property
    def context(self) -> str:
        """The context as the model sees it: each passage as 'title: text', blank-line separated."""
        return "\n\n".join(f"{p.title}: {p.text}" if p.title else p.text for p in self.passages)

    def supporting_sentences(self) -> list[str]:
        """The gold supporting facts as sentences (missing indices are skipped, not fatal)."""
        by_title = {p.title: p for p in self.passages}
        out = []
        for title, idx in self.supporting_facts:
            p = by_title.get(title)
            if p is not None and 0 <= idx < len(p.sentences):
                out.append(p.sentences[idx].strip())
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "question": self.question, "answers": list(self.answers),
            "passages": [{"title": p.title, "sentences": list(p.sentences)} for p in self.passages],
            "supporting_facts": [[t, i] for t, i in self.supporting_facts],
            "source": self.source, "hops": self.hops, "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QAExample:
        return cls(
            id=str(d["id"]), question=d["question"], answers=list(d["answers"]),
            passages=[Passage(p.get("title", ""), list(p["sentences"])) for p in d.get("passages", [])],
            supporting_facts=[(str(t), int(i)) for t, i in d.get("supporting_facts", [])],
            source=d.get("source", "carelab"), hops=int(d.get("hops", 1)), meta=dict(d.get("meta", {})),
        )
