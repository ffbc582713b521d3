"""CARE reward functions, TRL-compatible, with the official semantics as the default.

Each function takes the completions (plain strings or conversational message lists) and dataset
columns as keyword lists, and returns one value per completion: a float, or ``None`` when the completion
cannot be scored (not text, no gold answer, no context). TRL's GRPOTrainer leaves ``None`` out of that
function's mean and, when every function says ``None``, out of the group baseline (advantage 0), where a
silent 0.0 would bias the advantages; each such case is counted (:func:`unscored_counts`) and logged.
A dataset column of the wrong length is a ``ValueError``, never padded. Defaults reproduce the public
CARE reward exactly (see docs/care.md); options (off by default) add LongBench-normalised F1, exact-only
quotes and an anti-copy guard. The fuzzy quote check is written by hand because no library offers the
official word-window ``difflib`` rule; we prune windows with an exact upper bound on the ratio so the
result is identical to the quadratic scan but far faster on long contexts.
"""

from __future__ import annotations

import difflib
import logging
import sys
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from carelab.care import format as care_format
from carelab.care.eval.metrics import normalize_answer, token_f1

FUZZY_THRESHOLD = 0.85
NO_QUOTE_RETRIEVAL_REWARD = 0.2
DEFAULT_WEIGHTS = (0.7, 0.1, 0.2)  # accuracy, format, retrieval

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- unscorable completions
#: How many completions each reward could not score, by ``"reward: reason"`` (since import or the last reset).
UNSCORED: Counter[str] = Counter()


def _unscored(reward: str, reason: str) -> None:
    """Count one completion a reward could not score; log the 1st, 2nd, 4th, 8th … so logs stay short."""
    key = f"{reward}: {reason}"
    UNSCORED[key] += 1
    n = UNSCORED[key]
    if n & (n - 1) == 0:
        log.warning("%s reward cannot score a completion (%s); returning None so TRL leaves it out "
                    "(%d so far)", reward, reason, n)


def unscored_counts(reset: bool = False) -> dict[str, int]:
    """Completions that got ``None`` instead of a score, by reward and reason (``reset`` clears the counts)."""
    counts = dict(UNSCORED)
    if reset:
        UNSCORED.clear()
    return counts


# --------------------------------------------------------------------------- completion handling
def _message_content(msg: Any) -> str | None:
    """The text of one chat message (or bare string); None when it has no text content."""
    if isinstance(msg, str):
        return msg
    if isinstance(msg, dict) and isinstance(msg.get("content"), str):
        return msg["content"]
    return None


def text_of(completion: Any) -> str | None:
    """Text of one completion, or None when it has none: a string, a message, or a message list (the last
    assistant message; else all messages' text joined). Never recurses, so a cyclic list cannot hang it."""
    if isinstance(completion, (str, dict)):
        return _message_content(completion)
    if not isinstance(completion, (list, tuple)):
        return None
    for msg in reversed(completion):
        if isinstance(msg, dict) and msg.get("role", "assistant") == "assistant":
            content = _message_content(msg)
            if content is not None:
                return content
    parts = [t for t in (_message_content(m) for m in completion) if t is not None]
    return " ".join(parts) if parts else None


def completion_text(completion: Any) -> str:
    """Text of one completion, '' when it has none (see :func:`text_of`, which tells the two apart)."""
    text = text_of(completion)
    return "" if text is None else text


def _completions(completions: Any) -> list:
    """The batch as a list: ``None`` is no completions, one string or message is one completion."""
    if completions is None:
        return []
    if isinstance(completions, (str, dict)):
        return [completions]
    if isinstance(completions, (list, tuple)):
        return list(completions)
    if isinstance(completions, Iterable):
        return list(completions)
    return [completions]  # e.g. an int: one completion, which cannot be scored


def _column(values: Any, n: int, name: str) -> list:
    """A dataset column with one value per completion (a scalar is broadcast); any other length is an error."""
    if isinstance(values, (list, tuple)):
        if len(values) != n:
            raise ValueError(f"column {name!r} has {len(values)} values for {n} completions; "
                             "rewards need one value per completion")
        return list(values)
    return [values] * n


def _first_gold(answer: Any) -> str:
    """Gold answer as a string; a list of golds contributes its first entry (as the official data does)."""
    if isinstance(answer, (list, tuple)):
        return str(answer[0]) if answer else ""
    return "" if answer is None else str(answer)


def _has_gold(answer: Any) -> bool:
    """Whether there is a gold answer to score against (None, '' and [] are missing data, not a wrong answer)."""
    golds = answer if isinstance(answer, (list, tuple)) else [answer]
    return any(g is not None and str(g).strip() for g in golds)


def _score_each(reward: str, completions: list, values: list, score: Callable[[str, Any], float],
                present: Callable[[Any], bool] = lambda v: True, missing: str = "") -> list[float | None]:
    """``score(text, value)`` per completion and column value; None (counted, logged) where either is missing."""
    out: list[float | None] = []
    for c, v in zip(completions, values, strict=True):
        text = text_of(c)
        reason = "completion is not text" if text is None else None if present(v) else missing
        if reason is None:
            out.append(score(text, v))
        else:
            _unscored(reward, reason)
            out.append(None)
    return out


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
    clean = care_format.strip_stop(text)
    if normalized:
        pred = care_format.parse(clean).answer
        golds = [gold] if isinstance(gold, str) else [str(g) for g in gold]
        return max((token_f1(normalize_answer(pred).split(), normalize_answer(g).split()) for g in golds),
                   default=0.0)
    return set_f1(care_format.official_answer(clean), _first_gold(gold))


def accuracy_reward(completions: list, answer: list | str | None = None, normalized: bool = False,
                    **kwargs: Any) -> list[float | None]:
    """Answer F1 against the ``answer`` column (official set-F1; ``normalized=True`` -> LongBench F1).

    ``None`` for a completion that is not text or a row without a gold answer.

    >>> accuracy_reward(["<think>x</think> Answer: Paris<|im_end|>"], answer=["Paris"])
    [1.0]
    """
    items = _completions(completions)
    golds = _column(answer if answer is not None else kwargs.get("answers"), len(items), "answer")
    return _score_each("accuracy", items, golds,
                       lambda text, g: answer_score(text, g if isinstance(g, (list, tuple)) else str(g), normalized),
                       _has_gold, "no gold answer")


# --------------------------------------------------------------------------- format
def format_score(text: str) -> float:
    """1.0 when the stop-stripped text follows the official format rule, else 0.0 (linear time)."""
    return 1.0 if care_format.is_well_formed(care_format.strip_stop(text)) else 0.0


def format_reward(completions: list, **kwargs: Any) -> list[float | None]:
    """Official format reward: ``<think>…</think>…Answer:…`` with ≥ 1 quote in the first think block.

    >>> format_reward(["<think><retrieval>a</retrieval></think>Answer: b", "Answer: b"])
    [1.0, 0.0]
    """
    items = _completions(completions)
    return _score_each("format", items, [None] * len(items), lambda text, _: format_score(text))


# --------------------------------------------------------------------------- retrieval
#: Memory the cached context indexes may hold together; a context whose index alone is larger is not cached.
INDEX_CACHE_BYTES = 256 * 2**20


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
        # surrogatepass: a lone surrogate (JSON allows "\ud800") counts as one code point like any other
        self._codes = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        self._word_of_char = np.cumsum(self._codes == ord(" "))  # words are joined by single spaces
        self._char_prefix: dict[str, np.ndarray] = {}
        self._char_totals: dict[str, int] | None = None
        self.budget = INDEX_CACHE_BYTES
        self.on_grow: Callable[[int], None] | None = None  # tells the cache about lazily added arrays
        # the words (object headers + text), the arrays, and the context string kept as the cache key
        self.nbytes = (sys.getsizeof(context) + sum(map(sys.getsizeof, self.words)) + 8 * len(self.words)
                       + self.len_prefix.nbytes + self._codes.nbytes + self._word_of_char.nbytes)

    def char_prefix(self, ch: str) -> np.ndarray:
        """Prefix sums over words of how often ``ch`` occurs in each word (kept while the budget allows)."""
        arr = self._char_prefix.get(ch)
        if arr is None:
            counts = np.bincount(self._word_of_char[self._codes == ord(ch)], minlength=len(self.words))
            arr = np.concatenate([[0], np.cumsum(counts[: len(self.words)])])
            if self.nbytes + arr.nbytes <= self.budget:
                self._char_prefix[ch] = arr
                self.nbytes += arr.nbytes
                if self.on_grow is not None:
                    self.on_grow(arr.nbytes)
        return arr

    @property
    def char_totals(self) -> dict[str, int]:
        """How often each character occurs in the context (to test the rarest span characters first)."""
        if self._char_totals is None:
            codes, counts = np.unique(self._codes, return_counts=True)
            self._char_totals = {chr(c): int(k) for c, k in zip(codes.tolist(), counts.tolist(), strict=True)}
        return self._char_totals

    def fuzzy_contains(self, span_lower: str, threshold: float) -> bool:
        """True iff some window of len(span words) words has difflib ratio ≥ threshold (official rule).

        Characters are added to the bound rarest first, and after each one windows are dropped whose bound
        stays below the threshold even if every remaining span character matched, so a quote unlike the
        context is rejected after a few cheap passes instead of one per distinct character.
        """
        n = len(span_lower.split())
        n_windows = len(self.words) - n + 1
        if n == 0 or n_windows <= 0:
            return False
        span_counts = Counter(span_lower)
        la = self.len_prefix[n:] - self.len_prefix[:n_windows] + (n - 1)  # window length incl. spaces
        total = np.maximum(la + len(span_lower), 1)
        cand = np.nonzero(2.0 * np.minimum(la, len(span_lower)) / total >= threshold)[0]
        inter = np.zeros(len(cand), dtype=np.int64)
        remaining = len(span_lower)  # span characters not yet counted: at most this many more can match
        totals = self.char_totals
        for ch, cnt in sorted(span_counts.items(), key=lambda kv: (totals.get(kv[0], 0), -kv[1])):
            if not len(cand):
                return False
            remaining -= cnt
            if ch == " ":
                inter += min(cnt, n - 1)
            elif ch in totals:
                pre = self.char_prefix(ch)
                inter += np.minimum(pre[cand + n] - pre[cand], cnt)
            keep = 2.0 * (inter + remaining) / total[cand] >= threshold
            cand, inter = cand[keep], inter[keep]
        for i in cand.tolist():
            window = " ".join(self.words[i:i + n])
            if difflib.SequenceMatcher(None, window, span_lower).ratio() >= threshold:
                return True
        return False


class _IndexCache:
    """LRU cache of context indexes bounded by their bytes (a GRPO group scores several completions per context)."""

    def __init__(self, max_bytes: int = INDEX_CACHE_BYTES):
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._items: OrderedDict[str, _ContextIndex] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def _grew(self, n: int) -> None:
        self.nbytes += n

    def clear(self) -> None:
        for idx in self._items.values():
            idx.on_grow = None
        self._items.clear()
        self.nbytes = 0

    def get(self, context: str) -> _ContextIndex:
        """The index of ``context``, built if needed; least recently used indexes go first when over budget."""
        idx = self._items.get(context)
        if idx is not None:
            self._items.move_to_end(context)
            return idx
        idx = _ContextIndex(context)
        if idx.nbytes > self.max_bytes:  # too big to keep: use once, keep the others
            return idx
        idx.budget, idx.on_grow = self.max_bytes, self._grew
        self._items[context] = idx
        self.nbytes += idx.nbytes
        self.shrink()
        return idx

    def shrink(self) -> None:
        """Evict least recently used indexes until the cache fits its byte budget (the newest always stays)."""
        while self.nbytes > self.max_bytes and len(self._items) > 1:
            _, old = self._items.popitem(last=False)
            old.on_grow = None
            self.nbytes -= old.nbytes


_INDEX_CACHE = _IndexCache()


def _context_index(context: str) -> _ContextIndex:
    """The cached index of one context; cache growth from lazily added prefix arrays is trimmed here too."""
    idx = _INDEX_CACHE.get(context)
    _INDEX_CACHE.shrink()
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


_QUOTE_CREDIT = {"exact": 1.0, "fuzzy": 0.5, "none": 0.0}


def retrieval_score(text: str, context: str, options: RetrievalOptions = RetrievalOptions()) -> float:
    """Official retrieval reward of one completion: mean of 1 / 0.5 / 0 per quote, 0.2 when none, capped at 1.

    Repeated quotes are labelled once, so quote spam costs one scan per distinct quote.
    """
    spans = care_format.quotes(care_format.strip_stop(text))
    if not spans:
        return options.no_quote_reward
    context = "" if context is None else str(context)
    labels: dict[str, str] = {}
    found = 0.0
    for span in spans:
        if options.max_context_share is not None and len(span) > options.max_context_share * max(len(context), 1):
            continue
        label = labels.get(span)
        if label is None:
            label = quote_match(span, context, options.threshold) if not options.exact_only else (
                "exact" if span in context else "none")
            labels[span] = label
        found += _QUOTE_CREDIT[label]
    return min(1.0, found / len(spans))


def retrieval_reward(completions: list, context: list | str | None = None, exact_only: bool = False,
                     max_context_share: float | None = None, prompts: list | None = None,
                     **kwargs: Any) -> list[float | None]:
    """Whether the quotes really occur in the context (official: the whole user prompt is the context).

    When no ``context`` column is given, the prompt text is used, as the official code does. ``None`` for
    a completion that is not text or a row without a context.

    >>> retrieval_reward(["<retrieval>sky is blue</retrieval>", "no quotes"], context=["The sky is blue."] * 2)
    [1.0, 0.2]
    """
    items = _completions(completions)
    if context is not None:
        ctxs = _column(context, len(items), "context")
    elif prompts is not None:
        ctxs = [text_of(p) for p in _column(prompts, len(items), "prompts")]
    else:
        ctxs = [None] * len(items)
    opts = RetrievalOptions(exact_only=exact_only, max_context_share=max_context_share)
    return _score_each("retrieval", items, ctxs, lambda text, x: retrieval_score(text, str(x), opts),
                       lambda x: x is not None, "no context")


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


def combined_reward(weights: tuple[float, float, float] = DEFAULT_WEIGHTS, **options: Any) -> Callable[..., list]:
    """One TRL reward function computing ``w_acc·R_acc + w_fmt·R_fmt + w_ret·R_ret`` (default 0.7/0.1/0.2).

    A completion that any component cannot score gets ``None`` (a partial sum would bias its group).
    """
    wa, wf, wr = weights
    normalized = bool(options.get("normalized", False))
    ret_opts = {k: options[k] for k in ("exact_only", "max_context_share") if k in options}

    def care_reward(completions: list, **kwargs: Any) -> list[float | None]:
        acc = accuracy_reward(completions, normalized=normalized, **kwargs)
        fmt = format_reward(completions)
        ret = retrieval_reward(completions, **{**kwargs, **ret_opts})
        return [None if None in (a, f, r) else wa * a + wf * f + wr * r
                for a, f, r in zip(acc, fmt, ret, strict=True)]

    return care_reward


def reward_functions(accuracy_normalized: bool = False, exact_only: bool = False,
                     max_context_share: float | None = None, retrieval: bool = True) -> list[Callable[..., list]]:
    """The separate reward functions for TRL's ``reward_funcs`` (weights passed as ``reward_weights``).

    Separate functions give per-component logs (``rewards/accuracy/mean`` …). With ``retrieval=False``
    (the no-retrieval-reward ablation) only accuracy and format remain.
    """

    def accuracy(completions: list, **kw: Any) -> list[float | None]:
        return accuracy_reward(completions, normalized=accuracy_normalized, **kw)

    def format(completions: list, **kw: Any) -> list[float | None]:  # noqa: A001 - the logged name
        return format_reward(completions, **kw)

    def retrieval_fn(completions: list, **kw: Any) -> list[float | None]:
        return retrieval_reward(completions, exact_only=exact_only, max_context_share=max_context_share, **kw)

    retrieval_fn.__name__ = "retrieval"
    funcs: list[Callable[..., list]] = [accuracy, format]
    if retrieval:
        funcs.append(retrieval_fn)
    return funcs
