"""Score a GRPO group's completions with its prompt run through the model once, not once per completion.

Why: the G rollouts of a group share one prompt, and on CARE's prompts (~770 tokens of context against
~160 completion tokens) TRL's per-row forward/backward spends most of its FLOPs re-encoding that prompt G
times. Here the prompt (minus its last token) is encoded once with gradients into a KV cache, the cache is
expanded to the G rows, and the completions are scored against it. The log-probs, entropies and gradients
are those of the full pass (same positions, same mask, same fused LM head), up to float rounding; the
prompt's share of the gradient arrives through the cache.

Only plain full-attention caches on a single process without gradient checkpointing take this path
(:func:`can_share`); anything else falls back to TRL's own per-row pass.
"""

from __future__ import annotations

import torch


def identical_prompt_runs(input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int,
                          max_rows: int | None = None) -> list[tuple[int, int]]:
    """Half-open row ranges ``[start, end)`` of consecutive rows whose first ``prompt_len`` tokens and mask agree.

    GRPO's sampler lays a group's rollouts out next to each other, so each group becomes one run; ``max_rows``
    caps a run (the caller's memory chunk), a longer run is cut into several.
    """
    runs: list[tuple[int, int]] = []
    start = 0
    rows = input_ids.size(0)
    for i in range(1, rows + 1):
        same = (i < rows and torch.equal(input_ids[i, :prompt_len], input_ids[start, :prompt_len])
                and torch.equal(attention_mask[i, :prompt_len], attention_mask[start, :prompt_len])
                and (max_rows is None or i - start < max_rows))
        if not same:
            runs.append((start, i))
            start = i
    return runs


def can_share(model: torch.nn.Module, num_processes: int, gradient_checkpointing: bool, extra_inputs: dict) -> bool:
    """Whether the shared-prefix pass is exact here.

    Not under several processes (a wrapped model's forward must run through its wrapper), gradient
    checkpointing (recomputation would append to the cache twice), multimodal or MoE inputs, or models whose
    config declares non-global attention layers (sliding windows use a different cache).
    """
    if num_processes != 1 or gradient_checkpointing:
        return False
    if any(v is not None for v in extra_inputs.values()):
        return False
    config = getattr(model, "config", None)
    text_config = config.get_text_config() if config is not None else None
    layer_types = getattr(text_config, "layer_types", None) or []
    if any(t != "full_attention" for t in layer_types):
        return False
    return getattr(text_config, "sliding_window", None) in (None, 0) or not getattr(text_config, "use_sliding_window",
                                                                                   True)


def shared_prefix_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int,
                        compute_entropy: bool, max_rows: int | None = None, recompute_rows: int | None = None,
                        ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token log-probs (and entropies) of the last ``logits_to_keep`` tokens of each row, prompts shared.

    ``model`` is TRL's policy with its fused LM head (``fused_lm_head=True`` returns ``log_probs``/``entropy``
    for the labelled positions). Rows are ``[prompt | completion]``, left-padded prompts, as TRL builds them.
    With ``recompute_rows`` the completions are scored that many rows at a time under activation checkpointing
    (the prompt's keys/values are the checkpoint's inputs, so a recomputation fills a fresh cache): backward
    then holds one chunk's activations instead of the group's, for one more forward pass of the completions.
    """
    from transformers import DynamicCache

    prompt_len = input_ids.size(1) - logits_to_keep
    if prompt_len < 2:
        raise ValueError("shared-prefix scoring needs prompts of at least two tokens")
    completion = input_ids[:, prompt_len:]
    completion_labels = completion.masked_fill(attention_mask[:, prompt_len:] == 0, -100)
    logps, entropies = [], []
    for start, end in identical_prompt_runs(input_ids, attention_mask, prompt_len, max_rows):
        rows = end - start
        cache = DynamicCache(config=model.config)
        # the prompt without its last token, once: its keys/values (with their autograd history) fill the cache
        model(input_ids=input_ids[start:start + 1, :prompt_len - 1],
              attention_mask=attention_mask[start:start + 1, :prompt_len - 1],
              cache=cache, use_cache=True, logits_to_keep=1)
        prompt_kv = [t for layer in cache.layers for t in (layer.keys, layer.values)]
        # the last prompt token scores the first completion token; each completion token scores the next
        step_inputs = torch.cat([input_ids[start:end, prompt_len - 1:prompt_len], completion[start:end, :-1]], dim=1)
        # without gradients (old and reference log-probs) nothing is kept for backward: the whole run in one pass
        recompute = recompute_rows is not None and torch.is_grad_enabled()
        chunk = max(1, recompute_rows) if recompute else rows
        for lo in range(0, rows, chunk):
            hi = min(rows, lo + chunk)
            args = (model, step_inputs[lo:hi], attention_mask[start + lo:start + hi, :-1],
                    completion_labels[start + lo:start + hi], *prompt_kv)
            if not recompute:
                lp, ent = _score_completions(*args)
            else:
                lp, ent = torch.utils.checkpoint.checkpoint(_score_completions, *args, use_reentrant=False)
            logps.append(lp)
            if compute_entropy:
                entropies.append(ent)
    return torch.cat(logps, dim=0), (torch.cat(entropies, dim=0) if compute_entropy else None)


def _score_completions(model, step_inputs: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                       *prompt_kv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs and entropies of completion rows against one prompt's keys/values (one row, expanded here)."""
    from transformers import DynamicCache

    rows = step_inputs.size(0)
    cache = DynamicCache(config=model.config)
    for i, layer in enumerate(cache.layers):
        layer.lazy_initialization(prompt_kv[2 * i], prompt_kv[2 * i + 1])
        layer.keys = prompt_kv[2 * i].expand(rows, -1, -1, -1)
        layer.values = prompt_kv[2 * i + 1].expand(rows, -1, -1, -1)
    out = model(input_ids=step_inputs, attention_mask=attention_mask, cache=cache, shift_labels=labels,
                fused_lm_head=True)
    return out.log_probs, out.entropy


def repeated_layout(prompt_ids: list[list[int]]) -> int:
    """k when the prompts come as consecutive runs of k identical copies (GRPO's group layout), else 0."""
    if not prompt_ids:
        return 0
    k = 1
    while k < len(prompt_ids) and prompt_ids[k] == prompt_ids[0]:
        k += 1
    if k == 1 or len(prompt_ids) % k:
        return 0
    for start in range(0, len(prompt_ids), k):
        if any(prompt_ids[i] != prompt_ids[start] for i in range(start, start + k)):
            return 0
    return k


def shared_prefill_generate(model, generate, repeats: int, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                            **generate_kwargs):
    """``generate`` for rows laid out as runs of ``repeats`` identical prompts, each prompt prefilled once.

    The unique prompts (minus their last token) fill a KV cache at the positions generation itself would
    use (mask cumsum); the cache is repeated to every row and ``generate`` continues from it, so the
    prompt is not re-encoded once per rollout.
    """
    from transformers import DynamicCache

    unique_ids, unique_mask = input_ids[::repeats], attention_mask[::repeats]
    positions = (unique_mask.long().cumsum(-1) - 1).masked_fill(unique_mask == 0, 0)
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(input_ids=unique_ids[:, :-1], attention_mask=unique_mask[:, :-1], position_ids=positions[:, :-1],
              cache=cache, use_cache=True, logits_to_keep=1)
    cache.batch_repeat_interleave(repeats)
    return generate(input_ids=input_ids, attention_mask=attention_mask, cache=cache, **generate_kwargs)
