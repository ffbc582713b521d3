"""Parser edge cases, equality with the official regexes, linear time on tag spam, and prompt fitting."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carelab.care import format as F
from carelab.care.official import (
    official_answer_text,
    official_format_reward,
    official_quote_spans,
    official_think,
)


def test_well_formed_complete():
    out = F.parse("<think>Step. <retrieval>Paris is in France.</retrieval> So.</think>\nAnswer: France<|im_end|>")
    assert out.well_formed
    assert out.think.startswith("Step.")
    assert out.retrievals == ["Paris is in France."]
    assert out.answer == "France"


@pytest.mark.parametrize("eos", ["<|im_end|>", "<|eot_id|>", "</s>", "<|endoftext|>"])
def test_stop_strings_stripped(eos):
    assert F.parse(f"<think><retrieval>a</retrieval></think>Answer: Bob{eos}").answer == "Bob"


def test_tokenizer_eos_stripped():
    assert F.parse("<think>x</think>Answer: Bob[EOS]", eos="[EOS]").answer == "Bob"


def test_missing_think_gives_answer_but_not_well_formed():
    out = F.parse("Answer: 42")
    assert out.answer == "42" and out.think == "" and not out.well_formed


def test_unclosed_think_runs_to_answer():
    out = F.parse("<think>reasoning <retrieval>q</retrieval> Answer: 7")
    assert out.think == "reasoning <retrieval>q</retrieval>"
    assert out.answer == "7"
    assert out.retrievals == ["q"]
    assert not out.well_formed


def test_unclosed_retrieval_is_not_a_quote():
    out = F.parse("<think><retrieval>dangling</think>Answer: x")
    assert out.retrievals == [] and not out.well_formed


def test_nested_retrieval_does_not_crash():
    out = F.parse("<think><retrieval>a <retrieval>b</retrieval> c</retrieval></think>Answer: y")
    assert out.retrievals == ["a <retrieval>b"]
    assert out.answer == "y"


def test_several_answer_markers_take_first_after_think():
    out = F.parse("<think>Answer: maybe A? <retrieval>q</retrieval></think> Answer: B\nAnswer: C")
    assert out.answer == "B"
    # the official extraction takes everything after the first marker anywhere
    assert F.official_answer(out.text).startswith("maybe A?")


def test_quote_outside_think_does_not_satisfy_format():
    text = "<think>no quote</think> <retrieval>q</retrieval> Answer: z"
    assert not F.is_well_formed(text)
    assert F.parse(text).retrievals == ["q"]


def test_unicode_and_whitespace_collapse():
    out = F.parse("<think><retrieval>  Zürich\n  liegt   am See </retrieval></think>Answer: 東京")
    assert out.retrievals == ["Zürich liegt am See"]
    assert out.answer == "東京"


@pytest.mark.parametrize("text", ["", "   ", None, "<think>", "</think>", "Answer:", "<retrieval></retrieval>"])
def test_degenerate_inputs(text):
    out = F.parse(text)
    assert isinstance(out.answer, str) and not out.well_formed


def test_render_round_trips():
    text = F.render([("First,", False), ("Alice was born in Rome.", True), ("so", False)], "Rome")
    out = F.parse(text)
    assert out.well_formed and out.retrievals == ["Alice was born in Rome."] and out.answer == "Rome"


def test_messages_and_custom_system_prompt():
    msgs = F.build_messages("ctx", "q?", system_prompt="custom")
    assert msgs[0] == {"role": "system", "content": "custom"}
    assert "ctx" in msgs[1]["content"] and msgs[1]["content"].endswith("Question: q?")


def test_truncate_middle_tokens():
    assert F.truncate_middle_tokens(list(range(10)), 4) == [0, 1, 8, 9]
    assert F.truncate_middle_tokens([1, 2], 5) == [1, 2]


def test_fit_context_keeps_question(tiny_qwen):
    _, tok = tiny_qwen
    context = " ".join(f"word{i}" for i in range(2000))
    question = "Which word comes last in the list?"
    new, truncated = F.fit_context(tok, context, question, max_prompt_tokens=600)
    assert truncated
    msgs = F.build_messages(new, question)
    n = len(tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False))
    assert n <= 600
    assert new.startswith("word0") and new.rstrip().endswith("word1999")
    with pytest.raises(ValueError):
        F.fit_context(tok, context, question * 50, max_prompt_tokens=40)


# --------------------------------------------------------------------------- linear parser == official regexes
FRAGMENTS = ["<think>", "</think>", "<retrieval>", "</retrieval>", "Answer:", "Answer", ":", "<think", "think>",
             "</", "<retrieval", "retrieval>", "<", ">", "/", " ", "\n", "\t", "a", "b c", "Paris.", "<|im_end|>", "é"]
tagged = st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=5), max_size=40).map("".join)


def _reference_parse(text: str) -> tuple[str, list[str], str, bool]:
    """The parser as it was written on the official regexes (the oracle for the linear-time one)."""
    text = F.strip_stop(text)
    retrievals = [q for q in (F.collapse_ws(s) for s in official_quote_spans(text)) if q]
    think, tail_start = "", 0
    found = official_think(text)
    if found:
        think, tail_start = found[0].strip(), found[1]
    elif (start := text.find(F.THINK_OPEN)) >= 0:
        body = text[start + len(F.THINK_OPEN):]
        cut = body.find(F.ANSWER_MARKER)
        think = (body if cut < 0 else body[:cut]).strip()
    answer = ""
    pos = text.find(F.ANSWER_MARKER, tail_start)
    if pos < 0:
        pos = text.find(F.ANSWER_MARKER)
    if pos >= 0:
        answer = text[pos + len(F.ANSWER_MARKER):]
        nxt = answer.find(F.ANSWER_MARKER)
        answer = (answer if nxt < 0 else answer[:nxt]).strip()
    return think, retrievals, answer, official_format_reward(text) == 1.0


@settings(max_examples=500, deadline=None)
@given(tagged)
def test_linear_parser_equals_official_regexes(text):
    assert F.raw_quotes(text) == official_quote_spans(text)
    assert F.is_well_formed(text) == (official_format_reward(text) == 1.0)
    assert F.official_answer(text) == official_answer_text(text)
    out = F.parse(text)
    assert (out.think, out.retrievals, out.answer, out.well_formed) == _reference_parse(text)


def test_parse_of_ten_megabytes_of_tag_spam_is_fast():
    """The official regexes need ~50 s for 0.2 MB of unclosed tags (quadratic backtracking)."""
    for unit in ("<think><retrieval>", "<think>", "<retrieval>a</retrieval>", "<think></think><retrieval>"):
        text = (unit * (10**7 // len(unit)))
        start = time.perf_counter()
        F.parse(text)
        assert time.perf_counter() - start < 20.0  # ~0.3-1.7 s measured on a loaded 2-core machine


# --------------------------------------------------------------------------- bounded context fitting
class _CountingTokenizer:
    """A whitespace tokenizer that records the longest text it was asked to tokenize."""

    def __init__(self):
        self.longest = 0

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        self.longest = max(self.longest, len(text))
        return [hash(w) % 1000 for w in text.split()]

    def decode(self, ids: list[int]) -> str:
        return " ".join(f"w{i}" for i in ids)

    def apply_chat_template(self, msgs, add_generation_prompt=True, tokenize=True, return_dict=False):
        return self.encode(" ".join(m["content"] for m in msgs))


def test_fit_context_cuts_by_characters_before_tokenizing():
    """A 20 MB context is never tokenized whole: memory and time stay bounded by the token budget."""
    tok = _CountingTokenizer()
    context = "word " * 4_000_000
    new, truncated = F.fit_context(tok, context, "Which word?", max_prompt_tokens=500)
    assert truncated and len(tok.encode(new)) <= 500
    assert tok.longest <= 500 * F.MAX_CHARS_PER_TOKEN + 2000


def test_precut_alone_counts_as_truncation():
    """Tokens longer than the bound (here one token per context) still report the cut."""
    tok = _CountingTokenizer()
    context = "x" * (100 * F.MAX_CHARS_PER_TOKEN + 10)
    new, truncated = F.fit_context(tok, context, "q", max_prompt_tokens=100)
    assert truncated and len(new) < len(context)
    assert F.cut_middle_chars("abcdefgh", 4, "|") == "ab|gh" and F.cut_middle_chars("abc", 4) == "abc"
