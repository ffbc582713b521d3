"""Batched chat generation with a local transformers model, shared by ask, eval, backends and serve.

Left padding and one call per batch: on CPU this is the difference between minutes and hours.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass
class GenerationSettings:
    """Decoding settings; greedy by default (the evaluation protocol)."""

    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    batch_size: int = 8
    seed: int = 0


def chat_prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of a chat prompt with the generation prompt appended."""
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                              return_dict=False))


def generate_from_ids(model, tokenizer, prompts: Sequence[list[int]], settings: GenerationSettings,
                      logits_processor=None, progress: Callable[[int], None] | None = None) -> list[str]:
    """Generate one completion per prompt (token ids), batched with left padding; returns decoded text.

    Special tokens are kept out of the text; the caller strips nothing else.
    """
    import torch

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    results: list[str] = [""] * len(prompts)
    # Sort by length so each batch pads little; restore the order at the end.
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    device = next(model.parameters()).device
    if settings.do_sample:
        torch.manual_seed(settings.seed)
    for start in range(0, len(order), settings.batch_size):
        idx = order[start:start + settings.batch_size]
        width = max(len(prompts[i]) for i in idx)
        input_ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids = prompts[i]
            input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            attention[row, width - len(ids):] = 1
        kwargs = dict(max_new_tokens=settings.max_new_tokens, do_sample=settings.do_sample, pad_token_id=pad_id)
        if settings.do_sample:
            kwargs.update(temperature=settings.temperature, top_p=settings.top_p)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if logits_processor is not None:
            kwargs["logits_processor"] = logits_processor
        with torch.no_grad():
            out = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device), **kwargs)
        for row, i in enumerate(idx):
            results[i] = tokenizer.decode(out[row, width:], skip_special_tokens=True)
        if progress is not None:
            progress(len(idx))
    return results


def generate_chat(model, tokenizer, conversations: Sequence[list[dict]], settings: GenerationSettings | None = None,
                  progress: Callable[[int], None] | None = None) -> list[str]:
    """Generate a reply for each chat conversation (list of role/content messages)."""
    settings = settings or GenerationSettings()
    prompts = [chat_prompt_ids(tokenizer, msgs) for msgs in conversations]
    return generate_from_ids(model, tokenizer, prompts, settings, progress=progress)
