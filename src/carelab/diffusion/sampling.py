"""Samplers for the shared backbone: AR, MDLM ancestral unmasking, LLaDA low-confidence remasking.

All three take a prompt (a 1-D tensor of ids, may be empty) and return ``(batch, prompt + length)``
ids with no [MASK] left. Diffusion samplers only ever *reveal* tokens (revealed tokens are frozen),
so the number of network calls is ``steps`` — the knob that trades quality for speed.

* MDLM ancestral: going from time t to s < t, each still-masked token is revealed with probability
  (t − s)/t, its value drawn from the model's categorical (temperature-scaled); at s = 0 all are.
* LLaDA: the generation is split into blocks filled left to right (semi-autoregressive); inside a block
  each step commits the k most confident predictions (``remasking='low_confidence'``) or k random ones
  (``'random'``); with temperature > 0 predictions use Gumbel-max noise computed in float64 (low
  precision Gumbel noise measurably hurts quality, as the LLaDA authors note).
"""

from __future__ import annotations

import torch

from carelab.diffusion.model import GPT


def _prompt_batch(prompt: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor:
    if prompt is None:
        prompt = torch.empty(0, dtype=torch.long)
    return prompt.to(device).long().view(1, -1).expand(batch, -1)


def _filter_logits(logits: torch.Tensor, temperature: float, top_k: int | None) -> torch.Tensor:
    logits = logits.double()
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return logits / max(temperature, 1e-8)


@torch.no_grad()
def sample_ar(
    model: GPT, prompt: torch.Tensor | None, length: int, batch: int = 1, temperature: float = 1.0,
    top_k: int | None = None, generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Left-to-right sampling from a causal model (greedy when ``temperature == 0``)."""
    if not model.causal:
        raise ValueError("sample_ar needs a causal (AR) model")
    dev = next(model.parameters()).device
    x = _prompt_batch(prompt, batch, dev).clone()
    if x.size(1) == 0:
        raise ValueError("AR sampling needs a non-empty prompt (at least one token)")
    for _ in range(length):
        logits = model(x[:, -model.config.block_size :])[:, -1]
        if temperature == 0:
            nxt = logits.argmax(-1, keepdim=True)
        else:
            probs = torch.softmax(_filter_logits(logits, temperature, top_k), -1)
            nxt = torch.multinomial(probs.float().cpu(), 1, generator=generator).to(dev)
        x = torch.cat([x, nxt], dim=1)
    return x


def _check_diffusion(model: GPT, prompt_len: int, length: int) -> None:
    if model.causal:
        raise ValueError("diffusion sampling needs a bidirectional (MDM) model")
    if prompt_len + length > model.config.block_size:
        raise ValueError(f"prompt + length = {prompt_len + length} exceeds block_size {model.config.block_size}")


@torch.no_grad()
def sample_mdlm(
    model: GPT, prompt: torch.Tensor | None, length: int, steps: int = 64, batch: int = 1,
    temperature: float = 1.0, generator: torch.Generator | None = None,
) -> torch.Tensor:
    """MDLM ancestral sampling from t=1 (all masked) to t=0 in ``steps`` uniform steps."""
    dev = next(model.parameters()).device
    p = _prompt_batch(prompt, batch, dev)
    _check_diffusion(model, p.size(1), length)
    x = torch.cat([p, torch.full((batch, length), model.mask_id, device=dev, dtype=torch.long)], dim=1)
    for i in range(steps):
        t, s = 1.0 - i / steps, 1.0 - (i + 1) / steps
        masked = x == model.mask_id
        if not masked.any():
            break
        logits = model(x)
        if temperature == 0:
            cand = logits.argmax(-1)
        else:
            probs = torch.softmax(_filter_logits(logits, temperature, None), -1).float().cpu()
            cand = torch.multinomial(probs.view(-1, probs.size(-1)), 1, generator=generator).view(x.shape).to(dev)
        reveal_p = (t - s) / t if s > 0 else 1.0
        reveal = masked & (torch.rand(x.shape, generator=generator).to(dev) < reveal_p)
        x = torch.where(reveal, cand, x)
    return x


@torch.no_grad()
def sample_llada(
    model: GPT, prompt: torch.Tensor | None, length: int, steps: int = 64, block_length: int | None = None,
    batch: int = 1, temperature: float = 0.0, remasking: str = "low_confidence", generator: torch.Generator | None = None,
) -> torch.Tensor:
    """LLaDA sampling: per block, ``steps/num_blocks`` steps, each committing the k most confident tokens."""
    if remasking not in ("low_confidence", "random"):
        raise ValueError(f"remasking must be 'low_confidence' or 'random', got {remasking!r}")
    dev = next(model.parameters()).device
    p = _prompt_batch(prompt, batch, dev)
    P = p.size(1)
    _check_diffusion(model, P, length)
    block_length = block_length or length
    if length % block_length:
        raise ValueError(f"length {length} must be a multiple of block_length {block_length}")
    n_blocks = length // block_length
    if steps % n_blocks:
        raise ValueError(f"steps {steps} must be a multiple of the number of blocks {n_blocks}")
    per_block = steps // n_blocks
    x = torch.cat([p, torch.full((batch, length), model.mask_id, device=dev, dtype=torch.long)], dim=1)
    for b in range(n_blocks):
        lo, hi = P + b * block_length, P + (b + 1) * block_length
        n_masked = (x[:, lo:hi] == model.mask_id).sum(1)  # (batch,)
        # spread the block's masked tokens as evenly as possible over its steps
        base, rem = n_masked // per_block, n_masked % per_block
        for j in range(per_block):
            k = base + (j < rem).long()
            masked = x == model.mask_id
            logits = model(x).double()
            if temperature > 0:
                u = torch.rand(logits.shape, generator=generator, dtype=torch.float64).to(dev).clamp_min(1e-300)
                gumbel = -torch.log(-torch.log(u).clamp_min(1e-300))
                x0 = (logits / temperature + gumbel).argmax(-1)
            else:
                x0 = logits.argmax(-1)
            if remasking == "low_confidence":
                conf = torch.softmax(logits, -1).gather(-1, x0[..., None]).squeeze(-1)
            else:
                conf = torch.rand(x.shape, generator=generator, dtype=torch.float64).to(dev)
            conf[:, hi:] = float("-inf")
            conf = torch.where(masked, conf, torch.full_like(conf, float("-inf")))
            commit = torch.zeros_like(masked)
            for r in range(batch):
                if k[r] > 0:
                    commit[r, torch.topk(conf[r], int(k[r])).indices] = True
            x = torch.where(commit, x0, x)
    return x
