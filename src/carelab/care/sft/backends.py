"""Who does the thinking in the SFT data pipeline: a rule engine, a local model, or any OpenAI-style API.

Every backend offers the same two jobs — ``reason`` (answer a question with step-by-step reasoning)
and ``inject`` (rewrite a reasoning so it states given supporting facts word for word) — so the
pipeline in :mod:`carelab.care.sft.pipeline` never cares which one runs. Prompts are ours and versioned
(:data:`PROMPT_VERSION` goes into every cache key and output record): changing a prompt means bumping
the version, which invalidates cached answers instead of silently mixing two prompts.

Specs: ``rule`` (deterministic; reasons from the chain recorded in synthetic rows, and injects facts
next to the reasoning sentence they overlap most — works for any HotpotQA-style data),
``hf:<model spec>`` (carelab.models + batched carelab.generation), ``openai:<model>`` (the ``openai``
SDK against any compatible server; bounded concurrency, per-request timeout, and the SDK's own retries, which
back off exponentially and honour a server's ``Retry-After``).
"""

from __future__ import annotations

import logging
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from carelab.care import format as care_format
from carelab.care.data.examples import QAExample
from carelab.care.text import STOP_WORDS, split_sentences

log = logging.getLogger(__name__)

PROMPT_VERSION = "carelab-sftdata-v1"

REASON_SYSTEM = (
    "You are a careful reader. Answer the question using only the context. "
    "Reason step by step in plain sentences, naming the facts from the context you use. "
    f"Then write the final answer on its own last line, starting with '{care_format.ANSWER_MARKER}', "
    "as a short phrase (a name, a number, a date or a few words)."
)
INJECT_SYSTEM = (
    "You edit reasoning. You receive a question, a reasoning that answers it, and a list of supporting "
    "facts. Rewrite the reasoning so that it states every supporting fact word for word, each exactly "
    "as given, at the point where the reasoning relies on it. Keep the reasoning's logic and conclusion; "
    "do not add new facts. Output only the rewritten reasoning, with no final answer line."
)


class BackendError(RuntimeError):
    """A backend cannot be created or used (bad spec, missing key, unrecoverable API error)."""


@dataclass
class BackendOptions:
    """Knobs shared by the model backends (ignored by ``rule``)."""

    batch_size: int = 16
    max_new_tokens: int = 384
    base_url: str | None = None
    api_key: str | None = None
    concurrency: int = 4
    timeout: float = 120.0
    #: the SDK's ``max_retries``: it retries connection errors, timeouts, 408/409/429 and 5xx itself
    retries: int = 4


def reason_messages(ex: QAExample) -> list[dict]:
    """Stage-1 chat prompt: context + question, reasoning then ``Answer:``."""
    user = f"Context:\n{ex.context}\n\nQuestion: {ex.question}"
    return [{"role": "system", "content": REASON_SYSTEM}, {"role": "user", "content": user}]


def inject_messages(ex: QAExample, reasoning: str, facts: Sequence[str]) -> list[dict]:
    """Stage-2 chat prompt: question, reasoning, numbered supporting facts."""
    listed = "\n".join(f"{i + 1}. {f}" for i, f in enumerate(facts))
    user = (f"Question: {ex.question}\n\nReasoning:\n{reasoning}\n\nSupporting facts:\n{listed}\n\n"
            "Rewritten reasoning:")
    return [{"role": "system", "content": INJECT_SYSTEM}, {"role": "user", "content": user}]


def parse_reasoning(text: str) -> tuple[str, str]:
    """Split a reasoner's output into (reasoning, answer); handles think-tag models and plain text."""
    text = care_format.strip_stop(text or "")
    marker = care_format.ANSWER_MARKER
    if care_format.THINK_OPEN in text:
        out = care_format.parse(text)
        reasoning = out.think or text.split(marker)[0]
        return _plain(reasoning), out.answer.splitlines()[0].strip() if out.answer else ""
    pos = text.rfind(marker)
    if pos < 0:
        return _plain(text), ""
    answer = text[pos + len(marker):].strip()
    return _plain(text[:pos]), answer.splitlines()[0].strip() if answer else ""


def clean_rewrite(text: str) -> str:
    """An injector's output without stop strings, think/retrieval tags or a trailing answer line."""
    text = care_format.strip_stop(text or "")
    if care_format.THINK_OPEN in text:
        text = care_format.parse(text).think or text
    pos = text.find(care_format.ANSWER_MARKER)
    if pos >= 0:
        text = text[:pos]
    return _plain(text)


def _plain(text: str) -> str:
    for tag in (care_format.THINK_OPEN, care_format.THINK_CLOSE, care_format.RETRIEVAL_OPEN,
                care_format.RETRIEVAL_CLOSE):
        text = text.replace(tag, " ")
    return "\n".join(" ".join(line.split()) for line in text.strip().splitlines() if line.strip())


class Backend(ABC):
    """One reasoner/injector. ``name`` is the spec, part of every cache key."""

    name: str = ""

    @abstractmethod
    def reason(self, examples: Sequence[QAExample]) -> list[str | None]:
        """Raw reasoning output (ending with ``Answer: …``) per example; ``None`` = failed/unavailable."""

    @abstractmethod
    def inject(self, examples: Sequence[QAExample], reasonings: Sequence[str],
               facts: Sequence[Sequence[str]]) -> list[str | None]:
        """A rewrite of each reasoning that states the given facts; ``None`` = failed/unavailable."""


# --------------------------------------------------------------------------------------------------
# rule
# --------------------------------------------------------------------------------------------------

_CONNECT = ("First,", "Next,", "Then,", "After that,", "Finally,")
_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'-]*")
#: the shared stop words plus the words of the rule reasoning's own template, which align nothing
_STOP = STOP_WORDS | frozenset("year city film novel born first next then after finally let me so answer step question "
                               "work through".split())


def _content_words(text: str) -> set[str]:
    """Lowercased non-stopwords; a possessive counts as its noun ("Kalo's" is "kalo"), so a fact about Kalo
    aligns with the reasoning sentence that says "Kalo's year of birth" rather than tying with another."""
    words = (w.lower().removesuffix("'s") for w in _WORD.findall(text))
    return {w for w in words if w not in _STOP}


class RuleBackend(Backend):
    """Deterministic backend: reasoning from a recorded chain; injection aligned by word overlap."""

    name = "rule"

    def reason(self, examples: Sequence[QAExample]) -> list[str | None]:
        return [self._reason_one(ex) for ex in examples]

    @staticmethod
    def _reason_one(ex: QAExample) -> str | None:
        chain = ex.meta.get("chain")
        if not chain or not ex.answers:
            return None  # no known chain: this backend cannot reason about it
        steps = [str(s.get("reason", "")).strip() for s in chain if str(s.get("reason", "")).strip()]
        parts = ["Let me work through the question step by step."]
        for i, s in enumerate(steps):
            conn = _CONNECT[min(i, len(_CONNECT) - 1)] if len(steps) > 1 else ""
            if i == len(steps) - 1 and len(steps) > 1:
                conn = "Finally,"
            parts.append(f"{conn} {s[:1].lower() + s[1:] if conn and not _starts_with_name(s) else s}".strip())
        if ex.meta.get("conclusion"):
            parts.append(str(ex.meta["conclusion"]))
        parts.append(f"So the answer is {ex.answer}.")
        return " ".join(parts) + f"\n{care_format.ANSWER_MARKER} {ex.answer}"

    def inject(self, examples: Sequence[QAExample], reasonings: Sequence[str],
               facts: Sequence[Sequence[str]]) -> list[str | None]:
        return [inject_by_overlap(r, f) for r, f in zip(reasonings, facts, strict=True)]


def _starts_with_name(s: str) -> bool:
    """True unless ``s`` opens with a plain word ("The capital…", "People…") that may be lowercased."""
    words = s.split()
    if not words or words[0] in ("People", "A", "An"):
        return False
    if words[0] == "The":
        return len(words) > 1 and words[1][:1].isupper()
    return words[0][:1].isupper()


def inject_by_overlap(reasoning: str, facts: Sequence[str]) -> str:
    """Insert each fact, verbatim, before the reasoning sentence that shares the most content words with it.

    Facts that share nothing go first, in order. This is the programmatic "fact injection aligned on the
    reasoning": it works for any reasoning and any labelled supporting facts (HotpotQA-style data).
    """
    sents = split_sentences(" ".join(reasoning.split()))
    before: dict[int, list[str]] = {}
    for fact in facts:
        fw = _content_words(fact)
        scores = [len(fw & _content_words(s)) for s in sents]
        best = max(range(len(sents)), key=lambda i: (scores[i], -i)) if sents else 0
        if not sents or scores[best] == 0:
            best = 0
        before.setdefault(best, []).append(fact.strip())
    out: list[str] = []
    for i, s in enumerate(sents or [""]):
        out.extend(before.get(i, []))
        if s:
            out.append(s)
    return " ".join(out)


# --------------------------------------------------------------------------------------------------
# chat models (hf, openai)
# --------------------------------------------------------------------------------------------------


class ChatBackend(Backend):
    """A backend that answers chat prompts; reason/inject are prompt builders around :meth:`chat`."""

    @abstractmethod
    def chat(self, conversations: Sequence[list[dict]], max_new_tokens: int) -> list[str | None]:
        """One reply per conversation (``None`` where it failed)."""

    def __init__(self, options: BackendOptions):
        self.options = options

    def reason(self, examples: Sequence[QAExample]) -> list[str | None]:
        return self.chat([reason_messages(ex) for ex in examples], self.options.max_new_tokens)

    def inject(self, examples: Sequence[QAExample], reasonings: Sequence[str],
               facts: Sequence[Sequence[str]]) -> list[str | None]:
        convs = [inject_messages(ex, r, f) for ex, r, f in zip(examples, reasonings, facts, strict=True)]
        return self.chat(convs, self.options.max_new_tokens)


class HFBackend(ChatBackend):
    """A local transformers model (any carelab model spec), loaded on first use, generating in batches."""

    def __init__(self, spec: str, options: BackendOptions, model=None, tokenizer=None):
        super().__init__(options)
        self.spec, self.name = spec, f"hf:{spec}"
        self._model, self._tok = model, tokenizer

    def _load(self):
        if self._model is None:
            from carelab.distributed import device
            from carelab.models import load_model

            self._model, self._tok = load_model(self.spec, device=device())  # this process's device when launched
        return self._model, self._tok

    def chat(self, conversations: Sequence[list[dict]], max_new_tokens: int) -> list[str | None]:
        from carelab.generation import GenerationSettings, generate_chat

        model, tok = self._load()
        settings = GenerationSettings(max_new_tokens=max_new_tokens, batch_size=self.options.batch_size)
        return list(generate_chat(model, tok, list(conversations), settings))


def api_error_message(exc: Exception) -> str:
    """The server's own reason from an OpenAI-shaped error body (``{"error": {"message", "code"}}``), else str(exc).

    Why: SDK versions differ in what ``exc.message`` holds; the body says what the server said.
    """
    body = getattr(exc, "body", None)
    if isinstance(body, dict) and isinstance(body.get("error"), dict):  # SDKs that keep the whole body
        body = body["error"]
    if isinstance(body, dict) and isinstance(body.get("message"), str) and body["message"]:
        code = body.get("code")
        return f"{body['message']}" + (f" [{code}]" if code else "")
    return str(getattr(exc, "message", None) or exc)


class OpenAIBackend(ChatBackend):
    """Any OpenAI-compatible chat API via the ``openai`` SDK; retries are the SDK's ``max_retries``.

    Why the SDK's: it backs off with jitter and waits as long as a server's ``Retry-After`` asks
    (e.g. ``carelab serve``'s 429 when its queue is full), which a hand-written loop would have to copy.
    """

    def __init__(self, model: str, options: BackendOptions):
        super().__init__(options)
        self.model, self.name = model, f"openai:{model}"
        base_url = options.base_url or os.environ.get("OPENAI_BASE_URL")
        key = options.api_key or os.environ.get("OPENAI_API_KEY")
        if not key:
            if not base_url:
                raise BackendError("openai backend: set OPENAI_API_KEY (or --api-key), or --base-url for a local "
                                   "server that needs no key")
            key = "EMPTY"
        try:
            import openai
        except ImportError:  # pragma: no cover - openai is a dependency
            raise BackendError("the openai backend needs `pip install openai`") from None
        self._openai = openai
        self.client = openai.OpenAI(base_url=base_url, api_key=key, timeout=options.timeout,
                                    max_retries=options.retries)

    def _one(self, messages: list[dict], max_new_tokens: int) -> str | None:
        """One reply; ``None`` once the SDK's retries of a transient failure are spent (retried on the next run)."""
        o = self._openai
        transient = (o.APIConnectionError, o.APITimeoutError, o.RateLimitError, o.InternalServerError)
        try:
            resp = self.client.chat.completions.create(model=self.model, messages=messages,
                                                       max_tokens=max_new_tokens, temperature=0.0)
            return resp.choices[0].message.content or ""
        except transient as exc:
            log.warning("%s: giving up after %d attempts: %s", self.name, self.options.retries + 1,
                        api_error_message(exc))
            return None
        except o.APIStatusError as exc:  # other 4xx: our request is wrong; the SDK did not retry it either
            raise BackendError(f"{self.name}: HTTP {exc.status_code}: {api_error_message(exc)}") from None

    def chat(self, conversations: Sequence[list[dict]], max_new_tokens: int) -> list[str | None]:
        workers = max(1, min(self.options.concurrency, len(conversations)))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(lambda m: self._one(m, max_new_tokens), conversations))


def make_backend(spec: str, options: BackendOptions | None = None) -> Backend:
    """Build a backend from its spec: ``rule``, ``hf:<model spec>`` or ``openai:<model>``."""
    options = options or BackendOptions()
    if spec == "rule":
        return RuleBackend()
    kind, _, rest = spec.partition(":")
    if kind == "hf" and rest:
        return HFBackend(rest, options)
    if kind == "openai" and rest:
        return OpenAIBackend(rest, options)
    raise BackendError(f"unknown backend {spec!r}; use rule, hf:<model spec> or openai:<model>")
