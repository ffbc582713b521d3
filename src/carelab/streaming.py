"""Token-by-token generation for one prompt: text deltas as they are decoded, stop strings, cancellation.

Why: a server must stream while it generates, stop at a ``stop`` string instead of running to the token
limit, stop when its client has gone, and report *why* it stopped and how many tokens it generated.
:func:`carelab.generation.generate_from_ids` is the batched path for evaluation; this is the
one-request, interruptible path (``carelab serve``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from carelab.generation import GenerationSettings

#: Why generation ended, in OpenAI's words plus ``cancelled`` (the caller asked it to stop).
FINISH_STOP, FINISH_LENGTH, FINISH_CANCELLED = "stop", "length", "cancelled"


@dataclass
class StreamResult:
    """The completion (cut before any stop string), why it ended and how many tokens were generated."""

    text: str
    finish_reason: str
    completion_tokens: int
    stop: str | None = None  # the stop string that ended it, if any


def eos_token_ids(model, tokenizer) -> set[int]:
    """Every token id that ends generation for this model (generation config and tokenizer)."""
    ids: set[int] = set()
    for source in (getattr(getattr(model, "generation_config", None), "eos_token_id", None),
                   getattr(tokenizer, "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, Sequence):
            ids.update(int(i) for i in source)
    return ids


def held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters of ``text`` must not be sent yet.

    A tail that could still become a stop string, an incomplete UTF-8 character (decoded as U+FFFD) or
    trailing whitespace (a tokenizer may clean it up once the next token arrives) waits for more tokens.

    >>> held_back("Hello wor", ["world"]), held_back("Hello ", []), held_back("Hi", ["\\n\\n"])
    (3, 1, 0)
    """
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                hold = max(hold, k)
                break
    end = len(text)
    while end > 0 and (text[end - 1] == "\ufffd" or text[end - 1].isspace()):
        end -= 1
    return max(hold, len(text) - end)


def first_stop(text: str, stops: Sequence[str], start: int = 0) -> tuple[int, str | None]:
    """The earliest position at or after ``start`` where a stop string begins, and which one (-1, None if none)."""
    best, which = -1, None
    for s in stops:
        pos = text.find(s, start)
        if pos >= 0 and (best < 0 or pos < best):
            best, which = pos, s
    return best, which


def _watcher_class():
    """Build the StoppingCriteria subclass lazily, so importing this module does not import transformers."""
    import torch
    from transformers import StoppingCriteria

    class Watcher(StoppingCriteria):
        """Called after every generated token: decode, look for stop strings, send the safe new text, obey cancel."""

        def __init__(self, tokenizer, prompt_len: int, stops: Sequence[str], cancel: threading.Event | None,
                     on_delta: Callable[[str], None] | None):
            self.tokenizer, self.prompt_len, self.stops = tokenizer, prompt_len, list(stops)
            self.cancel, self.on_delta = cancel, on_delta
            self.sent = 0  # characters already handed to on_delta (never contain a stop string)
            self.text: str | None = None  # set once a stop string is found: the text before it
            self.stop: str | None = None
            self.longest = max((len(s) for s in self.stops), default=0)

        def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
            done = self.observe(input_ids[0, self.prompt_len:].tolist(), final=False)
            if self.cancel is not None and self.cancel.is_set():
                done = True
            return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)

        def observe(self, generated: list[int], final: bool) -> bool:
            """Process the tokens so far; True once a stop string has been seen. ``final`` flushes the tail."""
            if self.text is not None:
                return True
            text = self.tokenizer.decode(generated, skip_special_tokens=True)
            pos, which = first_stop(text, self.stops, max(0, self.sent - self.longest))
            if which is not None:
                self.text, self.stop = text[:pos], which
                self._send(text[:pos])
                return True
            self._send(text if final else text[:len(text) - held_back(text, self.stops)])
            return False

        def _send(self, upto: str) -> None:
            if self.on_delta is not None and len(upto) > self.sent:
                self.on_delta(upto[self.sent:])
            self.sent = max(self.sent, len(upto))

    return Watcher


def _logit_bias_processor(bias: Mapping[int, float]):
    """A LogitsProcessor adding OpenAI-style ``logit_bias`` (token id → bias) to every step's scores."""
    import torch
    from transformers import LogitsProcessor

    class LogitBias(LogitsProcessor):
        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
            for tid, b in bias.items():
                scores[:, tid] += b
            return scores

    return LogitBias()


def stream_generate(model, tokenizer, prompt_ids: list[int], settings: GenerationSettings,
                    stops: Sequence[str] = (), cancel: threading.Event | None = None,
                    on_delta: Callable[[str], None] | None = None, seed: int | None = None,
                    logit_bias: Mapping[int, float] | None = None) -> StreamResult:
    """Generate one completion token by token; ``on_delta`` receives the text as it becomes final.

    Stops at the first of: an end-of-sequence token or a ``stops`` string (``stop``; the string and what
    follows are left out), ``settings.max_new_tokens`` (``length``), or ``cancel`` being set
    (``cancelled``). The deltas concatenate to ``StreamResult.text``. ``seed`` reseeds torch's global RNG
    before sampling (call from one thread at a time).
    """
    import torch
    from transformers import LogitsProcessorList, StoppingCriteriaList

    watcher = _watcher_class()(tokenizer, len(prompt_ids), [s for s in stops if s], cancel, on_delta)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    kwargs: dict = dict(max_new_tokens=settings.max_new_tokens, do_sample=settings.do_sample, pad_token_id=pad_id,
                        stopping_criteria=StoppingCriteriaList([watcher]))
    if settings.do_sample:
        kwargs.update(temperature=settings.temperature, top_p=settings.top_p)
        if seed is not None:
            torch.manual_seed(seed)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    if logit_bias:
        kwargs["logits_processor"] = LogitsProcessorList([_logit_bias_processor(logit_bias)])
    if cancel is not None and cancel.is_set():
        return StreamResult("", FINISH_CANCELLED, 0)
    device = next(model.parameters()).device
    input_ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    with torch.no_grad():
        out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **kwargs)
    generated = out[0, len(prompt_ids):].tolist()
    watcher.observe(generated, final=True)
    n = len(generated)
    if watcher.text is not None:
        return StreamResult(watcher.text, FINISH_STOP, n, watcher.stop)
    text = tokenizer.decode(generated, skip_special_tokens=True)
    if cancel is not None and cancel.is_set():
        finish = FINISH_CANCELLED
    elif generated and generated[-1] in eos_token_ids(model, tokenizer):
        finish = FINISH_STOP
    elif n >= settings.max_new_tokens:
        finish = FINISH_LENGTH
    else:
        finish = FINISH_STOP
    return StreamResult(text, finish, n)
