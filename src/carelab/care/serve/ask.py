"""Answer one question over a document in CARE format and check each quote against the document."""

from __future__ import annotations

from dataclasses import dataclass, field

from carelab.care import format as care_format
from carelab.care import rewards
from carelab.care.quotes import quote_match
from carelab.generation import GenerationSettings, chat_prompt_ids, generate_from_ids


@dataclass
class Quote:
    """One quoted span and whether it really occurs in the context."""

    text: str
    match: str  # exact | fuzzy | none


@dataclass
class AskResult:
    """The raw completion, its parse, the checked quotes and the reward breakdown."""

    question: str
    raw: str
    think: str
    answer: str
    well_formed: bool
    quotes: list[Quote] = field(default_factory=list)
    rewards: dict[str, float] = field(default_factory=dict)
    truncated: bool = False


def prompt_for(tokenizer, context: str, question: str, max_prompt_tokens: int,
               system_prompt: str | None = None) -> tuple[list[int], bool]:
    """Token ids of the CARE chat prompt, the context middle-truncated to fit (the question always survives)."""
    fitted, truncated = care_format.fit_context(tokenizer, context, question, max_prompt_tokens, system_prompt)
    ids = chat_prompt_ids(tokenizer, care_format.build_messages(fitted, question, system_prompt))
    return ids, truncated


def check(raw: str, question: str, context: str, gold: str | None = None, eos: str | None = None,
          truncated: bool = False) -> AskResult:
    """Parse a completion and score it: quote labels, format and retrieval reward, accuracy if gold is known."""
    out = care_format.parse(raw, eos=eos or ())
    quotes = [Quote(q, quote_match(q, context)) for q in out.retrievals]
    scores = {"format": rewards.format_score(out.text), "retrieval": rewards.retrieval_score(out.text, context)}
    if gold is not None:
        scores = rewards.care_reward_breakdown(out.text, gold, context)
    return AskResult(question=question, raw=raw, think=out.think, answer=out.answer, well_formed=out.well_formed,
                     quotes=quotes, rewards=scores, truncated=truncated)


def ask_many(model, tokenizer, items: list[tuple[str, str, str | None]], max_new_tokens: int = 256,
             system_prompt: str | None = None, batch_size: int = 8, progress=None) -> list[AskResult]:
    """Answer (context, question, gold-or-None) triples in batches, greedy."""
    from carelab.models import context_window

    window = context_window(model, tokenizer)
    prompts, flags = [], []
    for context, question, _ in items:
        ids, truncated = prompt_for(tokenizer, context, question, window - max_new_tokens, system_prompt)
        prompts.append(ids)
        flags.append(truncated)
    settings = GenerationSettings(max_new_tokens=max_new_tokens, batch_size=batch_size)
    raws = generate_from_ids(model, tokenizer, prompts, settings, progress=progress)
    return [check(raw, q, c, gold, tokenizer.eos_token, trunc)
            for raw, (c, q, gold), trunc in zip(raws, items, flags, strict=True)]
