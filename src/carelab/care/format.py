"""The CARE answer format: system prompt, chat messages, prompt fitting and the output parser.

This is the only module that knows the tag strings. Everything that scores or renders CARE output
goes through :func:`parse` (or the helpers below), so the format can never disagree with itself.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
RETRIEVAL_OPEN, RETRIEVAL_CLOSE = "<retrieval>", "</retrieval>"
ANSWER_MARKER = "Answer:"

#: Stop strings that generation leaves glued to the text; stripped before anything is scored.
STOP_STRINGS = ("<|im_end|>", "<|eot_id|>", "<|endoftext|>", "<|end_of_text|>", "</s>", "<|end|>")

DEFAULT_SYSTEM_PROMPT = (
    "You answer a question using the context the user gives you. "
    "First think step by step inside <think> and </think>. "
    "While thinking, copy word for word every sentence of the context that your reasoning relies on, "
    "each one inside <retrieval> and </retrieval>; put such quotes only inside the thinking. "
    "Trust the context over what you remember. "
    "After </think>, give the final answer on one line that starts with 'Answer:', as short as possible."
)

_FORMAT_RE = re.compile(r"<think>.*</think>.*Answer:.*", re.DOTALL)
_THINK_RE = re.compile(r"<think>(.*?)</think>", re.DOTALL)
_RETRIEVAL_RE = re.compile(r"<retrieval>(.*?)</retrieval>", re.DOTALL)
_ANSWER_RE = re.compile(r"Answer:(.*)", re.DOTALL)


@dataclass
class CareOutput:
    """A parsed CARE completion. ``well_formed`` follows the official format rule exactly."""

    text: str
    think: str = ""
    retrievals: list[str] = field(default_factory=list)
    answer: str = ""
    well_formed: bool = False


def strip_stop(text: str, extra: tuple[str, ...] | list[str] | str | None = ()) -> str:
    """Remove end-of-sequence/stop strings (and the tokenizer's eos, passed as ``extra``) and outer space."""
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    extras = (extra,) if isinstance(extra, str) else tuple(extra or ())
    for s in STOP_STRINGS + extras:
        if s:
            text = text.replace(s, "")
    return text.strip()


def collapse_ws(text: str) -> str:
    """Collapse runs of whitespace to one space (how quotes are compared)."""
    return " ".join(text.split())


def quotes(text: str) -> list[str]:
    """Every ``<retrieval>`` span in the whole text, whitespace collapsed, empty ones dropped (official)."""
    return [q for q in (collapse_ws(s) for s in _RETRIEVAL_RE.findall(text)) if q]


def official_answer(text: str) -> str:
    """The official answer extraction: everything after the first ``Answer:``, stripped ('' if absent)."""
    m = _ANSWER_RE.search(text)
    return m.group(1).strip() if m else ""


def is_well_formed(text: str) -> bool:
    """Official format rule: full match of think…Answer:, and ≥ 1 quote inside the first think block."""
    text = text.strip()
    if not _FORMAT_RE.fullmatch(text):
        return False
    m = _THINK_RE.search(text)
    return bool(m and _RETRIEVAL_RE.search(m.group(1)))


def parse(text: str, eos: tuple[str, ...] | list[str] | str | None = ()) -> CareOutput:
    """Parse a completion into reasoning, quotes and answer, after stripping stop strings.

    The answer is the text after the first ``Answer:`` that follows the first closed think block (or the
    first ``Answer:`` anywhere when there is none), up to any later ``Answer:``; an unclosed think block
    runs to the answer marker or the end. Never raises.

    >>> out = parse("<think>It says <retrieval>Paris is in France.</retrieval></think> Answer: France<|im_end|>")
    >>> out.answer, out.retrievals, out.well_formed
    ('France', ['Paris is in France.'], True)
    """
    text = strip_stop(text, eos)
    out = CareOutput(text=text, retrievals=quotes(text), well_formed=is_well_formed(text))
    m = _THINK_RE.search(text)
    if m:
        out.think = m.group(1).strip()
        tail_start = m.end()
    else:
        start = text.find(THINK_OPEN)
        if start >= 0:
            body = text[start + len(THINK_OPEN):]
            cut = body.find(ANSWER_MARKER)
            out.think = (body if cut < 0 else body[:cut]).strip()
        tail_start = 0
    pos = text.find(ANSWER_MARKER, tail_start)
    if pos < 0:
        pos = text.find(ANSWER_MARKER)
    if pos >= 0:
        answer = text[pos + len(ANSWER_MARKER):]
        nxt = answer.find(ANSWER_MARKER)
        if nxt >= 0:
            answer = answer[:nxt]
        out.answer = answer.strip()
    return out


def render(think_parts: list[tuple[str, bool]], answer: str) -> str:
    """Build a CARE completion from reasoning pieces; ``(text, True)`` pieces become quotes.

    Used by the SFT data pipeline so training targets are written by the same module that parses them.
    """
    body = " ".join(f"{RETRIEVAL_OPEN}{t}{RETRIEVAL_CLOSE}" if is_quote else t for t, is_quote in think_parts)
    return f"{THINK_OPEN}\n{body.strip()}\n{THINK_CLOSE}\n{ANSWER_MARKER} {answer}"


def wrap_quote(text: str) -> str:
    """Wrap one quote in retrieval tags."""
    return f"{RETRIEVAL_OPEN}{text}{RETRIEVAL_CLOSE}"


def user_content(context: str, question: str) -> str:
    """The user turn: the context first, then the question (the question is never truncated)."""
    return f"Context:\n{context}\n\nQuestion: {question}"


def build_messages(context: str, question: str, system_prompt: str | None = None) -> list[dict]:
    """Chat messages for one (context, question) pair with the CARE system prompt."""
    return [
        {"role": "system", "content": system_prompt or DEFAULT_SYSTEM_PROMPT},
        {"role": "user", "content": user_content(context, question)},
    ]


def truncate_middle_tokens(ids: list[int], budget: int) -> list[int]:
    """Keep the first and last halves of ``ids`` within ``budget`` tokens (LongBench-style)."""
    if len(ids) <= budget:
        return ids
    if budget <= 0:
        return []
    head = budget // 2
    return ids[:head] + ids[len(ids) - (budget - head):]


def fit_context(tokenizer, context: str, question: str, max_prompt_tokens: int,
                system_prompt: str | None = None, marker: str = " … ") -> tuple[str, bool]:
    """Middle-truncate ``context`` so the whole chat prompt fits ``max_prompt_tokens``; the question survives.

    Returns ``(context, truncated)``. Raises ``ValueError`` when even an empty context does not fit.
    """
    def prompt_len(ctx: str) -> int:
        msgs = build_messages(ctx, question, system_prompt)
        return len(tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True,
                                                 return_dict=False))

    total = prompt_len(context)
    if total <= max_prompt_tokens:
        return context, False
    overhead = prompt_len("")
    budget = max_prompt_tokens - overhead - len(tokenizer.encode(marker, add_special_tokens=False)) - 2
    if budget <= 0:
        raise ValueError(
            f"the question and system prompt alone take {overhead} tokens, over the limit of "
            f"{max_prompt_tokens}; raise the limit or shorten the question"
        )
    ids = tokenizer.encode(context, add_special_tokens=False)
    head = budget // 2
    new = tokenizer.decode(ids[:head]) + marker + tokenizer.decode(ids[len(ids) - (budget - head):])
    # Re-tokenisation at the seams can add a token or two; shave until it fits.
    while prompt_len(new) > max_prompt_tokens and budget > 2:
        budget -= 2
        head = budget // 2
        new = tokenizer.decode(ids[:head]) + marker + tokenizer.decode(ids[len(ids) - (budget - head):])
    return new, True


def warn_truncated(n_before: int, n_after: int, where: str = "") -> None:
    """One warning for a middle-truncated context."""
    warnings.warn(f"context{(' of ' + where) if where else ''} truncated in the middle from {n_before} to "
                  f"{n_after} characters so the question fits the model's window", stacklevel=2)
