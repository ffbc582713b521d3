"""`carelab serve`: the OpenAI-compatible app in-process, and the openai backend against a real server subprocess.

Each probe of issue 13 is one test here or in test_serve_live.py (queue full, client disconnect).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from carelab.care.data import synth
from carelab.care.serve.server import care_extension, create_app
from carelab.care.sft.backends import BackendError, BackendOptions, make_backend
from carelab.care.sft.pipeline import SftDataConfig, run_pipeline, sidecar
from carelab.generation import chat_prompt_ids
from carelab.runs import read_jsonl

URL = "/v1/chat/completions"


@pytest.fixture(scope="module")
def served(tiny_qwen):
    model, tok = tiny_qwen
    app = create_app(model, tok, "tiny", max_new_tokens=64)
    return TestClient(app), app.state.engine, tok


@pytest.fixture(scope="module")
def client(served):
    return served[0]


def _sampled(tok, **extra) -> dict:
    """A sampled request whose end-of-sequence token is banned: the random model then writes varied text to the limit."""
    return {"model": "tiny", "messages": [{"role": "user", "content": "Hello there"}], "temperature": 1.0, "seed": 0,
            "logit_bias": {str(tok.eos_token_id): -100}, **extra}


def _post_raw(client: TestClient, body: dict) -> httpx.Response:
    """POST with Python's JSON (which writes NaN), as a client sending NaN would."""
    return client.post(URL, content=json.dumps(body), headers={"content-type": "application/json"})


def _assert_openai_error(r: httpx.Response, status: int, param: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param is not None:
        assert err["param"] == param, err
    return err


def test_models_endpoint(client):
    r = client.get("/v1/models")
    assert r.status_code == 200 and [m["id"] for m in r.json()["data"]] == ["tiny"]


def test_chat_completion(client):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 5}
    r = client.post(URL, json=body)
    assert r.status_code == 200, r.text
    j = r.json()
    assert j["object"] == "chat.completion" and j["choices"][0]["message"]["role"] == "assistant"
    assert isinstance(j["choices"][0]["message"]["content"], str)
    assert 1 <= j["usage"]["completion_tokens"] <= 5 and j["usage"]["prompt_tokens"] > 0
    assert j["usage"]["total_tokens"] == j["usage"]["prompt_tokens"] + j["usage"]["completion_tokens"]
    # greedy: the same request gives the same text
    assert client.post(URL, json=body).json()["choices"][0]["message"]["content"] == \
        j["choices"][0]["message"]["content"]


def test_invalid_numbers_are_400_in_openai_shape(client):
    msgs = [{"role": "user", "content": "Hi"}]
    assert _assert_openai_error(_post_raw(client, {"messages": msgs, "temperature": float("nan")}), 400,
                                "temperature")["type"] == "invalid_request_error"
    _assert_openai_error(_post_raw(client, {"messages": msgs, "top_p": float("nan")}), 400, "top_p")
    _assert_openai_error(_post_raw(client, {"messages": msgs, "temperature": float("inf")}), 400, "temperature")
    _assert_openai_error(client.post(URL, json={"messages": msgs, "seed": 2**70}), 400, "seed")
    _assert_openai_error(client.post(URL, json={"messages": msgs, "seed": -(2**64)}), 400, "seed")
    _assert_openai_error(client.post(URL, json={"messages": msgs, "max_tokens": 0}), 400, "max_tokens")
    _assert_openai_error(client.post(URL, json={"messages": msgs, "logit_bias": {"99999999": 1}}), 400, "logit_bias")
    _assert_openai_error(client.post(URL, json={"messages": "nope"}), 400, "messages")
    _assert_openai_error(client.post(URL, json={"messages": []}), 400, "messages")
    _assert_openai_error(client.post(URL, content=b"{not json", headers={"content-type": "application/json"}), 400)
    assert _assert_openai_error(client.post(URL, json={"messages": msgs, "model": "other"}), 404,
                                "model")["code"] == "model_not_found"
    _assert_openai_error(client.get("/v1/nothing"), 404)
    # a seed at the edge of int64 is fine
    assert client.post(URL, json={"messages": msgs, "seed": 2**63 - 1, "temperature": 0.7,
                                  "max_tokens": 2}).status_code == 200


def test_long_prompt_is_refused_quickly_without_generating(served):
    client, engine, tok = served
    before = dict(engine.stats)
    t0 = time.perf_counter()
    r = client.post(URL, json={"messages": [{"role": "user", "content": "x" * 1_000_000}]})
    elapsed = time.perf_counter() - t0
    assert _assert_openai_error(r, 400, "messages")["code"] == "context_length_exceeded"
    assert "maximum context length is 2048 tokens" in r.json()["error"]["message"]
    assert elapsed < 2.0, elapsed
    # over 8 characters a window token: refused from a tokenized prefix, the rest never tokenized
    err = _assert_openai_error(client.post(URL, json={"messages": [{"role": "user", "content": "word " * 5000}]}), 400)
    assert err["code"] == "context_length_exceeded" and "at least" in err["message"]
    # just over the window once the completion budget is added: tokenized, then refused
    words = "Paris is in France. "
    msgs = [{"role": "user", "content": words * 10}]
    per = (len(chat_prompt_ids(tok, [{"role": "user", "content": words * 20}])) - len(chat_prompt_ids(tok, msgs))) / 10
    msgs = [{"role": "user", "content": words * int((2048 - 40) / per)}]
    n_prompt = len(chat_prompt_ids(tok, msgs))
    assert 2048 - 64 < n_prompt < 2048 - 8, n_prompt
    err = _assert_openai_error(client.post(URL, json={"messages": msgs, "max_tokens": 64}), 400, "messages")
    assert f"{n_prompt} in the messages, 64 in the completion" in err["message"]
    assert engine.stats["requests"] == before["requests"]  # neither was queued
    # the same prompt with a budget that fits is served
    ok = client.post(URL, json={"messages": msgs, "max_tokens": 8})
    assert ok.status_code == 200 and ok.json()["usage"]["prompt_tokens"] == n_prompt


def test_generation_failure_is_500_in_openai_shape_and_the_worker_survives(served, monkeypatch):
    import carelab.care.serve.server as serve_module

    client, _, _ = served

    def boom(*args, **kwargs):
        raise RuntimeError("simulated out of memory")

    monkeypatch.setattr(serve_module, "stream_generate", boom)
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    err = _assert_openai_error(client.post(URL, json=body), 500)
    assert err["type"] == "server_error" and "simulated out of memory" in err["message"]
    _, lines = _stream(client, body)
    assert "simulated out of memory" in lines[-2] and lines[-1] == "data: [DONE]"
    monkeypatch.undo()
    assert client.post(URL, json=body).status_code == 200


def test_oversized_body_is_413_declared_or_chunked(tiny_qwen):
    client = TestClient(create_app(*tiny_qwen, "tiny", max_body_bytes=10_000))
    big = json.dumps({"messages": [{"role": "user", "content": "x" * 20_000}]}).encode()
    r = client.post(URL, content=big, headers={"content-type": "application/json"})
    assert _assert_openai_error(r, 413)["code"] == "request_too_large"
    chunked = client.post(URL, content=iter([big[i:i + 4096] for i in range(0, len(big), 4096)]),
                          headers={"content-type": "application/json"})
    assert "more than 10000 bytes" in _assert_openai_error(chunked, 413)["message"]  # counted, not declared


def test_length_cut_reports_length_and_token_usage(served):
    client, engine, tok = served
    before = engine.stats["generated_tokens"]
    j = client.post(URL, json=_sampled(tok, max_tokens=64)).json()
    assert j["choices"][0]["finish_reason"] == "length"
    usage = j["usage"]
    assert usage["completion_tokens"] == 64 and usage["total_tokens"] == usage["prompt_tokens"] + 64
    assert engine.stats["generated_tokens"] - before == 64
    # a finished reply (end-of-sequence) is "stop"
    greedy = client.post(URL, json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3,
                                    "logit_bias": {str(tok.eos_token_id): 100}}).json()
    assert greedy["choices"][0]["finish_reason"] == "stop" and greedy["usage"]["completion_tokens"] == 1


def _stream(client: TestClient, body: dict) -> tuple[list[dict], list[str]]:
    with client.stream("POST", URL, json={**body, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
    return [json.loads(ln[6:]) for ln in lines if ln != "data: [DONE]"], lines


def test_streaming_is_token_by_token(served):
    client, _, tok = served
    body = _sampled(tok, max_tokens=32)
    chunks, lines = _stream(client, {**body, "stream_options": {"include_usage": True}})
    assert lines[-1] == "data: [DONE]" and lines.count("data: [DONE]") == 1
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    pieces = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    assert sum(1 for p in pieces if p) >= 5, pieces  # many content chunks, not one
    final = [c for c in chunks if c["choices"]][-1]["choices"][0]
    assert final["finish_reason"] == "length" and "care" in final
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 32
    # the stream says exactly what the non-streamed reply says
    whole = client.post(URL, json=body).json()["choices"][0]["message"]["content"]
    assert "".join(p or "" for p in pieces) == whole


def test_stop_string_stops_generation_early(served):
    client, engine, tok = served
    full = client.post(URL, json=_sampled(tok, max_tokens=64)).json()
    text = full["choices"][0]["message"]["content"]
    assert full["usage"]["completion_tokens"] == 64
    stop = next(text[i:i + 3] for i in range(8, len(text) - 3) if text[i:i + 3].strip() and "\ufffd" not in text[i:i + 3])
    before = engine.stats["generated_tokens"]
    j = client.post(URL, json=_sampled(tok, max_tokens=64, stop=["never-there", stop])).json()
    n = j["usage"]["completion_tokens"]
    assert j["choices"][0]["finish_reason"] == "stop"
    assert j["choices"][0]["message"]["content"] == text[:text.index(stop)]
    assert n < 64 and engine.stats["generated_tokens"] - before == n  # stopped during generation
    chunks, _ = _stream(client, _sampled(tok, max_tokens=64, stop=stop))
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert streamed == text[:text.index(stop)] and stop not in streamed


def test_care_extension_checks_quotes(client):
    context = "Marie Curie was born in Warsaw. She moved to Paris in 1891."
    user = [{"role": "system", "content": "Quote the context."},
            {"role": "user", "content": f"Context:\n{context}\n\nQuestion: Where was Marie Curie born?"}]
    reply = ("<think>The text says <retrieval>Marie Curie was born in Warsaw.</retrieval> and "
             "<retrieval>She was born on the Moon.</retrieval></think>\nAnswer: Warsaw")
    care = care_extension(reply, user, "<|im_end|>")
    assert care["answer"] == "Warsaw" and care["well_formed"] is True
    assert [q["match"] for q in care["quotes"]] == ["exact", "none"]
    assert care["quotes"][0]["text"] == "Marie Curie was born in Warsaw."
    # a quote of the system prompt is not evidence
    assert care_extension("<think><retrieval>Quote the context.</retrieval></think> Answer: x", user,
                          None)["quotes"][0]["match"] == "none"
    # every served reply carries it
    msg = client.post(URL, json={"messages": user, "max_tokens": 4}).json()["choices"][0]["message"]
    assert set(msg["care"]) >= {"answer", "well_formed", "quotes", "rewards"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if the server lingers."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def test_openai_backend_against_carelab_serve(tmp_path):
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    env.pop("OPENAI_API_KEY", None)
    proc = subprocess.Popen([sys.executable, "-m", "carelab.cli", "serve", "--model", "tiny-random-qwen2",
                             "--port", str(port), "--max-new-tokens", "8"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(f"{base}/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise AssertionError(f"server did not start: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.3)
        src = synth.write("hotpotqa", 5, 2, tmp_path / "h.json")
        out = tmp_path / "sft.jsonl"
        cfg = SftDataConfig(input=str(src), out=str(out), reasoner="rule", injector="openai:tiny-random-qwen2",
                            base_url=base, max_new_tokens=8, concurrency=2, timeout=60)
        stats = run_pipeline(cfg, echo=lambda s: None)
        assert stats["backend_failures"] == 0
        # random model: its rewrites never contain the facts, so stage 2 drops everything it was given
        assert stats["stages"]["stage2_evidence"] == {"in": 5, "kept": 0, "dropped": 5}
        cache = [o for _, o in read_jsonl(sidecar(out, "cache.jsonl"))]
        assert sum(c["backend"] == "openai:tiny-random-qwen2" for c in cache) == 5
        # the server's reason reaches the user of the openai backend
        backend = make_backend("openai:tiny-random-qwen2", BackendOptions(base_url=base, timeout=30))
        with pytest.raises(BackendError, match="maximum context length is 2048 tokens"):
            backend.chat([[{"role": "user", "content": "word " * 50_000}]], 8)
    finally:
        _stop(proc)
    # the server is gone: a rerun must be served entirely from the cache (no API call repeated)
    again = run_pipeline(cfg, echo=lambda s: None)
    assert again["backend_failures"] == 0 and again["cache"]["misses"] == 0
    assert again["stages"] == stats["stages"]
