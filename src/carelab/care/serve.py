"""``carelab serve``: an OpenAI-compatible chat server for any model spec (+ PEFT adapter).

Why: users serving CARE models want the API their tools already speak, and the ``openai:`` backend of
the SFT data pipeline needs a real HTTP peer in tests. Endpoints: ``GET /v1/models`` and
``POST /v1/chat/completions`` (``stream: true`` answers as server-sent events: one content chunk, a
final chunk with ``finish_reason``, then ``[DONE]``). One model, one lock: requests are generated one
at a time with :func:`carelab.generation.generate_chat`. Binds to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

from pydantic import BaseModel, Field

from carelab.care.format import strip_stop


class Message(BaseModel):
    """One chat message (text or OpenAI content parts)."""

    role: str
    content: str | list[dict[str, Any]] | None = ""


class ChatRequest(BaseModel):
    """The subset of the OpenAI chat-completions request that carelab serve honours."""

    model: str | None = None
    messages: list[Message]
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stream: bool = False
    stop: str | list[str] | None = None
    seed: int | None = None


def create_app(model, tokenizer, model_name: str, max_new_tokens: int = 512):
    """A FastAPI app serving ``model`` under the name ``model_name`` (used directly by tests)."""
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import JSONResponse, StreamingResponse

    from carelab.generation import GenerationSettings, chat_prompt_ids, generate_from_ids

    app = FastAPI(title="carelab serve", version="1")
    lock = threading.Lock()
    created = int(time.time())

    @app.get("/v1/models")
    def models() -> dict:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "carelab"}]}

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model": model_name}

    def _text(content: Any) -> str:
        if isinstance(content, list):  # content parts: keep the text ones
            return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        return content or ""

    @app.post("/v1/chat/completions")
    def chat(req: ChatRequest):
        if req.model and req.model != model_name:
            raise HTTPException(404, f"model {req.model!r} is not served here; this server has {model_name!r}")
        if not req.messages:
            raise HTTPException(400, "messages must not be empty")
        msgs = [{"role": m.role, "content": _text(m.content)} for m in req.messages]
        limit = min(req.max_completion_tokens or req.max_tokens or max_new_tokens, max_new_tokens)
        temperature = 0.0 if req.temperature is None else req.temperature
        settings = GenerationSettings(max_new_tokens=limit, do_sample=temperature > 0,
                                      temperature=temperature or 1.0, top_p=req.top_p or 1.0, batch_size=1,
                                      seed=req.seed or 0)
        try:
            ids = chat_prompt_ids(tokenizer, msgs)
        except Exception as exc:  # a template that rejects the roles, etc.
            raise HTTPException(400, f"cannot build a prompt from these messages: {exc}") from None
        with lock:
            text = generate_from_ids(model, tokenizer, [ids], settings)[0]
        text = strip_stop(text, tokenizer.eos_token or ())
        finish = "stop"
        stops = [req.stop] if isinstance(req.stop, str) else (req.stop or [])
        for s in stops:
            if s and s in text:
                text = text[: text.index(s)]
        n_out = len(tokenizer.encode(text, add_special_tokens=False))
        if n_out >= limit:
            finish = "length"
        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        now = int(time.time())
        if req.stream:
            def events():
                base = {"id": cid, "object": "chat.completion.chunk", "created": now, "model": model_name}
                first = {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": text},
                                              "finish_reason": None}]}
                last = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}
                yield f"data: {json.dumps(first)}\n\n"
                yield f"data: {json.dumps(last)}\n\n"
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")
        return JSONResponse({
            "id": cid, "object": "chat.completion", "created": now, "model": model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
            "usage": {"prompt_tokens": len(ids), "completion_tokens": n_out, "total_tokens": len(ids) + n_out},
        })

    return app


def serve(spec: str, adapter: str | None = None, host: str = "127.0.0.1", port: int = 8000,
          model_name: str | None = None, max_new_tokens: int = 512) -> None:
    """Load ``spec`` (+ ``adapter``; ``none`` = plain model) and serve it with uvicorn until interrupted."""
    import uvicorn

    from carelab.models import load_model

    adapter = None if adapter is None or str(adapter).lower() == "none" else adapter
    model, tok = load_model(spec, adapter=adapter)
    app = create_app(model, tok, model_name or spec, max_new_tokens=max_new_tokens)
    uvicorn.run(app, host=host, port=port, log_level="warning")
