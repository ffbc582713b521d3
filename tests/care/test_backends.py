"""Backends: rule reasoning/injection, reasoning parsing, and the openai backend's retry/backoff."""

from __future__ import annotations

import httpx
import openai
import pytest

from carelab.care import format as care_format
from carelab.care.data import synth
from carelab.care.data.loaders import load_examples
from carelab.care.sft.backends import (
    PROMPT_VERSION,
    BackendError,
    BackendOptions,
    HFBackend,
    OpenAIBackend,
    RuleBackend,
    clean_rewrite,
    inject_by_overlap,
    inject_messages,
    make_backend,
    parse_reasoning,
    reason_messages,
)


@pytest.fixture(scope="module")
def hotpot(tmp_path_factory):
    return load_examples(synth.write("hotpotqa", 12, 5, tmp_path_factory.mktemp("b") / "h.json"))


def test_rule_reasoning_follows_the_chain(hotpot):
    outs = RuleBackend().reason(hotpot)
    assert hotpot
    for ex, out in zip(hotpot, outs, strict=True):
        reasoning, answer = parse_reasoning(out)
        assert answer == ex.answer
        assert ex.meta["chain"]
        for step in ex.meta["chain"]:
            assert step["object"] in reasoning
        # paraphrased, so injection has work to do
        assert not any(s in reasoning for s in ex.supporting_sentences())


def test_rule_cannot_reason_without_chain(hotpot):
    ex = hotpot[0]
    ex2 = type(ex).from_dict({**ex.to_dict(), "meta": {}})
    assert RuleBackend().reason([ex2]) == [None]


def test_inject_by_overlap_places_each_fact_before_its_step():
    reasoning = "Let me think. The person behind the camera for Moon Song is Ada Kim. Ada Kim comes from Lorn."
    facts = ["Ada Kim was born in the city of Lorn.", "Moon Song is a film directed by Ada Kim."]
    out = inject_by_overlap(reasoning, facts)
    assert out.index(facts[1]) < out.index("The person behind") < out.index(facts[0]) < out.index("Ada Kim comes")
    assert inject_by_overlap("Nothing related here.", ["Zed is tall."]).startswith("Zed is tall.")


def test_parse_reasoning_variants():
    assert parse_reasoning("Step one. Step two.\nAnswer: Paris\nextra") == ("Step one. Step two.", "Paris")
    think = (f"{care_format.THINK_OPEN}I recall it.{care_format.THINK_CLOSE}\n{care_format.ANSWER_MARKER} Rome"
             "<|im_end|>")
    assert parse_reasoning(think) == ("I recall it.", "Rome")
    assert parse_reasoning("no marker at all") == ("no marker at all", "")
    tagged = f"A {care_format.wrap_quote('B.')} C\n{care_format.ANSWER_MARKER} x"
    assert clean_rewrite(tagged) == "A B. C"


def test_prompts_are_ours_and_versioned(hotpot):
    ex = hotpot[0]
    m = reason_messages(ex)
    assert m[0]["role"] == "system" and ex.question in m[1]["content"] and ex.context in m[1]["content"]
    m2 = inject_messages(ex, "R.", ex.supporting_sentences())
    assert ex.supporting_sentences() and all(f in m2[1]["content"] for f in ex.supporting_sentences())
    assert PROMPT_VERSION


def test_make_backend_specs(monkeypatch):
    assert make_backend("rule").name == "rule"
    assert isinstance(make_backend("hf:tiny-random-qwen2"), HFBackend)
    with pytest.raises(BackendError, match="unknown backend"):
        make_backend("gpt4")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(BackendError, match="OPENAI_API_KEY"):
        make_backend("openai:gpt-4o-mini")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    b = make_backend("openai:m")
    assert b.name == "openai:m" and str(b.client.base_url).startswith("http://127.0.0.1:9")


class _FlakyCompletions:
    def __init__(self, failures: int, status: int | None = None):
        self.failures, self.status, self.calls = failures, status, 0

    def create(self, **kw):
        self.calls += 1
        req = httpx.Request("POST", "http://test/v1/chat/completions")
        if self.status is not None:
            raise openai.BadRequestError("bad", response=httpx.Response(self.status, request=req), body=None)
        if self.calls <= self.failures:
            raise openai.APIConnectionError(request=req)
        msg = type("M", (), {"content": f"echo {kw['messages'][-1]['content'][:5]}"})
        return type("R", (), {"choices": [type("C", (), {"message": msg})]})


def _backend(completions) -> OpenAIBackend:
    b = OpenAIBackend("m", BackendOptions(base_url="http://127.0.0.1:9/v1", retries=3, backoff=0.0, concurrency=2))
    b.client = type("Client", (), {"chat": type("Chat", (), {"completions": completions})})
    return b


def test_openai_retries_then_succeeds():
    comp = _FlakyCompletions(failures=2)
    b = _backend(comp)
    assert b.chat([[{"role": "user", "content": "hello world"}]], 8) == ["echo hello"]
    assert comp.calls == 3


def test_openai_gives_up_and_reports_none():
    comp = _FlakyCompletions(failures=100)
    assert _backend(comp).chat([[{"role": "user", "content": "x"}]], 8) == [None]
    assert comp.calls == 4  # 1 + 3 retries


def test_openai_client_errors_are_not_retried():
    comp = _FlakyCompletions(failures=0, status=400)
    with pytest.raises(BackendError, match="HTTP 400"):
        _backend(comp).chat([[{"role": "user", "content": "x"}]], 8)
    assert comp.calls == 1
