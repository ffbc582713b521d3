"""Prompt-lookup drafts: which tokens are guessed, from which source, and how much history is kept.

Why: a wrong guess only costs time (the engine checks every guess), but a drafter that guesses from the wrong
place, or whose shared history grows without bound, would silently waste the speed-up or the memory.
"""

from __future__ import annotations

from carelab.ngram_draft import MAX_NGRAM, SHARED_HISTORY_TOKENS, Drafter, NgramIndex


def test_continuation_follows_the_latest_earlier_occurrence():
    index = NgramIndex([1, 2, 3, 1, 2, 4, 1, 2])
    assert index.continuation([1, 2], 2) == [4, 1]  # the latest occurrence with a next token, not the first
    assert index.continuation([2], 5) == [4, 1, 2]  # cut at the end of the sequence
    assert index.continuation([7], 3) == []
    index.extend([9])
    assert index.continuation([1, 2], 2) == [9]  # the tail's own occurrence now has a next token


def test_only_ngrams_up_to_the_longest_are_indexed():
    index = NgramIndex(list(range(10)))
    assert index.continuation(list(range(MAX_NGRAM)), 1) == [MAX_NGRAM]
    assert index.continuation(list(range(MAX_NGRAM + 1)), 1) == []


def test_longer_matches_win_and_the_row_comes_before_the_shared_answers():
    drafter = Drafter(max_tokens=3)
    drafter.finished([5, 6, 7, 40, 41])
    row = NgramIndex([6, 7, 30, 31, 8, 5, 6, 7])
    # the 3-gram [5, 6, 7] is only in the shared answers; it beats the row's own 2-gram [6, 7] -> 30
    assert drafter.draft(row) == [40, 41]
    row.extend([8])
    assert drafter.draft(row) == [5, 6, 7]  # no earlier [6, 7, 8] or [7, 8] anywhere: the row's own [8] -> 5, 6, 7
    assert Drafter(max_tokens=3).draft(NgramIndex([1, 2, 3])) == []  # nothing seen twice, no shared answers


def test_shared_history_keeps_only_the_latest_tokens():
    drafter = Drafter(max_tokens=2)
    for start in range(0, 3 * SHARED_HISTORY_TOKENS, 500):
        drafter.finished(list(range(start, start + 500)))
    kept = drafter.shared.tokens
    assert len(kept) == SHARED_HISTORY_TOKENS and kept[-1] == 3 * SHARED_HISTORY_TOKENS - 1
    assert drafter.shared.continuation([0], 1) == []  # the oldest answers are gone from the index too
