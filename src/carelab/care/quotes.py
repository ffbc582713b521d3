"""The one quote matcher: does a quoted span occur in a context, exactly or by the official fuzzy rule, and where.

The official CARE retrieval rule: a quote is *exact* when it is a (case-sensitive) substring of the context,
*fuzzy* when some window of as many lower-cased context words has ``difflib.SequenceMatcher(None, window,
quote).ratio() >= FUZZY_THRESHOLD``, else *none*. The reward, the SFT pipeline's filters, the evaluator and
the HTML viewer all call this module, so a label shown anywhere is the label the reward paid for.
No library offers this word-window rule; it is written by hand and made fast with an exact upper bound on the
ratio (windows that cannot reach the threshold are never compared), identical to the quadratic scan
(``carelab.care.official.official_retrieval_reward``, checked by tests).
"""

from __future__ import annotations

import difflib
import re
import sys
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Literal, NamedTuple

import numpy as np

from carelab.care import format as care_format

#: the official fuzzy-quote threshold (difflib ratio of the best same-length word window)
FUZZY_THRESHOLD = 0.85

Label = Literal["exact", "fuzzy", "none"]
_WORD = re.compile(r"\S+")  # the words of ``str.split`` (same whitespace definition), with their offsets


def _matcher(span_lower: str) -> difflib.SequenceMatcher:
    """The official comparison (window as ``a``, quote as ``b``, difflib's defaults); ``b`` is analysed once."""
    return difflib.SequenceMatcher(None, "", span_lower)


#: Memory the cached context indexes may hold together; a context whose index alone is larger is not cached.
INDEX_CACHE_BYTES = 256 * 2**20


class _ContextIndex:
    """Lower-cased context words with per-character prefix counts, built once per context.

    The ratio of ``difflib.SequenceMatcher`` is bounded above by ``quick_ratio`` (2·|multiset char
    intersection| / total length). Prefix counts give that bound for every window at once, so only
    windows that could reach the threshold are checked with difflib itself.
    """

    def __init__(self, context: str):
        self.context = context  # kept for character offsets; it is also the cache key, so no extra copy
        self.words = context.lower().split()
        self._word_spans: list[tuple[int, int]] | None = None
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

    def word_span(self, first: int, n: int) -> tuple[int, int]:
        """Character offsets in the original context of ``n`` words from word ``first`` (``str.split`` words)."""
        if self._word_spans is None:
            self._word_spans = [m.span() for m in _WORD.finditer(self.context)]
        return self._word_spans[first][0], self._word_spans[first + n - 1][1]

    def _candidates(self, span_lower: str, threshold: float) -> np.ndarray:
        """Start words of the windows whose ratio *could* reach ``threshold`` (an exact upper bound prunes).

        Characters are added to the bound rarest first, and after each one windows are dropped whose bound
        stays below the threshold even if every remaining span character matched, so a quote unlike the
        context is rejected after a few cheap passes instead of one per distinct character.
        """
        n = len(span_lower.split())
        n_windows = len(self.words) - n + 1
        if n == 0 or n_windows <= 0:
            return np.zeros(0, dtype=np.int64)
        span_counts = Counter(span_lower)
        la = self.len_prefix[n:] - self.len_prefix[:n_windows] + (n - 1)  # window length incl. spaces
        total = np.maximum(la + len(span_lower), 1)
        cand = np.nonzero(2.0 * np.minimum(la, len(span_lower)) / total >= threshold)[0]
        inter = np.zeros(len(cand), dtype=np.int64)
        remaining = len(span_lower)  # span characters not yet counted: at most this many more can match
        totals = self.char_totals
        for ch, cnt in sorted(span_counts.items(), key=lambda kv: (totals.get(kv[0], 0), -kv[1])):
            if not len(cand):
                break
            remaining -= cnt
            if ch == " ":
                inter += min(cnt, n - 1)
            elif ch in totals:
                pre = self.char_prefix(ch)
                inter += np.minimum(pre[cand + n] - pre[cand], cnt)
            keep = 2.0 * (inter + remaining) / total[cand] >= threshold
            cand, inter = cand[keep], inter[keep]
        return cand

    def fuzzy_contains(self, span_lower: str, threshold: float) -> bool:
        """True iff some window of len(span words) words has difflib ratio ≥ threshold (official rule)."""
        n = len(span_lower.split())
        matcher = _matcher(span_lower)
        for i in self._candidates(span_lower, threshold).tolist():
            matcher.set_seq1(" ".join(self.words[i:i + n]))
            if matcher.ratio() >= threshold:
                return True
        return False

    def best_window(self, span_lower: str, threshold: float) -> tuple[int, float] | None:
        """(start word, ratio) of the highest-ratio window with ratio ≥ ``threshold`` (the first on ties), or None."""
        n = len(span_lower.split())
        matcher = _matcher(span_lower)
        best: tuple[int, float] | None = None
        for i in self._candidates(span_lower, threshold).tolist():
            matcher.set_seq1(" ".join(self.words[i:i + n]))
            floor = threshold if best is None else best[1]
            # quick_ratio bounds ratio from above, so skipping on it never changes the answer
            if matcher.quick_ratio() < floor or (best is not None and matcher.quick_ratio() <= best[1]):
                continue
            r = matcher.ratio()
            if r >= floor and (best is None or r > best[1]):
                best = (i, r)
                if r == 1.0:
                    break
        return best


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


def quote_match(span: str, context: str, threshold: float = FUZZY_THRESHOLD) -> Label:
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


class QuoteSpan(NamedTuple):
    """Where a quote sits in a context: character offsets, its label and the window's ratio (1.0 when exact)."""

    start: int
    end: int
    label: Label
    ratio: float


def locate(span: str, context: str, threshold: float = FUZZY_THRESHOLD) -> QuoteSpan | None:
    """Where :func:`quote_match` finds ``span`` in ``context``: the first exact occurrence, else the best
    fuzzy window (the first on ties); None exactly when the label is ``"none"``.

    ``threshold=0`` gives the best window of any ratio (the SFT pipeline's tagging of an approximate fact).

    >>> locate("the capital", "Paris is the capital.")
    QuoteSpan(start=9, end=20, label='exact', ratio=1.0)
    """
    span = care_format.collapse_ws(span)
    if not span:
        return None
    pos = context.find(span)
    if pos >= 0:
        return QuoteSpan(pos, pos + len(span), "exact", 1.0)
    index = _context_index(context)
    found = index.best_window(span.lower(), threshold)
    if found is None:
        return None
    first, ratio = found
    start, end = index.word_span(first, len(span.split()))
    return QuoteSpan(start, end, "fuzzy", ratio)
