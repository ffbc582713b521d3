"""The one quote matcher: its labels, where it places a quote, and that the reward, the viewer and the SFT
pipeline's filters give the same decision on the same span."""

from __future__ import annotations

import difflib

from hypothesis import given, settings
from hypothesis import strategies as st

from carelab.care import format as care_format
from carelab.care import quotes as Q
from carelab.care.eval import viewer
from carelab.care.official import official_retrieval_reward
from carelab.care.sft.pipeline import fact_present, insert_tags

CTX = "Marie Curie was born in Warsaw. She won two Nobel Prizes. Her husband was Pierre Curie."
CREDIT = {"exact": 1.0, "fuzzy": 0.5, "none": 0.0}


def test_quote_match_labels():
    assert Q.quote_match("She won two Nobel Prizes.", CTX) == "exact"
    assert Q.quote_match("she won two nobel prize.", CTX) == "fuzzy"
    assert Q.quote_match("Completely unrelated words here.", CTX) == "none"
    assert Q.quote_match("   ", CTX) == "none"


def test_locate_exact_fuzzy_none():
    assert Q.locate("She won  two", CTX) == Q.QuoteSpan(32, 43, "exact", 1.0)
    fuzzy = Q.locate("she won two nobel prize.", CTX)
    assert fuzzy.label == "fuzzy" and CTX[fuzzy.start:fuzzy.end] == "She won two Nobel Prizes." and fuzzy.ratio >= 0.85
    assert Q.locate("Completely unrelated words here.", CTX) is None
    assert Q.locate("Zed lives on Mars.", CTX, threshold=0.0).ratio < 0.6  # threshold 0: the best window anyway


def test_index_cache_is_bounded_by_bytes():
    cache = Q._IndexCache(max_bytes=2_000_000)
    contexts = [" ".join(f"w{i}x{j}" for j in range(3000)) for i in range(40)]
    for ctx in contexts:
        idx = cache.get(ctx)
        idx.fuzzy_contains("w1x2 w1x3 abcdefgh", 0.85)  # adds per-character arrays as the index is used
        cache.shrink()
        assert cache.nbytes <= cache.max_bytes
        assert cache.nbytes == sum(i.nbytes for i in cache._items.values())
    assert 1 < len(cache) < len(contexts)
    huge = " ".join(f"h{j}" for j in range(200_000))
    cache.get(huge)
    assert huge not in cache._items and cache.nbytes <= cache.max_bytes  # too big to cache: used once
    Q._INDEX_CACHE.clear()


WORDS = "alpha beta gamma delta river stone city 1912 Paris Rome north south Ünter ǅemal İz".split()


@st.composite
def context_and_span(draw) -> tuple[str, str]:
    """A context of random words and spacing, and a span cut from it with a few characters edited (or random)."""
    words = draw(st.lists(st.sampled_from(WORDS), min_size=1, max_size=40))
    seps = draw(st.lists(st.sampled_from([" ", "  ", "\n", " \t"]), min_size=len(words) - 1,
                         max_size=len(words) - 1))
    context = words[0] + "".join(s + w for s, w in zip(seps, words[1:], strict=True))
    if draw(st.booleans()):
        i = draw(st.integers(0, len(words) - 1))
        span = list(" ".join(words[i:i + draw(st.integers(1, 8))]))
        for pos, ch in draw(st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from("abxyz AP.é")), max_size=4)):
            span[pos % len(span)] = ch
        return context, "".join(span)
    return context, draw(st.text(alphabet=st.sampled_from("abtaeh Pr .\n"), max_size=30))


@settings(max_examples=300, deadline=None)
@given(context_and_span())
def test_viewer_label_is_the_reward_decision(case):
    """On random spans the viewer's highlight label, the reward's label and the official reward agree."""
    context, span = case
    placed = viewer.locate_quotes(context, [{"text": span, "match": "none"}])
    shown = placed[0][2] if placed else "none"
    assert shown == Q.quote_match(span, context)
    if care_format.collapse_ws(span):
        comp = f"<think><retrieval>{span}</retrieval></think>Answer: a"
        assert official_retrieval_reward(comp, context) == CREDIT[shown]
    # the SFT pipeline's completeness filter (similarity mode at the same threshold) says "present" likewise
    flat = care_format.collapse_ws(context)
    assert fact_present(span, flat, "similarity", Q.FUZZY_THRESHOLD) == (
        not care_format.collapse_ws(span) or Q.quote_match(span, flat) != "none")


@settings(max_examples=200, deadline=None)
@given(context_and_span())
def test_fuzzy_placement_is_the_best_window(case):
    """A fuzzy quote is placed on the highest-ratio word window (the first on ties), by the official ratio."""
    context, span = case
    found = Q.locate(span, context)
    if found is None or found.label == "exact":
        return
    quote = care_format.collapse_ws(span).lower()
    words, n = context.lower().split(), len(quote.split())
    ratios = [difflib.SequenceMatcher(None, " ".join(words[i:i + n]), quote).ratio()
              for i in range(len(words) - n + 1)]
    best = max(ratios)
    assert found.ratio == best >= Q.FUZZY_THRESHOLD
    assert " ".join(context[found.start:found.end].lower().split()) == " ".join(words[ratios.index(best):][:n])


def test_insert_tags_puts_the_fact_in_place_of_its_most_similar_window():
    text = "First the bridge. Ada Kim was born in Lorn town. So it is Lorn."
    out = insert_tags(text, ["Ada Kim was born in Lorn City."], "Lorn")
    assert care_format.parse(out).retrievals == ["Ada Kim was born in Lorn City."] and "Lorn town" not in out
    assert "First the bridge. <retrieval>Ada Kim was born in Lorn City.</retrieval> So it is Lorn." in out
