"""``carelab serve``: an OpenAI-compatible chat server for any model spec (+ PEFT adapter).

Why: users serving CARE models want the API their tools already speak, and the ``openai:`` backend of
the SFT data pipeline needs a real HTTP peer. Endpoints: ``GET /v1/models``, ``GET /health`` and
``POST /v1/chat/completions`` (``stream: true`` sends ``chat.completion.chunk`` server-sent events token
by token, then ``data: [DONE]``).

One model, one generation slot: a single worker thread generates with
:func:`carelab.streaming.stream_generate`; at most ``max_queue`` requests wait behind it (more get 429).
Prompts that cannot fit the model's window with their completion budget get 400 before they queue, and
a request whose client disconnects stops generating at the next token. Errors use OpenAI's shape
``{"error": {"message", "type", "param", "code"}}``. Every choice carries a ``care`` extension: the CARE
parse of the reply with each quote checked against the user messages (exact / fuzzy / none), the same
check ``carelab care ask`` prints. Binds to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from carelab.generation import GenerationSettings
from carelab.streaming import FINISH_CANCELLED, StreamResult, stream_generate

#: Request bodies above this many bytes are refused (413) before they are read.
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
#: Prompts over this many characters per window token are first checked on a prefix of that size.
PREFIX_CHARS_PER_TOKEN = 8
PREFIX_MARGIN_TOKENS = 16  # the word cut at the prefix's end may tokenize into more pieces than whole


class Message(BaseModel):
    """One chat message (text or OpenAI content parts)."""

    role: str
    content: str | list[dict[str, Any]] | None = ""


class StreamOptions(BaseModel):
    """OpenAI ``stream_options``: ``include_usage`` adds a last chunk with ``usage`` and no choices."""

    include_usage: bool = False


class ChatRequest(BaseModel):
    """The subset of the OpenAI chat-completions request that carelab serve honours (others are ignored)."""

    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0, allow_inf_nan=False)
    n: int = Field(default=1, ge=1, le=1, description="only 1 is supported")
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=INT64_MIN, le=INT64_MAX)
    logit_bias: dict[str, float] | None = None


class ApiError(Exception):
    """An error answered in OpenAI's shape; raised anywhere in a handler."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type_: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers
        self.type = type_ or _ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")


_ERROR_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error",
                429: "rate_limit_error", 503: "server_error"}


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's error object, so every client (and ``sft-data --reasoner openai:``) can show the reason."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _validation_error(errors: list[dict]) -> ApiError:
    """Turn pydantic's list of errors into one OpenAI-style 400 naming the first offending field."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = "".join(f"[{p}]" if p.isdigit() else (f".{p}" if i else p) for i, p in enumerate(loc)) or None
    shown = repr(first.get("input"))
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    what = f"{param}: " if param else ""
    got = f" (got {shown})" if "input" in first and first.get("type") != "missing" else ""
    more = f"; and {len(errors) - 1} more error(s)" if len(errors) > 1 else ""
    return ApiError(400, f"{what}{first.get('msg', 'invalid value')}{got}{more}", param=param,
                    code=str(first.get("type", "invalid_value")))


def message_text(content: Any) -> str:
    """Text of an OpenAI message content (a string or a list of parts); the vLLM proxy reads messages the same way."""
    if isinstance(content, list):  # content parts: keep the text ones
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return content or ""


def _prefix_tokens(tokenizer, messages: list[dict], n_chars: int) -> int:
    """A lower bound on the prompt's tokens from its first ``n_chars`` characters (minus a cut-word margin).

    Why: tokenizing half a megabyte takes seconds on a small CPU; a prefix shows most long prompts too long.
    """
    text = "\n".join(m["content"] for m in messages)[:n_chars]
    return max(0, len(tokenizer.encode(text, add_special_tokens=False)) - PREFIX_MARGIN_TOKENS)


def max_token_chars(tokenizer) -> int:
    """The most characters one token can decode to (from the vocabulary; an upper bound, ≥ 1).

    Lets a prompt of more than ``window × this`` characters be refused without tokenizing it.
    """
    vocab = tokenizer.get_vocab()
    return max([1] + [len(t) for t in vocab] + [len(str(t)) for t in getattr(tokenizer, "all_special_tokens", [])])


@dataclass
class Job:
    """One admitted request: its prompt and settings, its cancel flag and the queue its events arrive on."""

    prompt_ids: list[int]
    settings: GenerationSettings
    stops: list[str]
    seed: int | None
    logit_bias: dict[int, float]
    stream: bool
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancel: threading.Event = field(default_factory=threading.Event)

    def post(self, kind: str, payload: Any) -> None:
        """Hand an event to the request's event loop (from the worker thread); a closed loop cancels."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, payload))
        except RuntimeError:  # the loop is gone: nobody is listening any more
            self.cancel.set()


class Engine:
    """One model, one worker thread generating one job at a time, at most ``max_queue`` jobs waiting.

    Why a thread and a counter instead of a lock per request: admission (429) must be decided before a
    request waits, and a waiting request whose client left must give its place up without generating.
    """

    def __init__(self, model, tokenizer, max_queue: int):
        self.model, self.tokenizer, self.max_queue = model, tokenizer, max_queue
        self._cond = threading.Condition()
        self._jobs: list[Job] = []
        self.busy = False
        self.stats = {"requests": 0, "generated_tokens": 0, "cancelled": 0, "rejected_busy": 0}
        self._thread = threading.Thread(target=self._loop, name="carelab-serve-generate", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> bool:
        """Queue ``job``; False (nothing queued) when ``max_queue`` jobs already wait behind a busy slot."""
        with self._cond:
            if len(self._jobs) + int(self.busy) >= 1 + self.max_queue:
                self.stats["rejected_busy"] += 1
                return False
            self._jobs.append(job)
            self.stats["requests"] += 1
            self._cond.notify()
            return True

    def queued(self) -> int:
        """Jobs waiting (not counting the one generating)."""
        with self._cond:
            return len(self._jobs)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._jobs:
                    self._cond.wait()
                job = self._jobs.pop(0)
                self.busy = True
            try:
                result = stream_generate(self.model, self.tokenizer, job.prompt_ids, job.settings, stops=job.stops,
                                         cancel=job.cancel, seed=job.seed, logit_bias=job.logit_bias,
                                         on_delta=(lambda d, j=job: j.post("delta", d)) if job.stream else None)
                with self._cond:
                    self.stats["generated_tokens"] += result.completion_tokens
                    self.stats["cancelled"] += int(result.finish_reason == FINISH_CANCELLED)
                job.post("done", result)
            except Exception as exc:  # noqa: BLE001 - reported to the client as a 500, the worker lives on
                job.post("error", exc)
            finally:
                with self._cond:
                    self.busy = False


def care_extension(text: str, messages: list[dict], eos: str | None) -> dict:
    """The CARE parse of a reply, each quote checked against the user messages (where ``care ask`` puts the context).

    Reuses :func:`carelab.care.serve.ask.check`, so the labels are the ones ``care ask`` and the rewards give.
    """
    from carelab.care.serve.ask import check

    context = "\n\n".join(m["content"] for m in messages if m["role"] == "user")
    res = check(text, question="", context=context, eos=eos)
    return {"answer": res.answer, "well_formed": res.well_formed,
            "quotes": [{"text": q.text, "match": q.match} for q in res.quotes],
            "rewards": res.rewards, "evidence": "user messages"}


class _BodyLimit:
    """ASGI middleware: refuse a body over ``max_bytes`` (413), by its declared length before anything reads it,
    or, for a chunked body, as soon as the bytes received pass the limit (so memory stays bounded)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    def _message(self, n: int, at_least: bool = False) -> str:
        return (f"request body of {'more than ' if at_least else ''}{n} bytes is over this server's limit of "
                f"{self.max_bytes} bytes")

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            body = json.dumps(error_body(self._message(int(length)), "invalid_request_error",
                                         code="request_too_large")).encode()
            await send({"type": "http.response.start", "status": 413,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        received = 0

        async def counted_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:  # FastAPI re-raises HTTPException from body reading as is
                    raise StarletteHTTPException(413, self._message(self.max_bytes, at_least=True))
            return message

        await self.app(scope, counted_receive, send)


def create_app(model, tokenizer, model_name: str, max_new_tokens: int = 512, max_queue: int = 8,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, window: int | None = None) -> FastAPI:
    """A FastAPI app serving ``model`` under the name ``model_name`` (used directly by tests).

    ``max_new_tokens`` is the default and the cap of ``max_tokens``; ``max_queue`` how many requests may
    wait while one generates; ``window`` overrides the model's context length (tests). The engine is
    ``app.state.engine`` (its ``stats`` count generated tokens, cancellations and 429s).
    """
    from carelab.generation import chat_prompt_ids
    from carelab.models import context_window

    app = FastAPI(title="carelab serve", version="2")
    engine = Engine(model, tokenizer, max_queue)
    app.state.engine = engine
    window = window or context_window(model, tokenizer)
    token_chars = max_token_chars(tokenizer)
    vocab_size = len(tokenizer)
    created = int(time.time())

    def _json_error(exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(exc.message, exc.type, exc.param, exc.code), status_code=exc.status,
                            headers=exc.headers)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _json_error(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _json_error(_validation_error(list(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _json_error(ApiError(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None)))

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        return _json_error(ApiError(500, f"internal error: {type(exc).__name__}: {exc}"))

    app.add_middleware(_BodyLimit, max_bytes=max_body_bytes)

    @app.get("/v1/models")
    def models() -> dict:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "carelab", "max_model_len": window}]}

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model": model_name, "busy": engine.busy, "queued": engine.queued(),
                "max_queue": max_queue, "context_window": window, **engine.stats}

    def _too_long(n_prompt: int, n_completion: int, at_least: str = "") -> ApiError:
        return ApiError(400, f"This model's maximum context length is {window} tokens. However, you requested "
                             f"{at_least}{n_prompt + n_completion} tokens ({at_least}{n_prompt} in the messages, "
                             f"{n_completion} in the completion). Please reduce the length of the messages or "
                             f"the completion (max_tokens).", param="messages", code="context_length_exceeded")

    def _settings(req: ChatRequest, limit: int) -> GenerationSettings:
        temperature = 0.0 if req.temperature is None else req.temperature
        return GenerationSettings(max_new_tokens=limit, do_sample=temperature > 0, temperature=temperature or 1.0,
                                  top_p=1.0 if req.top_p is None else req.top_p, batch_size=1)

    def _logit_bias(raw: dict[str, float] | None) -> dict[int, float]:
        out: dict[int, float] = {}
        for key, value in (raw or {}).items():
            if not key.strip().isdigit() or int(key) >= vocab_size:
                raise ApiError(400, f"logit_bias: {key!r} is not a token id of this model (0..{vocab_size - 1})",
                               param="logit_bias")
            if not math.isfinite(value) or not -100 <= value <= 100:
                raise ApiError(400, f"logit_bias: bias {value} for token {key} is not in [-100, 100]",
                               param="logit_bias")
            out[int(key)] = value
        return out

    async def _prepare(req: ChatRequest) -> tuple[list[dict], Job]:
        """Check the request, build the prompt and fit it to the window; nothing here holds the slot."""
        if req.model and req.model != model_name:
            raise ApiError(404, f"The model {req.model!r} does not exist here; this server has {model_name!r}.",
                           param="model", code="model_not_found")
        msgs = [{"role": m.role, "content": message_text(m.content)} for m in req.messages]
        requested = req.max_completion_tokens or req.max_tokens
        limit = min(requested or max_new_tokens, max_new_tokens)
        chars = sum(len(m["content"]) for m in msgs)
        if chars > window * token_chars:  # refused without tokenizing: even the longest tokens could not fit it
            raise _too_long(chars // token_chars, limit, at_least="at least ")
        if chars > PREFIX_CHARS_PER_TOKEN * window:  # tokenize a prefix first: usually enough to refuse
            n_prefix = await run_in_threadpool(_prefix_tokens, tokenizer, msgs, PREFIX_CHARS_PER_TOKEN * (window + 1))
            if n_prefix >= window:
                raise _too_long(n_prefix, limit, at_least="at least ")
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if len(stops) > 16:
            raise ApiError(400, f"stop: at most 16 stop strings, got {len(stops)}", param="stop")
        try:
            ids = await run_in_threadpool(chat_prompt_ids, tokenizer, msgs)
        except Exception as exc:  # noqa: BLE001 - a template that rejects the roles, etc.
            raise ApiError(400, f"cannot build a prompt from these messages: {exc}", param="messages") from None
        if requested is None:  # no budget asked for: use what the window leaves, up to the cap
            limit = min(limit, window - len(ids))
        if limit < 1 or len(ids) + limit > window:
            raise _too_long(len(ids), max(limit, 1))
        job = Job(ids, _settings(req, limit), stops, req.seed, _logit_bias(req.logit_bias), req.stream,
                  asyncio.get_running_loop())
        return msgs, job

    def _usage(job: Job, result: StreamResult) -> dict:
        n_prompt = len(job.prompt_ids)
        return {"prompt_tokens": n_prompt, "completion_tokens": result.completion_tokens,
                "total_tokens": n_prompt + result.completion_tokens}

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest, request: Request):
        msgs, job = await _prepare(req)
        if not engine.submit(job):
            raise ApiError(429, f"the server is busy: one request is generating and {max_queue} are waiting "
                                f"(--max-queue {max_queue}); retry later", code="queue_full",
                           headers={"Retry-After": "1"})
        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        now = int(time.time())
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(_events(job, cid, now, msgs, include_usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        result = await _wait(job, request)
        if result is None:  # the client has gone; nobody reads this
            return JSONResponse({}, status_code=499)
        care = await run_in_threadpool(care_extension, result.text, msgs, tokenizer.eos_token)
        return JSONResponse({
            "id": cid, "object": "chat.completion", "created": now, "model": model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text, "care": care},
                         "finish_reason": result.finish_reason, "logprobs": None}],
            "usage": _usage(job, result),
        })

    async def _wait(job: Job, request: Request) -> StreamResult | None:
        """Wait for the job's result, checking four times a second whether the client is still there."""
        getter = asyncio.ensure_future(job.events.get())
        try:
            while True:
                done, _ = await asyncio.wait({getter}, timeout=0.25)
                if done:
                    kind, payload = getter.result()
                    if kind == "done":
                        return payload
                    if kind == "error":
                        raise ApiError(500, f"generation failed: {type(payload).__name__}: {payload}")
                    getter = asyncio.ensure_future(job.events.get())
                elif await request.is_disconnected():
                    job.cancel.set()
                    return None
        finally:
            getter.cancel()

    async def _events(job: Job, cid: str, now: int, msgs: list[dict], include_usage: bool) -> AsyncIterator[str]:
        """The SSE stream; Starlette cancels it when the client disconnects, and ``finally`` stops generation."""
        base = {"id": cid, "object": "chat.completion.chunk", "created": now, "model": model_name}

        def chunk(delta: dict, finish: str | None = None, **extra: Any) -> str:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish, **extra}
            return f"data: {json.dumps({**base, 'choices': [choice]}, ensure_ascii=False)}\n\n"

        try:
            yield chunk({"role": "assistant", "content": ""})
            while True:
                kind, payload = await job.events.get()
                if kind == "delta":
                    yield chunk({"content": payload})
                elif kind == "done":
                    care = await run_in_threadpool(care_extension, payload.text, msgs, tokenizer.eos_token)
                    yield chunk({}, payload.finish_reason, care=care)
                    if include_usage:
                        yield f"data: {json.dumps({**base, 'choices': [], 'usage': _usage(job, payload)})}\n\n"
                    break
                else:
                    err = error_body(f"generation failed: {type(payload).__name__}: {payload}", "server_error")
                    yield f"data: {json.dumps(err)}\n\n"
                    break
            yield "data: [DONE]\n\n"
        finally:
            job.cancel.set()

    return app


def serve(spec: str, adapter: str | None = None, host: str = "127.0.0.1", port: int = 8000,
          model_name: str | None = None, max_new_tokens: int = 512, max_queue: int = 8) -> None:
    """Load ``spec`` (+ ``adapter``; ``none`` = plain model) and serve it with uvicorn until interrupted."""
    import uvicorn

    from carelab.models import load_model

    adapter = None if adapter is None or str(adapter).lower() == "none" else adapter
    model, tok = load_model(spec, adapter=adapter)
    app = create_app(model, tok, model_name or spec, max_new_tokens=max_new_tokens, max_queue=max_queue)
    uvicorn.run(app, host=host, port=port, log_level="warning")
