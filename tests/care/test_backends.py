"""Backends: rule reasoning/injection, reasoning parsing, and the openai backend against a scripted server."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import openai
import openai._base_client
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


class _ScriptedServer(ThreadingHTTPServer):
    """A fake OpenAI chat endpoint that plays scripted (status, headers) replies, then answers 200."""

    def __init__(self, script: list[tuple[int, dict[str, str]]]):
        super().__init__(("127.0.0.1", 0), _ScriptedHandler)
        self.script, self.calls = list(script), 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _ScriptedHandler(BaseHTTPRequestHandler):
    server: _ScriptedServer

    def do_POST(self):  # noqa: N802 - the http.server hook's name
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        self.server.calls += 1
        status, headers = self.server.script.pop(0) if self.server.script else (200, {})
        if status == 200:
            reply = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                     "choices": [{"index": 0, "finish_reason": "stop", "message": {
                         "role": "assistant", "content": f"echo {body['messages'][-1]['content'][:5]}"}}]}
        else:
            reply = {"error": {"message": f"scripted {status}", "code": None}}
        data = json.dumps(reply).encode()
        self.send_response(status)
        for k, v in {"content-type": "application/json", **headers}.items():
            self.send_header(k, v)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):  # keep pytest output quiet
        pass


@pytest.fixture
def scripted(monkeypatch):
    """Start a scripted server; the SDK's retry sleeps are recorded instead of slept, so tests stay fast."""
    sleeps: list[float] = []
    monkeypatch.setattr(openai._base_client.time, "sleep", sleeps.append)
    servers: list[_ScriptedServer] = []

    def start(script: list[tuple[int, dict[str, str]]]) -> tuple[_ScriptedServer, list[float]]:
        server = _ScriptedServer(script)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server, sleeps

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _backend(base_url: str) -> OpenAIBackend:
    return OpenAIBackend("m", BackendOptions(base_url=base_url, retries=3, concurrency=2, timeout=10))


def test_openai_sdk_retries_429_after_retry_after(scripted):
    server, sleeps = scripted([(429, {"retry-after": "7"}), (503, {})])
    assert _backend(server.base_url).chat([[{"role": "user", "content": "hello world"}]], 8) == ["echo hello"]
    assert server.calls == 3
    assert sleeps[0] == 7.0  # the SDK waited as long as the server's Retry-After asked
    assert 0 < sleeps[1] <= 1.0  # no Retry-After: the SDK's own exponential backoff with jitter


def test_openai_gives_up_and_reports_none(scripted):
    server, _ = scripted([(500, {})] * 100)
    assert _backend(server.base_url).chat([[{"role": "user", "content": "x"}]], 8) == [None]
    assert server.calls == 4  # 1 + 3 retries


def test_openai_connection_errors_give_none(scripted):
    server, sleeps = scripted([])
    url = server.base_url
    server.shutdown()
    server.server_close()  # nothing listens there any more
    assert _backend(url).chat([[{"role": "user", "content": "x"}]], 8) == [None]
    assert len(sleeps) == 3


def test_openai_client_errors_are_not_retried(scripted):
    server, _ = scripted([(400, {})])
    with pytest.raises(BackendError, match="HTTP 400: scripted 400"):
        _backend(server.base_url).chat([[{"role": "user", "content": "x"}]], 8)
    assert server.calls == 1
