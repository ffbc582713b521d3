"""CARE rewards: the official rules, the options, TRL calling conventions, and property tests."""

from __future__ import annotations

import random
import time

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
    for value in (R.format_reward([completion])[0], R.retrieval_reward([completion], context=[context])[0]):
        assert 0.0 <= value <= 1.0
    for value in (R.accuracy_reward([completion], answer=[gold])[0],
                  R.accuracy_reward([completion], answer=[gold], normalized=True)[0]):
        assert (value is None) == (not gold.strip())  # no gold text: not scored, never a silent 0.0
        assert value is None or 0.0 <= value <= 1.0


@settings(max_examples=300, deadline=None)
@given(tagged_st, text_st)
def test_fast_rewards_match_official_on_arbitrary_text(completion, context):
    completion = completion.replace("<|im_end|>", "")  # the official code keeps EOS; we strip it on purpose
    assert R.retrieval_reward([completion], context=[context])[0] == official_retrieval_reward(completion, context)
    assert R.format_reward([completion])[0] == official_format_reward(completion)


@pytest.mark.parametrize("bad", [None, 123, {"content": None}, [None], [{"role": "user"}], [[["deep"]]]])
def test_completion_without_text_is_not_scored_and_counted(bad):
    """TRL leaves None out of the function's mean and, if all functions agree, out of the group baseline."""
    R.unscored_counts(reset=True)
    assert R.format_reward([bad, "Answer: x"]) == [None, 0.0]
    assert R.retrieval_reward([bad], context=["x"]) == [None]
    assert R.accuracy_reward([bad], answer=["x"]) == [None]
    assert R.combined_reward()([bad], answer=["x"], context=["x"]) == [None]
    counts = R.unscored_counts(reset=True)
    assert counts["format: completion is not text"] == 2  # once directly, once inside combined_reward
    assert counts["accuracy: completion is not text"] == 2 and counts["retrieval: completion is not text"] == 2


def test_unscored_cases_are_logged_sparsely(caplog):
    R.unscored_counts(reset=True)
    with caplog.at_level("WARNING", logger="carelab.care.rewards"):
        R.format_reward([None] * 10)
    assert [r.getMessage().split("(")[-1] for r in caplog.records] == [
        "1 so far)", "2 so far)", "4 so far)", "8 so far)"]
    R.unscored_counts(reset=True)


def test_missing_gold_or_context_is_not_scored_not_zero():
    comp = "<think><retrieval>She won two Nobel Prizes.</retrieval></think>Answer: two"
    assert R.accuracy_reward([comp, comp, comp, comp], answer=[None, "", [], "two"]) == [None, None, None, 1.0]
    assert R.retrieval_reward([comp, comp], context=[None, CTX]) == [None, 1.0]
    assert R.retrieval_reward([comp]) == [None]  # neither a context column nor prompts


@pytest.mark.parametrize("completions,expected", [(None, []), ("Answer: x", [0.0]), (5, [None]),
                                                  ((c for c in ["Answer: x"]), [0.0])])
def test_completions_argument_shapes(completions, expected):
    assert R.format_reward(completions) == expected


def test_cyclic_completion_list_does_not_hang():
    cyclic: list = ["x"]
    cyclic.append(cyclic)
    cyclic.append(cyclic)
    assert R.completion_text(cyclic) == "x"
    looped: list = []
    looped.append(looped)
    assert R.format_reward([looped]) == [None]


@pytest.mark.parametrize("column", ["answer", "context"])
@pytest.mark.parametrize("length", [1, 3])
def test_column_of_wrong_length_is_an_error_not_padded(column, length):
    comps = ["Answer: Warsaw"] * 2
    kwargs = {"answer": ["Warsaw"] * 2, "context": [CTX] * 2}
    kwargs[column] = kwargs[column][:1] * length
    fn = R.accuracy_reward if column == "answer" else R.retrieval_reward
    with pytest.raises(ValueError, match=f"column '{column}' has {length} values for 2 completions"):
        fn(comps, **kwargs)
    assert fn(comps, **{column: kwargs[column][0]}) == fn(comps, **{column: [kwargs[column][0]] * 2})  # scalar


# --------------------------------------------------------------------------- tag spam: linear time
MB = 10**6
SPAM_UNITS = {"unclosed retrieval": "<think><retrieval>", "many quotes": "<retrieval>a b</retrieval>",
              "think, then open quote": "<think></think><retrieval>x", "unclosed think": "<think>",
              "closers": "</think>", "no answer": "<think>a</think>b", "answers": "Answer: <think>"}


def _spam(unit: str, n: int) -> str:
    return (unit * (n // len(unit) + 1))[:n]


def _all_rewards(text: str) -> None:
    R.format_reward([text])
    R.retrieval_reward([text], context=[CTX])
    R.accuracy_reward([text], answer=["Warsaw"], normalized=True)


@pytest.mark.parametrize("unit", list(SPAM_UNITS.values()), ids=list(SPAM_UNITS))
def test_ten_megabytes_of_tag_spam_score_in_seconds(unit):
    """The official regexes take ~50 s on 0.2 MB of such spam (quadratic); 10 MB must take seconds."""
    text = _spam(unit, 10 * MB)
    start = time.perf_counter()
    _all_rewards(text)
    assert time.perf_counter() - start < 20.0  # ~1.5 s measured on a loaded 2-core machine


def test_reward_time_scales_linearly_with_spam_size():
    """8x the text must cost far less than the 64x of the quadratic official regexes (best of 3 runs)."""
    def best(n: int) -> float:
        texts = [_spam(u, n) for u in SPAM_UNITS.values()]
        times = []
        for _ in range(3):
            start = time.perf_counter()
            for t in texts:
                _all_rewards(t)
            times.append(time.perf_counter() - start)
        return min(times)

    small, large = best(MB // 4), best(2 * MB)
    assert large / small < 24, (small, large)


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=st.sampled_from("ab \ud800\udfff\u00e9"), max_size=30),
       st.text(alphabet=st.sampled_from("ab \ud800\udfff\u00e9"), max_size=60))
def test_lone_surrogates_match_official(span, context):
    """JSON can carry lone surrogates ("\\ud800"); they must not crash the context index."""
    comp = f"<think><retrieval>{span}</retrieval></think>Answer: a"
    assert R.retrieval_reward([comp], context=[context])[0] == official_retrieval_reward(comp, context)


def test_grpo_exact_only_option_reaches_training_and_dev_rewards():
    """``retrieval_exact_only`` gives a near-copy with a wrong name 0 instead of the official 0.5, in the training
    rewards and the dev curve's alike."""
    from carelab.care.train.config import GRPORunConfig
    from carelab.care.train.grpo import run_reward_functions

    context = "The Silver Hibik was directed by Dumed Dadal."
    near_copy = "<think><retrieval>The Silver Duma was directed by Dumed Dadal.</retrieval></think>Answer: x"
    for exact_only, credit in ((False, 0.5), (True, 0.0)):
        cfg = GRPORunConfig(easy=["e"], out="o", retrieval_exact_only=exact_only)
        funcs = {f.__name__: f for f in run_reward_functions(cfg, retrieval=True)}
        assert funcs["retrieval"]([near_copy], context=[context]) == [credit]
    ablation = run_reward_functions(GRPORunConfig(easy=["e"], out="o", retrieval_exact_only=True), retrieval=False)
    assert [f.__name__ for f in ablation] == ["accuracy", "format"]
