"""CARE rewards: the official rules, the options, TRL calling conventions, and property tests."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carelab.care import rewards as R
from carelab.care.official import official_accuracy_reward, official_format_reward, official_retrieval_reward

CTX = "Marie Curie was born in Warsaw. She won two Nobel Prizes. Her husband was Pierre Curie."

# (completion, gold, context, accuracy, format, retrieval) — hand-worked from the official rules
CASES = [
    ("<think><retrieval>Marie Curie was born in Warsaw.</retrieval></think>Answer: Warsaw", "Warsaw", CTX, 1.0, 1.0, 1.0),
    ("<think>no quote</think>Answer: Warsaw", "Warsaw", CTX, 1.0, 0.0, 0.2),
    ("Answer: Warsaw, Poland", "Warsaw", CTX, 0.0, 0.0, 0.2),  # 'Warsaw,' != 'Warsaw' (no normalisation)
    ("<think><retrieval>Marie Curie was born in Warsaw.</retrieval></think>Answer: in Warsaw", "Warsaw", CTX, 2 / 3, 1.0, 1.0),
    ("<think><retrieval>marie curie was born in warsaw.</retrieval></think>Answer: warsaw", "Warsaw", CTX, 0.0, 1.0, 0.5),
    ("<think><retrieval>She won three Oscars.</retrieval></think>Answer: x", "Warsaw", CTX, 0.0, 1.0, 0.0),
    ("<think><retrieval>She won two Nobel Prizes.</retrieval><retrieval>Made up text here.</retrieval></think>Answer: two",
     "two Nobel Prizes", CTX, 0.5, 1.0, 0.5),
    ("<think><retrieval>Her husband was Pierre Curie.</retrieval></think>Answer: Pierre Curie<|im_end|>", "Pierre Curie", CTX, 1.0, 1.0, 1.0),
    ("<think><retrieval>x</retrieval></think>Answer:", "Warsaw", CTX, 0.0, 1.0, 0.0),
    ("", "Warsaw", CTX, 0.0, 0.0, 0.2),
]


@pytest.mark.parametrize("completion,gold,context,acc,fmt,ret", CASES)
def test_official_reward_table(completion, gold, context, acc, fmt, ret):
    assert R.accuracy_reward([completion], answer=[gold]) == [pytest.approx(acc)]
    assert R.format_reward([completion]) == [fmt]
    assert R.retrieval_reward([completion], context=[context]) == [pytest.approx(ret)]


def test_eos_fix_differs_from_official_only_where_intended():
    text = "<think><retrieval>Marie Curie was born in Warsaw.</retrieval></think>Answer: Warsaw<|im_end|>"
    assert official_accuracy_reward(text, "Warsaw") == 0.0  # the official bug: EOS glued to the answer
    assert R.accuracy_reward([text], answer=["Warsaw"]) == [1.0]


def test_conversational_completions_and_prompt_as_context():
    comp = [[{"role": "assistant", "content": "<think><retrieval>She won two Nobel Prizes.</retrieval></think>Answer: two"}]]
    prompts = [[{"role": "system", "content": "sys"}, {"role": "user", "content": CTX}]]
    assert R.retrieval_reward(comp, prompts=prompts) == [1.0]
    assert R.format_reward(comp) == [1.0]


def test_combined_default_weights():
    c = CASES[1][0]
    total = R.combined_reward()([c], answer=["Warsaw"], context=[CTX])[0]
    assert total == pytest.approx(0.7 * 1.0 + 0.1 * 0.0 + 0.2 * 0.2)
    br = R.care_reward_breakdown(c, "Warsaw", CTX)
    assert br["total"] == pytest.approx(total)


def test_options_normalized_exact_only_anti_copy():
    c = "<think><retrieval>marie curie was born in warsaw.</retrieval></think>Answer: the Warsaw."
    assert R.accuracy_reward([c], answer=["Warsaw"]) == [0.0]
    assert R.accuracy_reward([c], answer=["Warsaw"], normalized=True) == [1.0]
    assert R.retrieval_reward([c], context=[CTX], exact_only=True) == [0.0]
    copy_all = f"<think><retrieval>{CTX}</retrieval></think>Answer: Warsaw"
    assert R.retrieval_reward([copy_all], context=[CTX]) == [1.0]  # official: copying everything pays
    assert R.retrieval_reward([copy_all], context=[CTX], max_context_share=0.5) == [0.0]


def test_reward_functions_names_and_ablation():
    names = [f.__name__ for f in R.reward_functions()]
    assert names == ["accuracy", "format", "retrieval"]
    assert [f.__name__ for f in R.reward_functions(retrieval=False)] == ["accuracy", "format"]


def test_quote_match_labels():
    assert R.quote_match("She won two Nobel Prizes.", CTX) == "exact"
    assert R.quote_match("she won two nobel prize.", CTX) == "fuzzy"
    assert R.quote_match("Completely unrelated words here.", CTX) == "none"
    assert R.quote_match("   ", CTX) == "none"


def _random_context(rng: random.Random, n: int) -> str:
    vocab = "alpha beta gamma delta river stone city 1912 Paris Rome north south".split()
    return " ".join(rng.choice(vocab) for _ in range(n))


def test_fast_retrieval_equals_official_on_random_edits():
    rng = random.Random(1)
    for _ in range(150):
        ctx = _random_context(rng, rng.randint(5, 120))
        words = ctx.split()
        i = rng.randrange(len(words))
        span = list(" ".join(words[i:i + rng.randint(1, 8)]))
        for _ in range(rng.randint(0, 4)):
            span[rng.randrange(len(span))] = rng.choice("abcxyz ")
        comp = f"<think><retrieval>{''.join(span)}</retrieval></think>Answer: a"
        assert R.retrieval_reward([comp], context=[ctx])[0] == official_retrieval_reward(comp, ctx)


text_st = st.text(alphabet=st.characters(codec="utf-8"), max_size=200)
tagged_st = st.lists(st.sampled_from(["<think>", "</think>", "<retrieval>", "</retrieval>", "Answer:", " ", "a b",
                                      "<|im_end|>", "\n", "Paris"]) | text_st, max_size=12).map("".join)


@settings(max_examples=200, deadline=None)
@given(tagged_st, text_st, text_st)
def test_rewards_in_unit_interval_and_never_raise(completion, gold, context):
    for value in (R.accuracy_reward([completion], answer=[gold])[0], R.format_reward([completion])[0],
                  R.retrieval_reward([completion], context=[context])[0],
                  R.accuracy_reward([completion], answer=[gold], normalized=True)[0]):
        assert 0.0 <= value <= 1.0


@settings(max_examples=150, deadline=None)
@given(tagged_st, text_st)
def test_fast_rewards_match_official_on_arbitrary_text(completion, context):
    completion = completion.replace("<|im_end|>", "")  # the official code keeps EOS; we strip it on purpose
    assert R.retrieval_reward([completion], context=[context])[0] == official_retrieval_reward(completion, context)
    assert R.format_reward([completion])[0] == official_format_reward(completion)


@pytest.mark.parametrize("bad", [None, 123, {"content": None}, [None], [{"role": "user"}]])
def test_odd_completion_objects(bad):
    assert R.format_reward([bad]) == [0.0]
    assert 0.0 <= R.retrieval_reward([bad], context=["x"])[0] <= 1.0
