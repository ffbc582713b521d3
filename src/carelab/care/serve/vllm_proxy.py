"""``carelab serve --engine vllm``: vLLM's own OpenAI server behind a proxy that adds CARE's ``care`` check.

Why here and not in :mod:`carelab.vllm_support`: the proxy is CARE's (every reply gets the same quote check
as :mod:`carelab.care.serve.server` gives), so it sits with CARE's serving code and imports the vLLM plumbing
(the ``vllm serve`` command line, the one-line refusal without vLLM) from below, never the other way round.

(No ``from __future__ import annotations`` here: FastAPI must see the proxy handlers' real ``Request`` type.)
"""

import json
import subprocess
import time

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from carelab.care.serve.server import care_extension, message_text
from carelab.vllm_support import LORA_NAME, VLLMUnavailable, require_vllm, serve_command


def create_proxy_app(upstream: str, model_name: str, adapter: bool, client=None):
    """An OpenAI-shaped front for a vLLM server that adds carelab's ``care`` check to every reply.

    Requests go to the LoRA module (``care``) when the server has the adapter, else to the base model;
    streamed replies pass through chunk by chunk and end with one extra chunk carrying the ``care`` check
    of the whole text. ``client`` is an ``httpx.AsyncClient`` (tests pass one with a fake transport).
    """
    app = FastAPI(title="carelab serve (vLLM)")
    http = client or httpx.AsyncClient(base_url=upstream, timeout=None)
    target = LORA_NAME if adapter else model_name

    @app.get("/health")
    async def health() -> JSONResponse:
        resp = await http.get("/health")
        return JSONResponse({"status": "ok" if resp.status_code == 200 else "starting", "engine": "vllm",
                             "model": model_name}, status_code=resp.status_code)

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        resp = await http.get("/v1/models")
        return JSONResponse(resp.json(), status_code=resp.status_code)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        messages = [{"role": m.get("role", ""), "content": message_text(m.get("content"))}
                    for m in body.get("messages", [])]
        body["model"] = target
        if not body.get("stream"):
            resp = await http.post("/v1/chat/completions", json=body)
            payload = resp.json()
            if resp.status_code == 200:
                for choice in payload.get("choices", []):
                    text = (choice.get("message") or {}).get("content") or ""
                    choice["care"] = care_extension(text, messages, None)
                payload["model"] = model_name
            return JSONResponse(payload, status_code=resp.status_code)

        async def events():
            texts: dict[int, str] = {}
            async with http.stream("POST", "/v1/chat/completions", json=body) as resp:
                async for line in resp.aiter_lines():
                    if line.strip() == "data: [DONE]":
                        break
                    if line.startswith("data: "):
                        chunk = json.loads(line[6:])
                        for choice in chunk.get("choices", []):
                            delta = (choice.get("delta") or {}).get("content") or ""
                            texts[choice.get("index", 0)] = texts.get(choice.get("index", 0), "") + delta
                    if line:
                        yield line + "\n\n"
            final = {"object": "chat.completion.chunk", "model": model_name,
                     "choices": [{"index": i, "delta": {}, "care": care_extension(t, messages, None)}
                                 for i, t in sorted(texts.items())]}
            yield f"data: {json.dumps(final)}\n\ndata: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


def serve(spec: str, adapter: str | None, host: str, port: int, name: str, upstream_port: int | None = None,
          max_model_len: int | None = None, startup_timeout: float = 900.0) -> None:
    """Start ``vllm serve`` on 127.0.0.1 (``upstream_port``, default ``port + 1``), wait until it is healthy,
    and serve the checking proxy on ``host:port`` until interrupted; the vLLM process ends with it."""
    import uvicorn

    require_vllm("carelab serve --engine vllm")
    upstream_port = upstream_port or port + 1
    cmd = serve_command(spec, adapter, "127.0.0.1", upstream_port, name, max_model_len)
    proc = subprocess.Popen(cmd)
    upstream = f"http://127.0.0.1:{upstream_port}"
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if proc.poll() is not None:
                raise VLLMUnavailable(f"vllm serve exited with code {proc.returncode} before it was ready")
            try:
                if httpx.get(f"{upstream}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise VLLMUnavailable(f"vllm serve was not ready after {startup_timeout:.0f} s")
            time.sleep(2)
        uvicorn.run(create_proxy_app(upstream, name, bool(adapter)), host=host, port=port, log_level="warning")
    finally:
        proc.terminate()
        proc.wait(timeout=60)
