"""Parser edge cases and prompt building for the CARE format."""

from __future__ import annotations

import pytest

from carelab.care import format as F


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
