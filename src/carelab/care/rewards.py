"""CARE reward functions, TRL-compatible, with the official semantics as the default.

Each function takes the completions (plain strings or conversational message lists) and dataset
columns as keyword lists, and returns ``list[float]``; none ever raises. Defaults reproduce the public
CARE reward exactly (see docs/care.md); options (off by default) add LongBench-normalised F1, exact-only
quotes and an anti-copy guard. The fuzzy quote check is written by hand because no library offers the
official word-window ``difflib`` rule; we prune windows with an exact upper bound on the ratio so the
result is identical to the quadratic scan but far faster on long contexts.
"""

from __future__ import annotations

import difflib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from carelab.care import format as care_format
from carelab.care.metrics import normalize_answer, token_f1

FUZZY_THRESHOLD = 0.85
NO_QUOTE_RETRIEVAL_REWARD = 0.2
DEFAULT_WEIGHTS = (0.7, 0.1, 0.2)  # accuracy, format, retrieval


# --------------------------------------------------------------------------- completion handling
def completion_text(completion: Any) -> str:
    """Text of one completion: a string, or the last assistant message of a conversational completion."""
    try:
        if completion is None:
            return ""
        if isinstance(completion, str):
            return completion
        if isinstance(completion, dict):
            return str(completion.get("content", ""))
        if isinstance(completion, (list, tuple)):
            for msg in reversed(completion):
                if isinstance(msg, dict) and msg.get("role", "assistant") == "assistant":
                    return str(msg.get("content", ""))
            return " ".join(completion_text(m) for m in completion)
        return str(completion)
    except Exception:  # rewards never raise
        return ""


def _column(values: Any, n: int) -> list:
    """Broadcast a dataset column (list or scalar) to n completions."""
    if isinstance(values, (list, tuple)):
        vals = list(values)
        return vals + [vals[-1] if vals else ""] * (n - len(vals)) if len(vals) < n else vals[:n]
    return [values] * n


def _first_gold(answer: Any) -> str:
    """Gold answer as a string; a list of golds contributes its first entry (as the official data does)."""
    if isinstance(answer, (list, tuple)):
        return str(answer[0]) if answer else ""
    return "" if answer is None else str(answer)


# --------------------------------------------------------------------------- accuracy
def set_f1(prediction: str, gold: str) -> float:
    """Official accuracy: F1 between the SETS of whitespace tokens, no normalisation; empty -> 0."""
    pred, ref = set(prediction.split()), set(gold.split())
    common = pred & ref
    if not pred or not ref or not common:
        return 0.0
    p, r = len(common) / len(pred), len(common) / len(ref)
    return 2 * p * r / (p + r)


def answer_score(text: str, gold: str | Sequence[str], normalized: bool = False) -> float:
    """Accuracy of one raw completion against the gold (official by default; LongBench F1 if normalized)."""
    try:
        clean = care_format.strip_stop(text)
        if normalized:
            pred = care_format.parse(clean).answer
            golds = [gold] if isinstance(gold, str) else [str(g) for g in gold]
            return max((token_f1(normalize_answer(pred).split(), normalize_answer(g).split()) for g in golds),
                       default=0.0)
        return set_f1(care_format.official_answer(clean), _first_gold(gold))
    except Exception:
        return 0.0


def accuracy_reward(completions: list, answer: list | str | None = None, normalized: bool = False,
                    **kwargs: Any) -> list[float]:
    """Answer F1 against the ``answer`` column (official set-F1; ``normalized=True`` -> LongBench F1).

    >>> accuracy_reward(["<think>x</think> Answer: Paris<|im_end|>"], answer=["Paris"])
    [1.0]
    """
    n = len(completions)
    golds = _column(answer if answer is not None else kwargs.get("answers", ""), n)
    return [answer_score(completion_text(c), g, normalized) for c, g in zip(completions, golds, strict=True)]


# --------------------------------------------------------------------------- format
def format_score(text: str) -> float:
    """1.0 when the stop-stripped text follows the official format rule, else 0.0."""
    try:
        return 1.0 if care_format.is_well_formed(care_format.strip_stop(text)) else 0.0
    except Exception:
        return 0.0


def format_reward(completions: list, **kwargs: Any) -> list[float]:
    """Official format reward: ``<think>…</think>…Answer:…`` with ≥ 1 quote in the first think block.

    >>> format_reward(["<think><retrieval>a</retrieval></think>Answer: b", "Answer: b"])
    [1.0, 0.0]
    """
    return [format_score(completion_text(c)) for c in completions]


# --------------------------------------------------------------------------- retrieval
class _ContextIndex:
    """Lower-cased context words with per-character prefix counts, built once per context.

    The ratio of ``difflib.SequenceMatcher`` is bounded above by ``quick_ratio`` (2·|multiset char
    intersection| / total length). Prefix counts give that bound for every window at once, so only
    windows that could reach the threshold are checked with difflib itself.
    """

    def __init__(self, context: str):
        self.words = context.lower().split()
        lens = np.fromiter((len(w) for w in self.words), dtype=np.int64, count=len(self.words))
        self.len_prefix = np.concatenate([[0], np.cumsum(lens)])
        joined = " ".join(self.words)
        self._codes = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32)
        self._word_of_char = np.cumsum(self._codes == ord(" "))  # words are joined by single spaces
        self._char_prefix: dict[str, np.ndarray] = {}

    def char_prefix(self, ch: str) -> np.ndarray:
        """Prefix sums over words of how often ``ch`` occurs in each word."""
        arr = self._char_prefix.get(ch)
        if arr is None:
            counts = np.bincount(self._word_of_char[self._codes == ord(ch)], minlength=len(self.words))
            arr = np.concatenate([[0], np.cumsum(counts[: len(self.words)])])
            self._char_prefix[ch] = arr
        return arr

    def fuzzy_contains(self, span_lower: str, threshold: float) -> bool:
        """True iff some window of len(span words) words has difflib ratio ≥ threshold (official rule)."""
        n = len(span_lower.split())
        n_windows = len(self.words) - n + 1
        if n == 0 or n_windows <= 0:
            return False
        span_counts: dict[str, int] = {}
        for ch in span_lower:
            span_counts[ch] = span_counts.get(ch, 0) + 1
        la = self.len_prefix[n:] - self.len_prefix[:n_windows] + (n - 1)  # window length incl. spaces
        inter = np.zeros(n_windows, dtype=np.int64)
        for ch, cnt in span_counts.items():
            if ch == " ":
                inter += min(cnt, n - 1)
                continue
            pre = self.char_prefix(ch)
            inter += np.minimum(pre[n:] - pre[:n_windows], cnt)
        total = la + len(span_lower)
        bound = 2.0 * inter / np.maximum(total, 1)
        candidates = np.nonzero(bound >= threshold)[0]
        for i in candidates:
            window = " ".join(self.words[i:i + n])
            if difflib.SequenceMatcher(None, window, span_lower).ratio() >= threshold:
                return True
        return False


_INDEX_CACHE: OrderedDict[str, _ContextIndex] = OrderedDict()


def _context_index(context: str) -> _ContextIndex:
    """LRU cache: a GRPO group scores several completions against the same context."""
    idx = _INDEX_CACHE.get(context)
    if idx is None:
        idx = _ContextIndex(context)
        _INDEX_CACHE[context] = idx
        if len(_INDEX_CACHE) > 64:
            _INDEX_CACHE.popitem(last=False)
    else:
        _INDEX_CACHE.move_to_end(context)
    return idx


def quote_match(span: str, context: str, threshold: float = FUZZY_THRESHOLD) -> str:
    """Label one quote: ``"exact"`` (case-sensitive substring), ``"fuzzy"`` (official window rule) or ``"none"``.

    >>> quote_match("Paris is the capital", "Paris is the capital of France.")
    'exact'
    >>> quote_match("paris is teh capital", "Paris is the capital of France.")
    'fuzzy'
    """
    span = care_format.collapse_ws(span)
    if not span:
        return "none"
    if span in context:
        return "exact"
    if _context_index(context).fuzzy_contains(span.lower(), threshold):
        return "fuzzy"
    return "none"


@dataclass(frozen=True)
class RetrievalOptions:
    """Retrieval-reward options; the defaults are the official rule."""

    exact_only: bool = False
    max_context_share: float | None = None  # anti-copy guard: a longer span earns nothing
    threshold: float = FUZZY_THRESHOLD
    no_quote_reward: float = NO_QUOTE_RETRIEVAL_REWARD


def retrieval_score(text: str, context: str, options: RetrievalOptions = RetrievalOptions()) -> float:
    """Official retrieval reward of one completion: mean of 1 / 0.5 / 0 per quote, 0.2 when none, capped at 1."""
    try:
        spans = care_format.quotes(care_format.strip_stop(text))
        if not spans:
            return options.no_quote_reward
        context = "" if context is None else str(context)
        found = 0.0
        for span in spans:
            if options.max_context_share is not None and len(span) > options.max_context_share * max(len(context), 1):
                continue
            label = quote_match(span, context, options.threshold) if not options.exact_only else (
                "exact" if span in context else "none")
            found += 1.0 if label == "exact" else 0.5 if label == "fuzzy" else 0.0
        return min(1.0, found / len(spans))
    except Exception:
        return 0.0


def retrieval_reward(completions: list, context: list | str | None = None, exact_only: bool = False,
                     max_context_share: float | None = None, prompts: list | None = None,
                     **kwargs: Any) -> list[float]:
    """Whether the quotes really occur in the context (official: the whole user prompt is the context).

    When no ``context`` column is given, the prompt text is used, as the official code does.

    >>> retrieval_reward(["<retrieval>sky is blue</retrieval>", "no quotes"], context=["The sky is blue."] * 2)
    [1.0, 0.2]
    """
    n = len(completions)
    if context is None:
        context = [completion_text(p) for p in prompts] if prompts is not None else ""
    ctxs = _column(context, n)
    opts = RetrievalOptions(exact_only=exact_only, max_context_share=max_context_share)
    return [retrieval_score(completion_text(c), str(x), opts) for c, x in zip(completions, ctxs, strict=True)]


# --------------------------------------------------------------------------- combination
def care_reward_breakdown(completion: Any, answer: Any, context: str,
                          weights: tuple[float, float, float] = DEFAULT_WEIGHTS, normalized: bool = False,
                          retrieval_options: RetrievalOptions = RetrievalOptions()) -> dict[str, float]:
    """All three components and the weighted total for one completion (for ask/demo/eval displays)."""
    text = completion_text(completion)
    acc = answer_score(text, answer if isinstance(answer, (list, tuple)) else _first_gold(answer), normalized)
    fmt = format_score(text)
    ret = retrieval_score(text, context, retrieval_options)
    wa, wf, wr = weights
    return {"accuracy": acc, "format": fmt, "retrieval": ret, "total": wa * acc + wf * fmt + wr * ret}


def combined_reward(weights: tuple[float, float, float] = DEFAULT_WEIGHTS, **options: Any) -> Callable[..., list[float]]:
    """One TRL reward function computing ``w_acc·R_acc + w_fmt·R_fmt + w_ret·R_ret`` (default 0.7/0.1/0.2)."""
    wa, wf, wr = weights
    normalized = bool(options.get("normalized", False))
    ret_opts = {k: options[k] for k in ("exact_only", "max_context_share") if k in options}

    def care_reward(completions: list, **kwargs: Any) -> list[float]:
        acc = accuracy_reward(completions, normalized=normalized, **kwargs)
        fmt = format_reward(completions)
        ret = retrieval_reward(completions, **{**kwargs, **ret_opts})
        return [wa * a + wf * f + wr * r for a, f, r in zip(acc, fmt, ret, strict=True)]

    return care_reward


def reward_functions(accuracy_normalized: bool = False, exact_only: bool = False,
                     max_context_share: float | None = None, retrieval: bool = True) -> list[Callable[..., list[float]]]:
    """The separate reward functions for TRL's ``reward_funcs`` (weights passed as ``reward_weights``).

    Separate functions give per-component logs (``rewards/accuracy/mean`` …). With ``retrieval=False``
    (the no-retrieval-reward ablation) only accuracy and format remain.
    """

    def accuracy(completions: list, **kw: Any) -> list[float]:
        return accuracy_reward(completions, normalized=accuracy_normalized, **kw)

    def format(completions: list, **kw: Any) -> list[float]:  # noqa: A001 - the logged name
        return format_reward(completions, **kw)

    def retrieval_fn(completions: list, **kw: Any) -> list[float]:
        return retrieval_reward(completions, exact_only=exact_only, max_context_share=max_context_share, **kw)

    retrieval_fn.__name__ = "retrieval"
    funcs: list[Callable[..., list[float]]] = [accuracy, format]
    if retrieval:
        funcs.append(retrieval_fn)
    return funcs
