"""Training losses and likelihood evaluation for the two objectives, in one unit: nats per token.

AR: next-token cross-entropy (inputs ``x[:, :-1]``, targets ``x[:, 1:]``); evaluation is the exact NLL.
MDM (masked diffusion, MDLM/SMDM/LLaDA): per sequence t ~ U(0,1), p = (1−ε)t + ε; each token is replaced
by [MASK] with probability p; loss = Σ_masked CE(logits, x0) / p, divided by batch·length. Its
expectation is the continuous-time ELBO (an upper bound on the NLL), so MDM numbers are *bounds*, while
AR numbers are exact — state this whenever the two are compared. Evaluation averages the same
estimator over K stratified t values with a fixed seed, so repeated evaluations are comparable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from carelab.diffusion.model import GPT

DEFAULT_EPS = 1e-3


def _core(model) -> GPT:
    """The GPT inside a DDP/FSDP wrapper (accelerate), so ``mask_id``/``config`` stay reachable."""
    return getattr(model, "module", model)


def ar_loss(model: GPT, x: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy (nats/token) of ``x`` (B, T+1): predicts x[:, 1:] from prefixes."""
    logits = model(x[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), x[:, 1:].reshape(-1))


def mask_tokens(
    x: torch.Tensor, mask_id: int, eps: float = DEFAULT_EPS, t: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward diffusion: returns (noisy input, boolean mask, p per sequence (B,)).

    ``t`` (B,) may be given (evaluation uses stratified values); otherwise t ~ U(0,1).
    """
    B, L = x.shape
    dev = generator.device if generator is not None else x.device
    if t is None:
        t = torch.rand(B, device=dev, generator=generator)
    p = ((1.0 - eps) * t.to(dev) + eps).to(x.device)
    mask = torch.rand(B, L, device=dev, generator=generator).to(x.device) < p[:, None]
    return torch.where(mask, torch.full_like(x, mask_id), x), mask, p


def mdm_loss_from_mask(model: GPT, x: torch.Tensor, mask: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """MDM loss for a given mask: Σ_masked CE(logits, x0)/p over (batch·length)."""
    noisy = torch.where(mask, torch.full_like(x, _core(model).mask_id), x)
    logits = model(noisy)
    ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), x.reshape(-1), reduction="none").view_as(x)
    return (ce * mask / p[:, None]).sum() / x.numel()


def mdm_loss(model: GPT, x: torch.Tensor, eps: float = DEFAULT_EPS, generator: torch.Generator | None = None) -> torch.Tensor:
    """One-sample MDM training loss (nats/token, an ELBO estimate) for clean tokens ``x`` (B, L)."""
    _, mask, p = mask_tokens(x, _core(model).mask_id, eps, generator=generator)
    return mdm_loss_from_mask(model, x, mask, p)


def training_loss(
    objective: str, model: GPT, x: torch.Tensor, eps: float = DEFAULT_EPS, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Dispatch on ``objective`` ('ar' | 'mdm'). Rows are (B, T+1): AR shifts, MDM uses the first T."""
    if objective == "ar":
        return ar_loss(model, x)
    if objective == "mdm":
        return mdm_loss(model, x[:, :-1], eps, generator=generator)
    raise ValueError(f"unknown objective {objective!r} (use 'ar' or 'mdm')")


@torch.no_grad()
def ar_nll(model: GPT, seqs: torch.Tensor, batch_size: int = 64) -> float:
    """Exact AR negative log-likelihood, nats per predicted token, over sequences (N, T+1)."""
    total, count = 0.0, 0
    for i in range(0, seqs.size(0), batch_size):
        x = seqs[i : i + batch_size]
        logits = model(x[:, :-1])
        total += F.cross_entropy(
            logits.reshape(-1, logits.size(-1)).float(), x[:, 1:].reshape(-1), reduction="sum"
        ).item()
        count += x[:, 1:].numel()
    return total / count


@torch.no_grad()
def mdm_elbo(
    model: GPT, seqs: torch.Tensor, n_t: int = 32, eps: float = DEFAULT_EPS, seed: int = 0, batch_size: int = 64
) -> float:
    """Monte-Carlo ELBO bound on the NLL (nats/token) with ``n_t`` stratified t per sequence.

    t_k = (k + u)/n_t with one offset u per sequence; masks and u come from a generator seeded with
    ``seed`` so two calls on the same model give the same number (and two models see the same masks).
    """
    L = model.config.block_size
    seqs = seqs[:, :L]
    gen = torch.Generator(device="cpu").manual_seed(seed)
    N = seqs.size(0)
    u = torch.rand(N, generator=gen)
    total = 0.0
    for k in range(n_t):
        t_all = (k + u) / n_t
        rand_all = torch.rand(N, seqs.size(1), generator=gen)
        for i in range(0, N, batch_size):
            x = seqs[i : i + batch_size]
            p = ((1.0 - eps) * t_all[i : i + batch_size] + eps).to(x.device)
            mask = rand_all[i : i + batch_size].to(x.device) < p[:, None]
            total += mdm_loss_from_mask(model, x, mask, p).item() * x.numel()
    return total / (n_t * seqs.numel())


def evaluate(objective: str, model: GPT, seqs: torch.Tensor, n_t: int = 32, seed: int = 0) -> float:
    """Validation loss in nats/token: exact NLL for AR, stratified MC ELBO for MDM."""
    was_training = model.training
    model.eval()
    try:
        if objective == "ar":
            return ar_nll(model, seqs)
        if objective == "mdm":
            return mdm_elbo(model, seqs, n_t=n_t, seed=seed)
        raise ValueError(f"unknown objective {objective!r} (use 'ar' or 'mdm')")
    finally:
        model.train(was_training)
