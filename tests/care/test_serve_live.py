"""`carelab serve` over real HTTP (uvicorn in a thread on a free loopback port): the bounded queue and disconnects.

Why in-process: a forward hook on the served model can hold or slow generation, so "the slot is busy" and
"the client left mid-generation" are set up exactly, and the engine's token counter shows what ran.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import httpx
import pytest
import uvicorn

from carelab.care.serve.server import create_app
from carelab.models import load_model


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until(cond: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def live() -> Iterator[SimpleNamespace]:
    model, tok = load_model("tiny-random-qwen2")  # its own copy: the hook below must not slow other tests
    gate = threading.Event()
    gate.set()
    delay = {"s": 0.0}

    def hold(module, args):  # runs before every forward pass, i.e. once per generated token
        gate.wait(60)
        if delay["s"]:
            time.sleep(delay["s"])

    model.register_forward_pre_hook(hold)
    app = create_app(model, tok, "tiny", max_new_tokens=512, max_queue=1)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=_free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    _wait_until(lambda: server.started)
    base = f"http://127.0.0.1:{server.config.port}"
    engine = app.state.engine
    try:
        yield SimpleNamespace(url=f"{base}/v1/chat/completions", health=lambda: httpx.get(f"{base}/health").json(),
                              engine=engine, tok=tok, gate=gate, delay=delay)
    finally:
        gate.set()
        server.should_exit = True
        thread.join(timeout=15)


def _body(tok, **extra) -> dict:
    """Sampled, end-of-sequence banned: the random model writes exactly max_tokens tokens unless stopped."""
    return {"messages": [{"role": "user", "content": "Hello there"}], "temperature": 1.0, "seed": 0,
            "logit_bias": {str(tok.eos_token_id): -100}, **extra}


def _idle(live: SimpleNamespace) -> bool:
    return not live.engine.busy and live.engine.queued() == 0


def test_queue_full_gets_429_and_queued_requests_are_served(live):
    live.gate.clear()  # the first request holds the only slot until the gate opens
    try:
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(httpx.post, live.url, json=_body(live.tok, max_tokens=3), timeout=60)
            _wait_until(lambda: live.health()["busy"])
            second = pool.submit(httpx.post, live.url, json=_body(live.tok, max_tokens=3), timeout=60)
            _wait_until(lambda: live.health()["queued"] == 1)
            t0 = time.perf_counter()
            r = httpx.post(live.url, json=_body(live.tok, max_tokens=3), timeout=10)
            assert time.perf_counter() - t0 < 2.0
            assert r.status_code == 429 and r.headers["retry-after"] == "1"
            err = r.json()["error"]
            assert err["type"] == "rate_limit_error" and err["code"] == "queue_full" and "--max-queue 1" in err["message"]
            live.gate.set()
            assert first.result().status_code == 200 and second.result().status_code == 200
        assert live.health()["rejected_busy"] >= 1
    finally:
        live.gate.set()


def test_disconnect_stops_generation(live):
    live.delay["s"] = 0.02  # 20 ms a token: 500 tokens would take 10 s
    try:
        before = dict(live.engine.stats)
        t0 = time.perf_counter()
        with pytest.raises(httpx.ReadTimeout):  # the client gives up after 1 s and closes its connection
            httpx.post(live.url, json=_body(live.tok, max_tokens=500), timeout=httpx.Timeout(30, read=1.0))
        _wait_until(lambda: _idle(live))
        stopped_after = time.perf_counter() - t0
        generated = live.engine.stats["generated_tokens"] - before["generated_tokens"]
        assert live.engine.stats["cancelled"] - before["cancelled"] == 1
        assert 0 < generated < 250 and stopped_after < 5, (generated, stopped_after)

        # streaming: read a few chunks, then hang up
        before = dict(live.engine.stats)
        with httpx.stream("POST", live.url, json=_body(live.tok, max_tokens=500, stream=True), timeout=30) as r:
            assert r.status_code == 200
            seen = 0
            for line in r.iter_lines():
                seen += line.startswith("data: ")
                if seen >= 4:
                    break
        _wait_until(lambda: _idle(live))
        generated = live.engine.stats["generated_tokens"] - before["generated_tokens"]
        assert live.engine.stats["cancelled"] - before["cancelled"] == 1
        assert 0 < generated < 250, generated
    finally:
        live.delay["s"] = 0.0


def test_request_that_leaves_while_queued_is_never_generated(live):
    live.gate.clear()
    try:
        before = dict(live.engine.stats)
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(httpx.post, live.url, json=_body(live.tok, max_tokens=5), timeout=60)
            _wait_until(lambda: live.health()["busy"])
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(live.url, json=_body(live.tok, max_tokens=50), timeout=httpx.Timeout(30, read=0.8))
            time.sleep(0.5)  # the server notices the hang-up within a quarter second
            live.gate.set()
            assert first.result().status_code == 200
        _wait_until(lambda: _idle(live))
        assert live.engine.stats["generated_tokens"] - before["generated_tokens"] == 5
        assert live.engine.stats["cancelled"] - before["cancelled"] == 1
    finally:
        live.gate.set()


def test_openai_sdk_sees_stream_usage_care_and_errors(live):
    import openai

    client = openai.OpenAI(base_url=live.url.removesuffix("/chat/completions"), api_key="EMPTY", max_retries=0)
    msgs = [{"role": "user", "content": "Context:\nParis is in France.\n\nQuestion: Where is Paris?"}]
    r = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=5,
                                       logit_bias={str(live.tok.eos_token_id): -100})
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 5
    assert set(r.choices[0].message.model_extra["care"]) >= {"answer", "well_formed", "quotes", "rewards"}
    chunks = list(client.chat.completions.create(model="tiny", messages=msgs, max_tokens=12, temperature=1.0, seed=1,
                                                 stream=True, stream_options={"include_usage": True}))
    assert sum(bool(c.choices and c.choices[0].delta.content) for c in chunks) >= 3
    assert "care" in chunks[-2].choices[0].model_extra and chunks[-1].usage.completion_tokens >= 1
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="tiny", messages=msgs, seed=2**64)
    assert info.value.param == "seed" and "less than or equal" in info.value.message
