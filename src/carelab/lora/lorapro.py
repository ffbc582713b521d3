"""LoRA-Pro: adjust the gradients of A and B so a LoRA step tracks the full fine-tuning step.

Why this module exists: the public LoRA-Pro code only works inside a patched DeepSpeed optimizer (the
single-GPU path silently runs plain LoRA), hard-codes the LoRA scale, builds m×m projectors and uses
``eig`` on non-symmetric products. Here the maths is one small, batched, dtype-safe function
(:func:`adjust_gradients`) and the optimizer (:class:`LoRAProAdamW`) is an ordinary
``torch.optim.AdamW`` subclass, so it drops into ``transformers.Trainer(optimizers=(opt, None))``, TRL
trainers and plain loops, and its checkpoints are ordinary optimizer state dicts.

Maths (PEFT layout ``W = W0 + s·B·A``, ``B ∈ R^{m×r}``, ``A ∈ R^{r×n}``), with raw LoRA gradients
``g_A = s·Bᵀg`` and ``g_B = s·g·Aᵀ`` of the full-weight gradient ``g``:

* equivalent gradient of a LoRA step: ``g̃ = s·(B·g_A + g_B·A)``;
* the (g_A, g_B) that make ``g̃`` closest to ``g`` in Frobenius norm::

      g_A' = (1/s²)(BᵀB)⁻¹ g_A + X·A
      g_B' = (1/s²)[I − B(BᵀB)⁻¹Bᵀ] g_B (AAᵀ)⁻¹ − B·X

  for any r×r ``X`` (X cancels in ``g̃``, which becomes the orthogonal projection of ``g`` onto
  ``{B·Y + Z·A}``); the X that keeps (g_A', g_B') closest to the raw gradients solves the Sylvester
  equation ``BᵀB·X + X·AAᵀ = −(1/s²)(BᵀB)⁻¹ g_A Aᵀ``.

Both r×r Gram matrices are symmetric PSD: one ``eigh`` of AAᵀ splits the Sylvester equation into r
shifted SPD systems, solved with BᵀB's own inverse by one batched Cholesky (damping relative to the
trace, so B = 0 at initialisation stays finite). Nothing m×m or n×n is formed: ``P_B·M`` is computed
as ``B·((BᵀB)⁻¹(BᵀM))``. The optimizer solves the r×r algebra of all layers of a model in one batch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.optim.optimizer import _get_scalar_dtype
from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

log = logging.getLogger(__name__)

MODES = ("efficient", "full")


# --------------------------------------------------------------------------------------------------
# Closed form
# --------------------------------------------------------------------------------------------------


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (bf16/fp16 parameters are solved in float32)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _default_damping(dtype: torch.dtype) -> float:
    return 1e-12 if dtype == torch.float64 else 1e-6


def _psd_eigh(gram: torch.Tensor, damping: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigen-decompose a batch of symmetric PSD matrices; return (damped eigenvalues, eigenvectors).

    ``eigh`` reads one triangle only, so Gram matrices need no explicit symmetrisation. The damping is
    ``damping · trace/r`` plus a dtype floor, so a zero matrix (B = 0) gives a huge but finite inverse
    that multiplies a zero right-hand side.
    """
    evals, evecs = torch.linalg.eigh(gram)
    evals = evals.clamp_min(0)
    floor = _FLOOR[gram.dtype]
    shift = evals.sum(-1, keepdim=True) * (damping / gram.shape[-1]) + floor
    return evals + shift, evecs


_FLOOR = {torch.float32: torch.finfo(torch.float32).tiny ** 0.5, torch.float64: torch.finfo(torch.float64).tiny ** 0.5}


def _inverse_from_eigh(evals: torch.Tensor, evecs: torch.Tensor) -> torch.Tensor:
    return (evecs / evals.unsqueeze(-2)) @ evecs.mT


def solve_sylvester_psd(p: torch.Tensor, q: torch.Tensor, c: torch.Tensor, damping: float = 0.0) -> torch.Tensor:
    """Solve ``P·X + X·Q = C`` for symmetric PSD ``P`` (r×r) and ``Q`` (k×k), batched over leading dims.

    With ``P = UΛUᵀ`` and ``Q = VMVᵀ`` the solution is ``X = U [(UᵀCV) / (λ_i + μ_j)] Vᵀ``; ``damping``
    (relative to each trace) keeps the denominators positive when both matrices are singular.

    >>> import torch
    >>> p = torch.eye(2, dtype=torch.float64) * 2; q = torch.eye(2, dtype=torch.float64)
    >>> solve_sylvester_psd(p, q, torch.ones(2, 2, dtype=torch.float64))
    tensor([[0.3333, 0.3333],
            [0.3333, 0.3333]], dtype=torch.float64)
    """
    lp, up = _psd_eigh(p, damping)
    lq, vq = _psd_eigh(q, damping)
    return _sylvester_from_eigh(lp, up, lq, vq, c)


def _sylvester_from_eigh(lp, up, lq, vq, c):
    y = (up.mT @ c @ vq) / (lp.unsqueeze(-1) + lq.unsqueeze(-2))
    return up @ y @ vq.mT


def _as_scale(scaling: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if not torch.is_tensor(scaling):
        if scaling == 0:
            raise ValueError("LoRA scaling s is 0; the LoRA update is identically zero and cannot be adjusted")
        return torch.tensor(float(scaling), dtype=like.dtype, device=like.device)
    s = scaling.to(dtype=like.dtype, device=like.device)
    while s.dim() < like.dim():
        s = s.unsqueeze(-1)
    return s


def adjust_gradients(
    A: torch.Tensor,
    B: torch.Tensor,
    grad_A: torch.Tensor,
    grad_B: torch.Tensor,
    scaling: float | torch.Tensor,
    *,
    x: torch.Tensor | None = None,
    damping: float | None = None,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """LoRA-Pro closed form for one adapted layer (or a batch of same-shape layers on leading dims).

    Args:
        A: ``(…, r, n)`` lora_A weight.  B: ``(…, m, r)`` lora_B weight.
        grad_A, grad_B: the raw LoRA gradients of A and B (same shapes).
        scaling: the layer's ``s`` (``module.scaling[adapter]``): a float or a tensor of the batch shape.
        x: the free r×r matrix; ``None`` uses the Sylvester-optimal X (closest to the raw gradients).
        damping: eigenvalue damping relative to each Gram matrix's mean eigenvalue (default 1e-6 in
            float32, 1e-12 in float64).
        out: optional ``(new_grad_A, new_grad_B)`` buffers of the compute dtype (the optimizer reuses them).

    Returns:
        ``(new_grad_A, new_grad_B)`` in the dtype of ``grad_A``/``grad_B``; computed in float32 (float64
        if any input is float64) whatever the parameter dtype, the r×r algebra in float64. Finite at B = 0.

    The m×n-sized work is four Gram-type products and four update products; the r×r algebra is batched:
    one ``eigh`` of AAᵀ (whose eigenvectors also diagonalise the Sylvester equation column by column)
    and one Cholesky of BᵀB with the r shifted systems (BᵀB + μ_j I)·y_j = c_j, inverted by one batched
    triangular solve: much cheaper on CPU than the per-matrix ``eigh`` LAPACK calls of
    :func:`_adjust_gradients_reference`.
    """
    out_dtype_a, out_dtype_b = grad_A.dtype, grad_B.dtype
    dtype = _compute_dtype(A, B, grad_A, grad_B)
    damp = _default_damping(dtype) if damping is None else damping
    a, b, gA, gB = (t.detach().to(dtype) for t in (A, B, grad_A, grad_B))
    s = _as_scale(scaling, a)
    factors = _pro_factors(*_gram_products(a, b, gA, gB), s, damp, _FLOOR[dtype], x)
    if factors is None:
        return _adjust_gradients_reference(A, B, grad_A, grad_B, scaling, x=x, damping=damping)
    new_a, new_b = _apply_factors(a, b, gA, gB, factors, out)
    return new_a.to(out_dtype_a), new_b.to(out_dtype_b)


def _gram_products(a, b, grad_a, grad_b) -> tuple[torch.Tensor, ...]:
    """The four r×r products the closed form needs from the m×r / r×n factors: BᵀB, AAᵀ, g_A·Aᵀ, Bᵀ·g_B."""
    return b.mT @ b, a @ a.mT, grad_a @ a.mT, b.mT @ grad_b


def _apply_factors(a, b, grad_a, grad_b, factors, out=None, scratch=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``g_A' = left_a·g_A + X·A`` and ``g_B' = g_B·right_b − B·mix_b`` in the dtype of ``a``.

    For stacks of layers (3-D) the B side adds two products instead of accumulating into one: on CPU an
    accumulating batched product with only r output columns is slower than a second product plus an add.
    ``scratch`` (shaped like ``b``) may hold that second product; without it one is allocated.
    """
    # g_A' = [(1/s²)(BᵀB)⁻¹] g_A + X·A ;  g_B' = g_B [(1/s²)(AAᵀ)⁻¹] − B·[(1/s²)(BᵀB)⁻¹(Bᵀg_B)(AAᵀ)⁻¹ + X]
    left_a, x, right_b, mix_b = (f.to(a.dtype) for f in factors)
    out_a, out_b = (None, None) if out is None else out
    new_a = torch.matmul(left_a, grad_a, out=out_a)
    new_b = torch.matmul(grad_b, right_b, out=out_b)
    if a.dim() == 3:
        return new_a.baddbmm_(x, a), new_b.sub_(torch.bmm(b, mix_b, out=scratch))
    if a.dim() == 2:
        return new_a.addmm_(x, a), new_b.addmm_(b, mix_b, alpha=-1)
    return new_a.add_(x @ a), new_b.sub_(b @ mix_b)


def _adjust_stacks(stacks: list[tuple[torch.Tensor, ...]], damping: float | None,
                   outs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None]) -> list[tuple[torch.Tensor, ...]]:
    """:func:`adjust_gradients` for several stacks of equal-shape layers (``(A, B, g_A, g_B, s)`` each, all of
    one rank and compute dtype) with the r×r algebra of all of them in one batch.

    The r×r work is a fixed number of small ops and LAPACK calls per batch, so solving every layer of a
    model together instead of per shape group divides that overhead. ``outs`` holds optional
    ``(new_A, new_B, scratch)`` buffers per stack.
    """
    dtype = _compute_dtype(*stacks[0][:4])
    damp = _default_damping(dtype) if damping is None else damping
    grams = [_gram_products(*st[:4]) for st in stacks]
    scales = torch.cat([st[4].to(dtype).reshape(-1) for st in stacks])[:, None, None]
    factors = _pro_factors(*(torch.cat(parts) for parts in zip(*grams, strict=True)), scales, damp, _FLOOR[dtype])
    if factors is None:
        return [_adjust_gradients_reference(*st, damping=damping) for st in stacks]
    sizes = [st[0].shape[0] for st in stacks]
    per_stack = zip(*(f.split(sizes) for f in factors), strict=True)
    return [_apply_factors(*st[:4], parts, None if o is None else o[:2], None if o is None else o[2])
            for st, parts, o in zip(stacks, per_stack, outs, strict=True)]


def _pro_factors(btb, aat, ga_at, bt_gb, s, damping: float, floor: float, x=None):
    """The r×r matrices of the closed form, in float64: ``(left_a, X, right_b, mix_b)``, or None if not PD.

    Damping as :func:`_psd_eigh`: each Gram matrix is shifted by ``damping · trace/r + floor`` (the floor of
    the *input* dtype, so B = 0 behaves as in the reference). With AAᵀ = V·diag(μ)·Vᵀ the Sylvester
    equation P·X + X·Q = C becomes r independent systems (P + μ_j I)·y_j = (C·V)_j, X = Y·Vᵀ.
    """
    f64 = torch.float64
    P, Q, CA, CB = (t.to(f64) for t in (btb, aat, ga_at, bt_gb))
    r = P.shape[-1]
    eye = torch.eye(r, dtype=f64, device=P.device)
    mu, V = torch.linalg.eigh(Q)
    mu = mu.clamp_min(0)
    mu = mu + (mu.sum(-1, keepdim=True) * (damping / r) + floor)
    inv_q = (V / mu.unsqueeze(-2)) @ V.mT
    trace_p = P.diagonal(dim1=-2, dim2=-1).sum(-1).clamp_min(0)
    p_damped = P + (trace_p * (damping / r) + floor)[..., None, None] * eye
    # BᵀB and, for the Sylvester X, the r shifted BᵀB + μ_j I: one batched Cholesky, and their inverses by
    # one batched triangular solve (on 8×8 batches LAPACK's per-matrix potri/potrs cost more than both)
    systems = p_damped.unsqueeze(-3)
    if x is None:
        systems = torch.cat([systems, systems + mu[..., :, None, None] * eye], dim=-3)
    chol, info = torch.linalg.cholesky_ex(systems)
    if bool(info.any()):
        return None
    tri_inv = torch.linalg.solve_triangular(chol, eye.expand_as(chol), upper=False)
    inverses = tri_inv.mT @ tri_inv
    inv_s2 = 1.0 / (s.to(f64) * s.to(f64)) if torch.is_tensor(s) else 1.0 / (s * s)
    left_a = inv_s2 * inverses[..., 0, :, :]
    right_b = inv_s2 * inv_q
    if x is None:
        cv = -(left_a @ CA) @ V  # C·V with C = −(1/s²)(BᵀB)⁻¹ g_A Aᵀ
        y = (inverses[..., 1:, :, :] @ cv.mT.unsqueeze(-1)).squeeze(-1).mT  # column j solves system j
        x = y @ V.mT
    else:
        x = x.to(f64)
    mix_b = left_a @ CB @ inv_q + x
    return left_a, x, right_b, mix_b


def _adjust_gradients_reference(
    A: torch.Tensor,
    B: torch.Tensor,
    grad_A: torch.Tensor,
    grad_B: torch.Tensor,
    scaling: float | torch.Tensor,
    *,
    x: torch.Tensor | None = None,
    damping: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The original per-layer closed form (two ``eigh`` per layer): the reference the fast path is tested against.

    Also the fallback of :func:`adjust_gradients` when a damped Gram matrix is not numerically positive
    definite (Cholesky fails), which the eigenvalue clamp here tolerates.

    Args:
        A: ``(…, r, n)`` lora_A weight.  B: ``(…, m, r)`` lora_B weight.
        grad_A, grad_B: the raw LoRA gradients of A and B (same shapes).
        scaling: the layer's ``s`` (``module.scaling[adapter]``): a float or a tensor of the batch shape.
        x: the free r×r matrix; ``None`` uses the Sylvester-optimal X (closest to the raw gradients).
        damping: eigenvalue damping relative to each Gram matrix's mean eigenvalue (default 1e-6 in
            float32, 1e-12 in float64).

    Returns:
        ``(new_grad_A, new_grad_B)`` in the dtype of ``grad_A``/``grad_B``; computed in float32 (float64
        if any input is float64) whatever the parameter dtype. Finite at ``B = 0``.
    """
    out_dtype_a, out_dtype_b = grad_A.dtype, grad_B.dtype
    dtype = _compute_dtype(A, B, grad_A, grad_B)
    damp = _default_damping(dtype) if damping is None else damping
    A, B, gA, gB = (t.detach().to(dtype) for t in (A, B, grad_A, grad_B))
    s = _as_scale(scaling, A)
    inv_s2 = 1.0 / (s * s)

    lb, ub = _psd_eigh(B.mT @ B, damp)  # BᵀB, r×r
    la, va = _psd_eigh(A @ A.mT, damp)  # AAᵀ, r×r
    inv_btb = _inverse_from_eigh(lb, ub)
    inv_aat = _inverse_from_eigh(la, va)

    # Everything is regrouped so that only r×r matrices are formed besides the two outputs:
    #   g_A' = [(1/s²)(BᵀB)⁻¹] g_A + X·A
    #   g_B' = g_B [(1/s²)(AAᵀ)⁻¹] − B·[(1/s²)(BᵀB)⁻¹(Bᵀg_B)(AAᵀ)⁻¹ + X]
    # (the second is (1/s²)(I − P_B) g_B (AAᵀ)⁻¹ − B·X without the m×m projector); one baddbmm each.
    left_a = inv_s2 * inv_btb
    right_b = inv_s2 * inv_aat
    if x is None:
        rhs = -(left_a @ (gA @ A.mT))  # −(1/s²)(BᵀB)⁻¹ g_A Aᵀ
        x = _sylvester_from_eigh(lb, ub, la, va, rhs)
    else:
        x = x.to(dtype)
    mix_b = left_a @ (B.mT @ gB) @ inv_aat + x
    if A.dim() == 2:
        new_a = torch.addmm(left_a @ gA, x, A)
        new_b = torch.addmm(gB @ right_b, B, mix_b, alpha=-1)
    else:
        new_a = torch.baddbmm(left_a @ gA, x, A) if A.dim() == 3 else left_a @ gA + x @ A
        new_b = torch.baddbmm(gB @ right_b, B, mix_b, alpha=-1) if A.dim() == 3 else gB @ right_b - B @ mix_b
    return new_a.to(out_dtype_a), new_b.to(out_dtype_b)


def adjust_gradient_b_only(A: torch.Tensor, grad_B: torch.Tensor, scaling, *, damping: float | None = None):
    """Best g_B when A is frozen (LoRA-FA): ``(1/s²)·g_B·(AAᵀ)⁻¹`` makes ``s·g_B·A`` = g projected on rows of A."""
    dtype = _compute_dtype(A, grad_B)
    damp = _default_damping(dtype) if damping is None else damping
    A32, gB = A.detach().to(dtype), grad_B.detach().to(dtype)
    s = _as_scale(scaling, A32)
    la, va = _psd_eigh(A32 @ A32.mT, damp)
    return ((gB @ _inverse_from_eigh(la, va)) / (s * s)).to(grad_B.dtype)


def adjust_gradient_a_only(B: torch.Tensor, grad_A: torch.Tensor, scaling, *, damping: float | None = None):
    """Best g_A when B is frozen: ``(1/s²)(BᵀB)⁻¹ g_A``."""
    dtype = _compute_dtype(B, grad_A)
    damp = _default_damping(dtype) if damping is None else damping
    B32, gA = B.detach().to(dtype), grad_A.detach().to(dtype)
    s = _as_scale(scaling, B32)
    lb, ub = _psd_eigh(B32.mT @ B32, damp)
    return ((_inverse_from_eigh(lb, ub) @ gA) / (s * s)).to(grad_A.dtype)


def equivalent_gradient(A, B, grad_A, grad_B, scaling) -> torch.Tensor:
    """The full-weight change direction of a LoRA step: ``g̃ = s·(B·g_A + g_B·A)`` (m×n, for analysis)."""
    dtype = _compute_dtype(A, B, grad_A, grad_B)
    A, B, gA, gB = (t.detach().to(dtype) for t in (A, B, grad_A, grad_B))
    return _as_scale(scaling, A) * (B @ gA + gB @ A)


# --------------------------------------------------------------------------------------------------
# Finding the PEFT pairs
# --------------------------------------------------------------------------------------------------


@dataclass
class LoRAPair:
    """One adapted linear layer of one adapter: its module (scaling is read from it at every step)."""

    name: str
    module: nn.Module
    adapter: str
    A: nn.Parameter
    B: nn.Parameter

    @property
    def scaling(self) -> float:
        return float(self.module.scaling[self.adapter])


def _is_sharded(p: torch.Tensor) -> bool:
    return type(p).__name__ == "DTensor" or hasattr(p, "ds_id") or p.numel() == 0


def find_lora_pairs(model: nn.Module) -> list[LoRAPair]:
    """Every (lora_A, lora_B) weight pair of PEFT LoRA linear layers, per adapter name.

    Raises ``ValueError`` where LoRA-Pro cannot be right: DoRA layers (W is not W0 + sBA), A and B on
    different devices, sharded/flattened parameters (ZeRO-3, FSDP, DTensor) or inconsistent ranks.
    """
    pairs: list[LoRAPair] = []
    for name, module in model.named_modules():
        lora_a, lora_b = getattr(module, "lora_A", None), getattr(module, "lora_B", None)
        scaling = getattr(module, "scaling", None)
        if not isinstance(lora_a, nn.ModuleDict) or not isinstance(lora_b, nn.ModuleDict) or scaling is None:
            continue
        for adapter in lora_a:
            if adapter not in lora_b or adapter not in scaling:
                continue
            a_weight = getattr(lora_a[adapter], "weight", None)
            b_weight = getattr(lora_b[adapter], "weight", None)
            if a_weight is None or b_weight is None:
                continue
            where = f"{name} (adapter {adapter!r})"
            dora = getattr(module, "lora_magnitude_vector", None)
            if dora is not None and adapter in dora:
                raise ValueError(f"{where}: DoRA layer; LoRA-Pro assumes W = W0 + s·B·A. Use plain LoRA/rsLoRA.")
            if _is_sharded(a_weight) or _is_sharded(b_weight):
                raise ValueError(
                    f"{where}: lora_A/lora_B are sharded or flattened (ZeRO-3/FSDP/DTensor); LoRA-Pro needs "
                    "each layer's whole A and B on one device. Use DDP or ZeRO-1/2 instead."
                )
            if a_weight.dim() != 2 or b_weight.dim() != 2:
                log.warning("%s: non-linear LoRA layer (%d-D weights) gets plain AdamW", where, a_weight.dim())
                continue
            if a_weight.device != b_weight.device:
                raise ValueError(
                    f"{where}: lora_A is on {a_weight.device} but lora_B on {b_weight.device}; LoRA-Pro "
                    "couples them in every step. Place each layer's adapter on one device."
                )
            if a_weight.shape[0] != b_weight.shape[1]:
                raise ValueError(f"{where}: rank mismatch A{tuple(a_weight.shape)} vs B{tuple(b_weight.shape)}")
            pairs.append(LoRAPair(name, module, adapter, a_weight, b_weight))
    return pairs


def _stack_key(pair: LoRAPair, kind: str) -> tuple:
    return (kind, tuple(pair.A.shape), tuple(pair.B.shape), pair.A.dtype, pair.A.device)


@torch.no_grad()
def adjusted_pair_gradients(
    pairs: Iterable[LoRAPair], *, damping: float | None = None, grads: dict | None = None
) -> dict[nn.Parameter, torch.Tensor]:
    """Adjusted gradients for every pair with gradients, batched over layers of equal shape.

    ``grads`` may override ``p.grad`` (used by the full mode to project Adam's direction). Pairs whose
    A has no gradient (frozen, LoRA-FA) get the best g_B for fixed A, and vice versa.
    """

    def grad_of(p: torch.Tensor) -> torch.Tensor | None:
        if grads is not None:
            return grads.get(p)
        return p.grad if p.requires_grad else None

    buckets: dict[tuple, list[LoRAPair]] = {}
    for pair in pairs:
        ga, gb = grad_of(pair.A), grad_of(pair.B)
        if ga is None and gb is None:
            continue
        kind = "ab" if ga is not None and gb is not None else ("b" if gb is not None else "a")
        buckets.setdefault(_stack_key(pair, kind), []).append(pair)

    out: dict[nn.Parameter, torch.Tensor] = {}
    for key, group in buckets.items():
        kind = key[0]
        dev = group[0].A.device
        scales = [p.scaling for p in group]
        if 0.0 in scales:
            raise ValueError(f"{group[scales.index(0.0)].name}: LoRA scaling is 0; nothing to adjust")
        s = torch.tensor(scales, device=dev)
        if kind == "ab":
            if len(group) == 1:
                p = group[0]
                na, nb = adjust_gradients(p.A, p.B, grad_of(p.A), grad_of(p.B), p.scaling, damping=damping)
                out[p.A], out[p.B] = na, nb
                continue
            na, nb = adjust_gradients(
                torch.stack([p.A for p in group]),
                torch.stack([p.B for p in group]),
                torch.stack([grad_of(p.A) for p in group]),
                torch.stack([grad_of(p.B) for p in group]),
                s,
                damping=damping,
            )
            for i, p in enumerate(group):
                out[p.A], out[p.B] = na[i], nb[i]
        elif kind == "b":
            nb = adjust_gradient_b_only(
                torch.stack([p.A for p in group]), torch.stack([grad_of(p.B) for p in group]), s, damping=damping
            )
            for i, p in enumerate(group):
                out[p.B] = nb[i]
        else:
            na = adjust_gradient_a_only(
                torch.stack([p.B for p in group]), torch.stack([grad_of(p.A) for p in group]), s, damping=damping
            )
            for i, p in enumerate(group):
                out[p.A] = na[i]
    return out


@torch.no_grad()
def adjust_model_gradients(model_or_pairs: nn.Module | Iterable[LoRAPair], *, damping: float | None = None) -> int:
    """Replace ``.grad`` of every LoRA pair by its LoRA-Pro adjustment, in place; returns the pair count.

    This turns *any* optimizer (e.g. ``torch.optim.SGD``) into its LoRA-Pro "efficient" variant: call it
    between ``backward()`` and ``step()``.
    """
    pairs = find_lora_pairs(model_or_pairs) if isinstance(model_or_pairs, nn.Module) else list(model_or_pairs)
    new = adjusted_pair_gradients(pairs, damping=damping)
    for p, g in new.items():
        p.grad.copy_(g)
    return len({id(p.module) for p in pairs})


# --------------------------------------------------------------------------------------------------
# Optimizer
# --------------------------------------------------------------------------------------------------


def _stackable(group: dict) -> bool:
    """Param groups whose AdamW arithmetic the batched step reproduces (the common case)."""
    return not (group.get("amsgrad") or group.get("maximize") or group.get("capturable")
                or group.get("differentiable") or not group.get("decoupled_weight_decay", True))


def _fused_kernel_runs(p: torch.Tensor) -> bool:
    """Whether torch's fused AdamW kernel exists for this parameter's device and dtype."""
    return p.is_floating_point() and p.device.type in _get_fused_kernels_supported_devices()


class _Buffers:
    """Reused stacked tensors of one bucket of equal-shape pairs: factors, raw and adjusted gradients.

    Work memory, not optimizer state: allocating ~30 MiB afresh at every step costs page faults.
    """

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        t = self.tensors.get(name)
        if t is None or t.shape != shape or t.dtype != dtype or t.device != device:
            t = self.tensors[name] = torch.empty(shape, dtype=dtype, device=device)
        return t


class _Stack:
    """Equal-shape parameters of one param group re-homed into one tensor, with their AdamW state stacked.

    ``value[i]`` *is* parameter i's storage (``p.data`` is a view of it), and its ``exp_avg``/``exp_avg_sq``/
    ``step`` state entries are views of stacked moments and one step vector. So the batched solve reads
    the factors without copying them, and AdamW is one fused call on the stack instead of one per
    parameter, with nothing to copy back. The state stays torch AdamW's per-parameter state (views), so
    ``state_dict`` and checkpoints are AdamW's; anything that replaces a parameter's storage or state
    entry (``model.to``, ``load_state_dict``) is noticed and the stack rebuilt from the current values.
    """

    def __init__(self, params: list[nn.Parameter], states: list[dict]) -> None:
        p0 = params[0]
        for p, state in zip(params, states, strict=True):
            if not state:  # created lazily, as torch.optim.AdamW does (step as its fused path keeps it)
                state["step"] = torch.zeros((), dtype=_get_scalar_dtype(is_fused=True), device=p.device)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        self.params = list(params)
        self.value = torch.stack([p.detach() for p in params])
        for p, view in zip(params, self.value.unbind(0), strict=True):
            p.data = view
        self.exp_avg = torch.stack([st["exp_avg"] for st in states])
        self.exp_avg_sq = torch.stack([st["exp_avg_sq"] for st in states])
        self.steps = torch.stack([st["step"].detach().to(device=p0.device, dtype=_get_scalar_dtype(is_fused=True))
                                  for st in states])
        for st, m, v, t in zip(states, self.exp_avg.unbind(0), self.exp_avg_sq.unbind(0), self.steps.unbind(0),
                               strict=True):
            st["exp_avg"], st["exp_avg_sq"], st["step"] = m, v, t
        self.views = [(st["exp_avg"], st["exp_avg_sq"], st["step"]) for st in states]
        self.ptrs = [p.data_ptr() for p in params]
        self.uniform = len({float(t) for t in self.steps}) == 1  # all at one step: one kernel call suffices

    @staticmethod
    def usable(states: list[dict]) -> bool:
        """States the stack can adopt: fresh, or exactly AdamW's three entries."""
        return all(not st or (st.keys() == {"step", "exp_avg", "exp_avg_sq"}) for st in states)

    def is_current(self, params: list[nn.Parameter], states: list[dict]) -> bool:
        """False once anything replaced a parameter's storage or a state entry."""
        return len(params) == len(self.params) and all(
            p is q and p.data_ptr() == ptr and st.get("exp_avg") is m and st.get("exp_avg_sq") is v
            and st.get("step") is t
            for p, q, ptr, st, (m, v, t) in zip(params, self.params, self.ptrs, states, self.views, strict=True))

    def adamw(self, grad: torch.Tensor, group: dict) -> None:
        """One AdamW step of the stacked parameters with ``grad`` (stacked), by torch's fused kernel."""
        self.steps.add_(1)
        grad = grad.to(self.value.dtype)
        if self.uniform:
            tensors = [self.value], [grad], [self.exp_avg], [self.exp_avg_sq], [self.views[0][2]]
        else:  # layers that missed steps: per-parameter step counts, still one call
            tensors = (list(self.value.unbind(0)), list(grad.unbind(0)), list(self.exp_avg.unbind(0)),
                       list(self.exp_avg_sq.unbind(0)), [t for _, _, t in self.views])
        value, grads, exp_avg, exp_avg_sq, steps = tensors
        beta1, beta2 = (float(b) for b in group["betas"])
        torch._fused_adamw_(value, grads, exp_avg, exp_avg_sq, [], steps, lr=float(group["lr"]), beta1=beta1,
                            beta2=beta2, weight_decay=float(group["weight_decay"]), eps=float(group["eps"]),
                            amsgrad=False, maximize=False)


class LoRAProAdamW(torch.optim.AdamW):
    """AdamW whose LoRA updates follow LoRA-Pro; a drop-in ``torch.optim.Optimizer``.

    Args:
        model_or_params: a (PEFT) model — its trainable parameters are optimized and its LoRA pairs found
            — or parameters / param groups together with ``model=`` (the form
            ``Trainer(optimizer_cls_and_kwargs=(LoRAProAdamW, {"model": model, ...}))`` uses).
        lr, betas, eps, weight_decay, amsgrad: as ``torch.optim.AdamW`` (weight decay is decoupled).
        mode: ``"efficient"`` — the adjusted (g_A, g_B) go through ordinary per-factor AdamW (no m×n
            state); ``"full"`` — Adam moments of the m×n equivalent gradient g̃ are kept per layer (the
            same state size as full fine-tuning), Adam's direction is projected back through the closed
            form and applied to A and B as an SGD step; weight decay scales A and B.
        model: the model owning the parameters, when ``model_or_params`` are parameters/groups.
        damping: eigenvalue damping relative to the Gram matrices' mean eigenvalue.
        foreach, fused: passed to ``torch.optim.AdamW``.

    Non-LoRA trainable parameters get plain AdamW. The LoRA scale ``s`` is read from
    ``module.scaling[adapter]`` at every step. ``p.grad`` is left as the raw gradient after the step.
    State is ordinary optimizer state (``exp_avg``/``exp_avg_sq``/``step`` per parameter; in full
    mode ``full_exp_avg``/``full_exp_avg_sq``/``step`` on each pair's A), so ``state_dict`` /
    ``load_state_dict`` resume bit-identically.
    """

    def __init__(
        self,
        model_or_params: nn.Module | Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        mode: str = "efficient",
        *,
        amsgrad: bool = False,
        model: nn.Module | None = None,
        damping: float | None = None,
        foreach: bool | None = None,
        fused: bool | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode == "full" and amsgrad:
            raise ValueError("amsgrad is not defined for the full mode (its Adam runs on the m×n equivalent gradient)")
        if isinstance(model_or_params, nn.Module):
            if model is not None and model is not model_or_params:
                raise ValueError("pass the model either positionally or as model=, not two different ones")
            model = model_or_params
            params: Any = [p for p in model.parameters() if p.requires_grad]
        else:
            params = list(model_or_params)
            if model is None:
                raise ValueError(
                    "LoRAProAdamW needs the model to find the lora_A/lora_B pairs: pass the model itself, "
                    "or parameters/param groups together with model=..."
                )
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, foreach=foreach,
                         fused=fused)
        for group in self.param_groups:
            group.setdefault("mode", mode)
        self.mode = mode
        self.damping = damping
        mine = {p for g in self.param_groups for p in g["params"]}
        self.pairs = [p for p in find_lora_pairs(model) if p.A in mine or p.B in mine]
        if not self.pairs:
            from carelab.runs import warn

            warn("LoRAProAdamW found no LoRA pairs among its parameters; it acts as plain AdamW")
        self._group_of = {p: g for g in self.param_groups for p in g["params"]}
        self._buffers: dict[tuple, _Buffers] = {}
        self._stacks: dict[tuple, _Stack] = {}
        if mode == "full":
            for pair in self.pairs:
                if not (pair.A in mine and pair.B in mine and pair.A.requires_grad and pair.B.requires_grad):
                    raise ValueError(f"{pair.name}: full mode needs both lora_A and lora_B trainable")
                if self._group_of[pair.A] is not self._group_of[pair.B]:
                    raise ValueError(f"{pair.name}: full mode needs lora_A and lora_B in one param group")

    def _check_devices(self) -> None:
        for pair in self.pairs:
            if pair.A.device != pair.B.device:
                raise ValueError(
                    f"{pair.name} (adapter {pair.adapter!r}): lora_A on {pair.A.device}, lora_B on "
                    f"{pair.B.device}; LoRA-Pro needs both on one device"
                )

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._check_devices()
        if self.mode == "efficient":
            self._efficient_step()
            return loss

        # full mode: A/B are updated here, AdamW steps the rest
        live = [pr for pr in self.pairs if pr.A.grad is not None and pr.B.grad is not None]
        self._plain_adamw_step(skip={p for pr in live for p in (pr.A, pr.B)}, grads={})
        self._full_step(live)
        return loss

    # ---- efficient mode ------------------------------------------------------------------------------

    def _efficient_step(self) -> None:
        """Adjusted gradients + AdamW, batched over layers of equal shape.

        Pairs are grouped by (kind, shapes, dtype, device, param groups). Each group's trainable factors
        live in a :class:`_Stack` (parameters re-homed into one tensor, AdamW state stacked), its
        gradients are stacked into reused buffers, the r×r algebra of all groups is solved in one batch,
        and each stack takes one call of torch's fused AdamW kernel. Same arithmetic as torch's
        per-parameter AdamW on the adjusted gradients (to float rounding). Pairs in groups the kernel does
        not reproduce (amsgrad, maximize, differentiable, capturable), on devices without it, or with
        state from another optimizer, and non-LoRA parameters, take ``torch.optim.AdamW.step``.
        """
        buckets: dict[tuple, list[LoRAPair]] = {}
        per_param: list[LoRAPair] = []
        for pair in self.pairs:
            kind, owned = self._pair_kind(pair)
            if kind is None:
                continue
            groups = [self._group_of.get(p) for p in owned]
            if (any(g is None or not _stackable(g) for g in groups) or not _fused_kernel_runs(pair.A)
                    or not _Stack.usable([self.state[p] for p in owned])):
                per_param.append(pair)
                continue
            buckets.setdefault((*_stack_key(pair, kind), *(id(g) for g in groups)), []).append(pair)
        self._buffers = {key: self._buffers.get(key) or _Buffers() for key in buckets}
        stacks = {key: self._stacks_of(key[0], pairs) for key, pairs in buckets.items()}
        self._stacks = {tuple(id(p) for p in st.params): st for sts in stacks.values() for st in sts.values()}
        for stack, grad in self._adjusted_buckets(buckets, stacks):
            stack.adamw(grad, self._group_of[stack.params[0]])
        adjusted = adjusted_pair_gradients(per_param, damping=self.damping) if per_param else {}
        self._plain_adamw_step(skip={p for st in self._stacks.values() for p in st.params}, grads=adjusted)

    def _stacks_of(self, kind: str, pairs: list[LoRAPair]) -> dict[str, _Stack]:
        """The stacks of a bucket's trainable factors ("A", "B"), reused while current, else rebuilt."""
        out = {}
        for name in {"ab": "AB", "a": "A", "b": "B"}[kind]:
            params = [getattr(p, name) for p in pairs]
            states = [self.state[p] for p in params]
            st = self._stacks.get(tuple(id(p) for p in params))
            out[name] = st if st is not None and st.is_current(params, states) else _Stack(params, states)
        return out

    def _plain_adamw_step(self, skip: set[nn.Parameter], grads: dict[nn.Parameter, torch.Tensor]) -> None:
        """``torch.optim.AdamW.step`` on the parameters not in ``skip`` that have a gradient, with ``grads``
        standing in for their ``.grad`` during the step; skipped entirely when there are none."""
        rest = [[p for p in g["params"] if p not in skip and (p in grads or p.grad is not None)]
                for g in self.param_groups]
        if not any(rest):
            return
        saved = [(g, g["params"]) for g in self.param_groups]
        raw = {p: p.grad for p in grads}
        try:
            for g, params in zip(self.param_groups, rest, strict=True):
                g["params"] = params
            for p, grad in grads.items():
                p.grad = grad
            super().step()
        finally:
            for g, params in saved:
                g["params"] = params
            for p, grad in raw.items():
                p.grad = grad

    @staticmethod
    def _pair_kind(pair: LoRAPair) -> tuple[str | None, tuple[nn.Parameter, ...]]:
        has_a = pair.A.requires_grad and pair.A.grad is not None
        has_b = pair.B.requires_grad and pair.B.grad is not None
        if has_a and has_b:
            return "ab", (pair.A, pair.B)
        if has_b:
            return "b", (pair.B,)
        if has_a:
            return "a", (pair.A,)
        return None, ()

    def _adjusted_buckets(self, buckets: dict[tuple, list[LoRAPair]],
                          stacks: dict[tuple, dict[str, _Stack]]) -> list[tuple[_Stack, torch.Tensor]]:
        """(stack, its adjusted gradients) for every trainable factor in ``buckets``: gradients (and frozen
        factors) stacked into each bucket's reused buffers, the r×r algebra of all "ab" buckets of one
        rank, dtype and device solved in one batch."""
        solve: dict[tuple, list[tuple]] = {}
        done: list[tuple[_Stack, torch.Tensor]] = []
        for key, pairs in buckets.items():
            kind, buf, own = key[0], self._buffers[key], stacks[key]
            scales = [p.scaling for p in pairs]
            if 0.0 in scales:
                raise ValueError(f"{pairs[scales.index(0.0)].name}: LoRA scaling is 0; nothing to adjust")
            first = pairs[0]
            dev, dtype, n = first.A.device, first.A.dtype, len(pairs)
            s = torch.tensor(scales, device=dev)

            def stacked(name: str, tensors: list[torch.Tensor], like: torch.Tensor, buf=buf, dev=dev, dtype=dtype,
                        n=n) -> torch.Tensor:
                return torch.stack(tensors, out=buf.get(name, (n, *like.shape), dtype, dev))

            grad_a = stacked("grad_A", [p.A.grad for p in pairs], first.A) if "A" in own else None
            grad_b = stacked("grad_B", [p.B.grad for p in pairs], first.B) if "B" in own else None
            if kind == "ab":
                work = _compute_dtype(first.A)
                stack = (own["A"].value, own["B"].value, grad_a, grad_b, s)
                # the raw g_B stack is spent once its products are taken: it holds the update's second product
                out = ((buf.get("new_A", stack[0].shape, work, dev), buf.get("new_B", stack[1].shape, work, dev), grad_b)
                       if work == dtype else None)
                solve.setdefault((first.A.shape[0], work, dev), []).append((own, stack, out))
            elif kind == "b":
                frozen_a = stacked("A", [p.A.detach() for p in pairs], first.A)
                done.append((own["B"], adjust_gradient_b_only(frozen_a, grad_b, s, damping=self.damping)))
            else:
                frozen_b = stacked("B", [p.B.detach() for p in pairs], first.B)
                done.append((own["A"], adjust_gradient_a_only(frozen_b, grad_a, s, damping=self.damping)))
        for items in solve.values():
            adjusted = _adjust_stacks([it[1] for it in items], self.damping, [it[2] for it in items])
            for (own, _, _), (new_a, new_b) in zip(items, adjusted, strict=True):
                done.extend([(own["A"], new_a), (own["B"], new_b)])
        return done

    def load_state_dict(self, state_dict) -> None:  # type: ignore[override]
        self._stacks = {}
        super().load_state_dict(state_dict)

    def _full_step(self, live: list[LoRAPair]) -> None:
        if not live:
            return
        adjusted = adjusted_pair_gradients(live, damping=self.damping)
        directions: dict[nn.Parameter, torch.Tensor] = {}
        for pair in live:
            group = self._group_of[pair.A]
            beta1, beta2 = group["betas"]
            state = self.state[pair.A]
            s = pair.scaling
            g_eq = equivalent_gradient(pair.A, pair.B, adjusted[pair.A], adjusted[pair.B], s)
            if "full_exp_avg" not in state:
                state["step"] = torch.tensor(0.0)  # "step": the key torch.optim.Adam.__setstate__ expects
                state["full_exp_avg"] = torch.zeros(g_eq.shape, dtype=pair.A.dtype, device=pair.A.device)
                state["full_exp_avg_sq"] = torch.zeros_like(state["full_exp_avg"])
            state["step"] += 1
            t = float(state["step"])
            m, v = state["full_exp_avg"], state["full_exp_avg_sq"]
            m.lerp_(g_eq.to(m.dtype), 1 - beta1)
            v.mul_(beta2).addcmul_(g_eq.to(v.dtype), g_eq.to(v.dtype), value=1 - beta2)
            u = (m.float() / (1 - beta1**t)) / ((v.float() / (1 - beta2**t)).sqrt() + group["eps"])
            a32, b32 = pair.A.float(), pair.B.float()
            directions[pair.A] = s * (b32.mT @ u)  # raw LoRA grads that direction u would produce
            directions[pair.B] = s * (u @ a32.mT)
        projected = adjusted_pair_gradients(live, damping=self.damping, grads=directions)
        for pair in live:
            group = self._group_of[pair.A]
            lr, wd = group["lr"], group["weight_decay"]
            for p in (pair.A, pair.B):
                if wd:
                    p.mul_(1 - lr * wd)
                p.add_(projected[p].to(p.dtype), alpha=-lr)
