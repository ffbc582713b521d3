"""Draft tokens for greedy decoding from n-grams already seen (prompt-lookup decoding).

Why: CARE answers copy sentences of their context into ``<retrieval>`` spans and repeat the same reasoning
template from item to item, so the tokens that follow the last few generated ones have usually been seen
already — in the row's own prompt or in the answers that finished before it. Guessing them costs a dict lookup;
the model then checks several guessed tokens in one forward pass (``carelab.generation``), and every token
kept is the model's own greedy choice, so the text does not change, only the number of decoding steps.
(transformers' ``prompt_lookup_num_tokens`` does this for batch size 1 only; the continuous engine needs it per
row.)
"""

from __future__ import annotations

from collections.abc import Iterable

#: Longest n-gram matched; longer matches are tried first (a 3-token match predicts better than a 1-token one).
MAX_NGRAM = 3
#: Finished answers kept as a shared draft source (tokens): enough for the template phrases of a few answers.
SHARED_HISTORY_TOKENS = 2000


class NgramIndex:
    """A token sequence with, for every n-gram (n ≤ ``MAX_NGRAM``), where the token after its latest occurrence is.

    Appending is O(``MAX_NGRAM``) per token; looking up a continuation is one dict access.

    >>> index = NgramIndex([5, 6, 7, 8, 5, 6])
    >>> index.continuation([5, 6], 3)
    [7, 8, 5]
    >>> index.continuation([9], 3)
    []
    """

    def __init__(self, tokens: Iterable[int] = ()) -> None:
        self.tokens: list[int] = []
        self._next: dict[tuple[int, ...], int] = {}
        self.extend(tokens)

    def extend(self, tokens: Iterable[int]) -> None:
        seq, following = self.tokens, self._next
        for token in tokens:
            p = len(seq)  # the new token's position: it follows the n-grams ending just before it
            for n in range(1, min(MAX_NGRAM, p) + 1):
                following[tuple(seq[p - n:p])] = p
            seq.append(token)

    def continuation(self, ngram: list[int], k: int) -> list[int]:
        """Up to ``k`` tokens that followed the latest earlier occurrence of ``ngram`` (none if never seen)."""
        start = self._next.get(tuple(ngram))
        return [] if start is None else self.tokens[start:start + k]


class Drafter:
    """Drafts for the rows of one generation call: each row's own tokens first, then recently finished answers."""

    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self.shared = NgramIndex()

    def draft(self, row: NgramIndex) -> list[int]:
        """Up to ``max_tokens`` guessed next tokens for a row whose prompt and output so far are ``row``."""
        seq = row.tokens
        for n in range(min(MAX_NGRAM, len(seq)), 0, -1):
            tail = seq[-n:]
            for source in (row, self.shared):
                guess = source.continuation(tail, self.max_tokens)
                if guess:
                    return guess
        return []

    def finished(self, output: list[int]) -> None:
        """Add a finished answer to the shared source, keeping only the latest ``SHARED_HISTORY_TOKENS``."""
        tokens = (self.shared.tokens + output)[-SHARED_HISTORY_TOKENS:]
        self.shared = NgramIndex(tokens)
