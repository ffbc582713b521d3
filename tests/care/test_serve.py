"""`carelab serve`: the OpenAI-compatible app, and the openai backend against a real server subprocess."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from carelab.care import synth
from carelab.care.serve import create_app
from carelab.care.sftdata import SftDataConfig, run_pipeline, sidecar
from carelab.runs import read_jsonl


@pytest.fixture(scope="module")
def client(tiny_qwen):
    model, tok = tiny_qwen
    return TestClient(create_app(model, tok, "tiny", max_new_tokens=8))


def test_models_endpoint(client):
    r = client.get("/v1/models")
    assert r.status_code == 200 and [m["id"] for m in r.json()["data"]] == ["tiny"]


def test_chat_completion(client):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 5}
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    j = r.json()
    assert j["object"] == "chat.completion" and j["choices"][0]["message"]["role"] == "assistant"
    assert isinstance(j["choices"][0]["message"]["content"], str)
    assert 0 <= j["usage"]["completion_tokens"] <= 5 and j["usage"]["prompt_tokens"] > 0
    # greedy: the same request gives the same text
    assert client.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"] == \
        j["choices"][0]["message"]["content"]


def test_streaming_and_errors(client):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "stream": True}
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        lines = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(ln[6:]) for ln in lines[:-1]]
    assert chunks[0]["object"] == "chat.completion.chunk" and chunks[-1]["choices"][0]["finish_reason"]
    assert client.post("/v1/chat/completions", json={**body, "model": "other"}).status_code == 404
    assert client.post("/v1/chat/completions", json={"messages": "nope"}).status_code == 422


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    # the server is gone: a rerun must be served entirely from the cache (no API call repeated)
    again = run_pipeline(cfg, echo=lambda s: None)
    assert again["backend_failures"] == 0 and again["cache"]["misses"] == 0
    assert again["stages"] == stats["stages"]
