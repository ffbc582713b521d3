"""The CARE answer format: system prompt, chat messages, prompt fitting and the output parser.

This is the only module that knows the tag strings. Everything that scores or renders CARE output
goes through :func:`parse` (or the helpers below), so the format can never disagree with itself.
The official rules are regexes that backtrack quadratically on tag spam (see :mod:`carelab.care.official`);
here each rule is a few forward ``str.find`` scans with the same results, tested for equality against them.
"""

from __future__ import annotations

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


def _first_block(text: str, open_tag: str, close_tag: str, start: int = 0) -> tuple[int, int] | None:
    """``(body start, body end)`` of what ``open(.*?)close`` (DOTALL) would match first from ``start``, or None.

    The leftmost open tag either has a close tag after it or no later one does, so two finds decide it.
    """
    i = text.find(open_tag, start)
    if i < 0:
        return None
    j = text.find(close_tag, i + len(open_tag))
    return None if j < 0 else (i + len(open_tag), j)


def raw_quotes(text: str) -> list[str]:
    """Every ``<retrieval>…</retrieval>`` body as the official ``re.findall`` returns it, in linear time."""
    out, pos = [], 0
    while (block := _first_block(text, RETRIEVAL_OPEN, RETRIEVAL_CLOSE, pos)) is not None:
        out.append(text[block[0]:block[1]])
        pos = block[1] + len(RETRIEVAL_CLOSE)
    return out


def quotes(text: str) -> list[str]:
    """Every ``<retrieval>`` span in the whole text, whitespace collapsed, empty ones dropped (official)."""
    return [q for q in (collapse_ws(s) for s in raw_quotes(text)) if q]


def official_answer(text: str) -> str:
    """The official answer extraction: everything after the first ``Answer:``, stripped ('' if absent)."""
    i = text.find(ANSWER_MARKER)
    return text[i + len(ANSWER_MARKER):].strip() if i >= 0 else ""


def is_well_formed(text: str) -> bool:
    """Official format rule: full match of think…Answer:, and ≥ 1 quote inside the first think block.

    ``<think>.*</think>.*Answer:.*`` matches iff the text opens with ``<think>`` and an ``Answer:`` follows
    the first ``</think>``; that first block is also the one the official ``search`` takes.
    """
    text = text.strip()
    if not text.startswith(THINK_OPEN):
        return False
    think = _first_block(text, THINK_OPEN, THINK_CLOSE)
    if think is None or text.find(ANSWER_MARKER, think[1] + len(THINK_CLOSE)) < 0:
        return False
    return _first_block(text[think[0]:think[1]], RETRIEVAL_OPEN, RETRIEVAL_CLOSE) is not None


def parse(text: str, eos: tuple[str, ...] | list[str] | str | None = ()) -> CareOutput:
    """Parse a completion into reasoning, quotes and answer, after stripping stop strings.

    The answer is the text after the first ``Answer:`` that follows the first closed think block (or the
    first ``Answer:`` anywhere when there is none), up to any later ``Answer:``; an unclosed think block
    runs to the answer marker or the end. Never raises; linear time in the length of ``text``.

    >>> out = parse("<think>It says <retrieval>Paris is in France.</retrieval></think> Answer: France<|im_end|>")
    >>> out.answer, out.retrievals, out.well_formed
    ('France', ['Paris is in France.'], True)
    """
    text = strip_stop(text, eos)
    out = CareOutput(text=text, retrievals=quotes(text), well_formed=is_well_formed(text))
    think = _first_block(text, THINK_OPEN, THINK_CLOSE)
    if think is not None:
        out.think = text[think[0]:think[1]].strip()
        tail_start = think[1] + len(THINK_CLOSE)
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


#: Characters one token can cover, at most, in any tokenizer we meet (typical: 3-5). A context is first cut to
#: ``max_prompt_tokens`` times this many characters, so a 50 MB file is never tokenized whole.
MAX_CHARS_PER_TOKEN = 32


def cut_middle_chars(text: str, max_chars: int, marker: str = " … ") -> str:
    """Keep the first and last halves of ``text`` within about ``max_chars`` characters (cheap pre-cut)."""
    if len(text) <= max_chars:
        return text
    head = max_chars // 2
    return text[:head] + marker + text[len(text) - (max_chars - head):]


def fit_context(tokenizer, context: str, question: str, max_prompt_tokens: int,
                system_prompt: str | None = None, marker: str = " … ") -> tuple[str, bool]:
    """Middle-truncate ``context`` so the whole chat prompt fits ``max_prompt_tokens``; the question survives.

    The context is first cut by characters to ``max_prompt_tokens × MAX_CHARS_PER_TOKEN`` (a bound no
    tokenizer's tokens exceed in practice), so time and memory stay bounded however large the file.
    Returns ``(context, truncated)``. Raises ``ValueError`` when even an empty context does not fit.
    """
    precut = len(context) > max(max_prompt_tokens, 1) * MAX_CHARS_PER_TOKEN
    if precut:
        context = cut_middle_chars(context, max(max_prompt_tokens, 1) * MAX_CHARS_PER_TOKEN, marker)

    def prompt_len(ctx: str) -> int:
        msgs = build_messages(ctx, question, system_prompt)
        return len(tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True,
                                                 return_dict=False))

    total = prompt_len(context)
    if total <= max_prompt_tokens:
        return context, precut
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
    from carelab.runs import warn

    warn(f"context{(' of ' + where) if where else ''} truncated in the middle from {n_before} to "
         f"{n_after} characters so the question fits the model's window")
