"""Training losses and likelihood evaluation for the two objectives, in one unit: nats per token.

AR: next-token cross-entropy (inputs ``x[:, :-1]``, targets ``x[:, 1:]``); evaluation is the exact NLL.
MDM (masked diffusion, MDLM/SMDM/LLaDA): per sequence t ~ U(0,1), p = (1−ε)t + ε; each token is replaced
by [MASK] with probability p; loss = Σ_masked CE(logits, x0) / p, divided by batch·length. Its
expectation is the continuous-time ELBO (an upper bound on the NLL), so MDM numbers are *bounds*, while
AR numbers are exact — state this whenever the two are compared. Evaluation averages the same
estimator over K stratified t values with a fixed seed, so repeated evaluations are comparable.
Ordered AR (``ar-k<k>``): an AR model trained on k fixed token orders (left to right plus k−1 random
permutations), told each next target's position — the test of "diverse orders are MDM's edge".
"""

from __future__ import annotations

import functools
import re

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


_ORDERED = re.compile(r"ar-k([1-9]\d*)")


def parse_objective(objective: str) -> tuple[str, int]:
    """``'ar'`` → ('ar', 1), ``'mdm'`` → ('mdm', 0), ``'ar-k4'`` → ('ordered', 4); anything else is an error."""
    if objective in ("ar", "mdm"):
        return objective, 1 if objective == "ar" else 0
    m = _ORDERED.fullmatch(objective)
    if m is None:
        raise ValueError(f"unknown objective {objective!r} (use 'ar', 'mdm' or 'ar-k<orders>', e.g. ar-k4)")
    return "ordered", int(m.group(1))


@functools.lru_cache(maxsize=32)
def token_orders(k: int, length: int, seed: int = 0) -> torch.Tensor:
    """k orders of ``length`` positions: left to right first, then k−1 fixed random permutations.

    Nested in k (the 4 orders of ``ar-k4`` are the first 4 of ``ar-k16``), fixed by ``seed``.
    """
    gen = torch.Generator().manual_seed(seed * 1_000_003 + length)
    orders = [torch.arange(length)] + [torch.randperm(length, generator=gen) for _ in range(k - 1)]
    return torch.stack(orders)


def ordered_ar_loss(model: GPT, x: torch.Tensor, orders: torch.Tensor,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """AR cross-entropy of rows ``x`` (B, T+1), each read in one of ``orders`` (k, T+1) drawn uniformly.

    In order σ the model sees x[σ(0..i)] at their text positions (RoPE) plus the position σ(i+1) it must
    predict, so each order is a proper left-to-right factorisation of the same row.
    """
    which = torch.randint(orders.size(0), (x.size(0),), generator=generator).to(x.device)
    perm = orders.to(x.device)[which]
    xp = x.gather(1, perm)
    logits = model(xp[:, :-1], positions=perm[:, :-1], target_positions=perm[:, 1:])
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), xp[:, 1:].reshape(-1))


def training_loss(
    objective: str, model: GPT, x: torch.Tensor, eps: float = DEFAULT_EPS, generator: torch.Generator | None = None,
    order_seed: int = 0,
) -> torch.Tensor:
    """Dispatch on ``objective`` ('ar' | 'mdm' | 'ar-k<k>'). Rows are (B, T+1): AR shifts, MDM uses the first T."""
    kind, k = parse_objective(objective)
    if kind == "ar":
        return ar_loss(model, x)
    if kind == "mdm":
        return mdm_loss(model, x[:, :-1], eps, generator=generator)
    return ordered_ar_loss(model, x, token_orders(k, x.size(1), order_seed), generator=generator)


@torch.no_grad()
def ar_nll_per_sequence(model: GPT, seqs: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Exact left-to-right AR NLL of each sequence (N, T+1), nats per predicted token: shape (N,)."""
    out = []
    for i in range(0, seqs.size(0), batch_size):
        x = seqs[i : i + batch_size]
        logits = model(x[:, :-1])
        ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), x[:, 1:].reshape(-1), reduction="none")
        out.append(ce.view(x.size(0), -1).double().mean(1).cpu())
    return torch.cat(out)


def ar_nll(model: GPT, seqs: torch.Tensor, batch_size: int = 64) -> float:
    """Exact AR negative log-likelihood, nats per predicted token, over sequences (N, T+1)."""
    return ar_nll_per_sequence(model, seqs, batch_size).mean().item()  # equal lengths: mean of means


@torch.no_grad()
def mdm_elbo_per_sequence(
    model: GPT, seqs: torch.Tensor, n_t: int = 32, eps: float = DEFAULT_EPS, seed: int = 0, batch_size: int = 64
) -> torch.Tensor:
    """Monte-Carlo ELBO bound on each sequence's NLL (nats/token, shape (N,)) with ``n_t`` stratified t.

    t_k = (k + u)/n_t with one offset u per sequence; masks and u come from a generator seeded with
    ``seed`` so two calls on the same model give the same number (and two models see the same masks).
    """
    L = model.config.block_size
    seqs = seqs[:, :L]
    gen = torch.Generator(device="cpu").manual_seed(seed)
    N = seqs.size(0)
    u = torch.rand(N, generator=gen)
    total = torch.zeros(N, dtype=torch.float64)
    mask_id = _core(model).mask_id
    for k in range(n_t):
        t_all = (k + u) / n_t
        rand_all = torch.rand(N, seqs.size(1), generator=gen)
        for i in range(0, N, batch_size):
            x = seqs[i : i + batch_size]
            p = ((1.0 - eps) * t_all[i : i + batch_size] + eps).to(x.device)
            mask = rand_all[i : i + batch_size].to(x.device) < p[:, None]
            logits = model(torch.where(mask, torch.full_like(x, mask_id), x))
            ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), x.reshape(-1),
                                 reduction="none").view_as(x)
            total[i : i + batch_size] += ((ce * mask).sum(1) / p).double().cpu() / x.size(1)
    return total / n_t


def mdm_elbo(
    model: GPT, seqs: torch.Tensor, n_t: int = 32, eps: float = DEFAULT_EPS, seed: int = 0, batch_size: int = 64
) -> float:
    """Monte-Carlo ELBO bound on the NLL (nats/token), the mean of :func:`mdm_elbo_per_sequence`."""
    return mdm_elbo_per_sequence(model, seqs, n_t, eps, seed, batch_size).mean().item()


def evaluate_per_sequence(objective: str, model: GPT, seqs: torch.Tensor, n_t: int = 32, seed: int = 0) -> torch.Tensor:
    """Per-sequence validation loss (N,): exact left-to-right NLL for AR and ordered AR, MC ELBO for MDM."""
    kind, _ = parse_objective(objective)
    was_training = model.training
    model.eval()
    try:
        if kind == "mdm":
            return mdm_elbo_per_sequence(model, seqs, n_t=n_t, seed=seed)
        return ar_nll_per_sequence(model, seqs)
    finally:
        model.train(was_training)


def evaluate(objective: str, model: GPT, seqs: torch.Tensor, n_t: int = 32, seed: int = 0) -> float:
    """Validation loss in nats/token: exact NLL for AR (ordered AR: in the left-to-right order), MC ELBO for MDM."""
    return evaluate_per_sequence(objective, model, seqs, n_t=n_t, seed=seed).mean().item()
