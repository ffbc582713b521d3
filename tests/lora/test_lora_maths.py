"""LoRA-Pro closed form: least-squares optimality, Sylvester solve, X-invariance, error bound, B = 0."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from carelab.lora.lorapro import (
    _adjust_gradients_reference,
    _adjust_stacks,
    adjust_gradient_b_only,
    adjust_gradients,
    equivalent_gradient,
    solve_sylvester_psd,
)

SHAPES = [(7, 5, 2), (6, 9, 3), (12, 4, 4), (5, 5, 1)]
f64 = torch.float64


def _problem(m: int, n: int, r: int, seed: int, s: float = 1.7):
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(r, n, generator=gen, dtype=f64)
    B = torch.randn(m, r, generator=gen, dtype=f64)
    g = torch.randn(m, n, generator=gen, dtype=f64)
    return A, B, g, s * B.T @ g, s * g @ A.T, s


def _vectorised_lstsq(A, B, g, s):
    """min over (gA, gB) of ||s(B gA + gB A) - g|| written as one matrix problem on [vec gA; vec gB]."""
    r, n = A.shape
    m = B.shape[0]
    # vec(B gA) = (B ⊗ I_n) vec(gA) and vec(gB A) = (I_m ⊗ Aᵀ) vec(gB) in row-major vec
    Bn, An = B.numpy(), A.numpy()
    M = s * torch.from_numpy(np.concatenate([np.kron(Bn, np.eye(n)), np.kron(np.eye(m), An.T)], axis=1))
    sol = torch.linalg.lstsq(M, g.reshape(-1), driver="gelsd").solution
    return M, sol


@pytest.mark.parametrize("m,n,r", SHAPES)
@pytest.mark.parametrize("seed", [0, 1])
def test_closed_form_is_least_squares_solution(m, n, r, seed):
    A, B, g, gA, gB, s = _problem(m, n, r, seed)
    new_a, new_b = adjust_gradients(A, B, gA, gB, s)
    M, sol = _vectorised_lstsq(A, B, g, s)
    ours = torch.cat([new_a.reshape(-1), new_b.reshape(-1)])
    # same fitted value (the minimiser set is an affine family; the fit is unique) ...
    torch.testing.assert_close(M @ ours, M @ sol, rtol=1e-8, atol=1e-8)
    # ... and it is a stationary point of the least-squares objective: Mᵀ(M x − g) = 0
    grad = M.T @ (M @ ours - g.reshape(-1))
    assert grad.abs().max() < 1e-8 * (1 + g.abs().max())


@pytest.mark.parametrize("m,n,r", SHAPES)
def test_sylvester_x_keeps_gradients_closest_to_raw(m, n, r):
    A, B, g, gA, gB, s = _problem(m, n, r, 3)
    new_a, new_b = adjust_gradients(A, B, gA, gB, s)
    base_a, base_b = adjust_gradients(A, B, gA, gB, s, x=torch.zeros(r, r, dtype=f64))
    # among (base_a + XA, base_b − BX) find the X closest to the raw gradients by vectorised least squares
    cols = []
    for i in range(r * r):
        e = torch.zeros(r * r, dtype=f64)
        e[i] = 1
        X = e.view(r, r)
        cols.append(torch.cat([(X @ A).reshape(-1), (-B @ X).reshape(-1)]))
    N = torch.stack(cols, dim=1)
    rhs = torch.cat([(gA - base_a).reshape(-1), (gB - base_b).reshape(-1)])
    x_ls = torch.linalg.lstsq(N, rhs).solution.view(r, r)
    ls_a, ls_b = adjust_gradients(A, B, gA, gB, s, x=x_ls)
    torch.testing.assert_close(new_a, ls_a, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(new_b, ls_b, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("r,k", [(2, 3), (4, 4), (8, 5)])
def test_sylvester_matches_scipy(r, k):
    rng = np.random.default_rng(r * 10 + k)
    p = rng.standard_normal((r, r + 2))
    q = rng.standard_normal((k, k + 1))
    P, Q = p @ p.T, q @ q.T
    C = rng.standard_normal((r, k))
    X = solve_sylvester_psd(torch.from_numpy(P), torch.from_numpy(Q), torch.from_numpy(C)).numpy()
    np.testing.assert_allclose(X, scipy.linalg.solve_sylvester(P, Q, C), rtol=1e-9, atol=1e-11)
    assert np.abs(P @ X + X @ Q - C).max() < 1e-10


@pytest.mark.parametrize("m,n,r", SHAPES)
def test_equivalent_gradient_does_not_depend_on_x(m, n, r):
    A, B, g, gA, gB, s = _problem(m, n, r, 4)
    ref = equivalent_gradient(A, B, *adjust_gradients(A, B, gA, gB, s), s)
    gen = torch.Generator().manual_seed(9)
    for _ in range(3):
        X = 10 * torch.randn(r, r, generator=gen, dtype=f64)
        other = equivalent_gradient(A, B, *adjust_gradients(A, B, gA, gB, s, x=X), s)
        torch.testing.assert_close(other, ref, rtol=1e-9, atol=1e-9)
    # and it is the projection P_B g + (I − P_B) g P_A
    PB = B @ torch.linalg.pinv(B)
    PA = torch.linalg.pinv(A) @ A
    torch.testing.assert_close(ref, PB @ g + (torch.eye(m, dtype=f64) - PB) @ g @ PA, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("m,n,r", SHAPES)
@pytest.mark.parametrize("seed", [0, 5, 7])
def test_lorapro_error_not_above_best_scaled_lora_error(m, n, r, seed):
    A, B, g, gA, gB, s = _problem(m, n, r, seed)
    pro = equivalent_gradient(A, B, *adjust_gradients(A, B, gA, gB, s), s)
    lora = equivalent_gradient(A, B, gA, gB, s)
    c = (lora * g).sum() / (lora * lora).sum()  # best scale for LoRA
    err_lora = torch.linalg.norm(c * lora - g)
    err_pro = torch.linalg.norm(pro - g)
    assert err_pro <= err_lora * (1 + 1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_finite_at_b_zero_and_dtype_kept(dtype):
    m, n, r, s = 16, 12, 4, 2.0
    gen = torch.Generator().manual_seed(0)
    A = torch.randn(r, n, generator=gen).to(dtype)
    B = torch.zeros(m, r, dtype=dtype)
    g = torch.randn(m, n, generator=gen).to(dtype)
    gA = (s * B.T.float() @ g.float()).to(dtype)  # zero
    gB = (s * g.float() @ A.T.float()).to(dtype)
    new_a, new_b = adjust_gradients(A, B, gA, gB, s)
    assert new_a.dtype == dtype and new_b.dtype == dtype
    assert torch.isfinite(new_a).all() and torch.isfinite(new_b).all()
    assert torch.count_nonzero(new_a) == 0  # nothing to learn for A while B = 0
    # with B = 0 the best g_B is the LoRA-FA one: s·g_B·A = g projected on A's row space
    torch.testing.assert_close(new_b.float(), adjust_gradient_b_only(A, gB, s).float(), rtol=1e-3, atol=1e-3)
    proj = equivalent_gradient(A, B, new_a, new_b, s)
    expect = g.double() @ torch.linalg.pinv(A.double()) @ A.double()
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-4
    torch.testing.assert_close(proj.double(), expect, rtol=tol, atol=tol)


def test_tiny_b_stays_finite_and_batched_equals_single():
    gen = torch.Generator().manual_seed(1)
    A = torch.randn(3, 4, 10, generator=gen)
    B = 1e-20 * torch.randn(3, 8, 4, generator=gen)
    gA = torch.randn(3, 4, 10, generator=gen) * 1e-20
    gB = torch.randn(3, 8, 4, generator=gen)
    s = torch.tensor([0.5, 2.0, 4.0])
    na, nb = adjust_gradients(A, B, gA, gB, s)
    assert torch.isfinite(na).all() and torch.isfinite(nb).all()
    B2 = torch.randn(3, 8, 4, generator=gen)
    na, nb = adjust_gradients(A, B2, gA * 1e20, gB, s)
    for i in range(3):
        a1, b1 = adjust_gradients(A[i], B2[i], gA[i] * 1e20, gB[i], float(s[i]))
        torch.testing.assert_close(na[i], a1, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(nb[i], b1, rtol=1e-4, atol=1e-4)


def test_zero_scaling_is_refused():
    with pytest.raises(ValueError, match="scaling"):
        adjust_gradients(torch.ones(2, 3), torch.ones(4, 2), torch.ones(2, 3), torch.ones(4, 2), 0.0)


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_joined_stacks_equal_the_two_eigh_reference(dtype, tol):
    """The optimizer's path (stacks of several shapes, r×r algebra joined into one batch, reused out/scratch
    buffers) gives the original per-layer two-``eigh`` closed form."""
    gen = torch.Generator().manual_seed(3)
    r, stacks, outs = 4, [], []
    for count, m, n in [(3, 12, 7), (2, 9, 11), (1, 16, 6)]:
        A = torch.randn(count, r, n, generator=gen, dtype=f64).to(dtype)
        B = (0.3 * torch.randn(count, m, r, generator=gen, dtype=f64)).to(dtype)
        gA, gB = (torch.randn(t.shape, generator=gen, dtype=f64).to(dtype) for t in (A, B))
        stacks.append((A, B, gA, gB, torch.linspace(0.5, 4.0, count)))
        outs.append((torch.empty_like(A), torch.empty_like(B), gB))  # g_B spent as scratch, as the optimizer does
    expected = [_adjust_gradients_reference(*st) for st in stacks]
    raw_b = [st[3].clone() for st in stacks]
    joined = _adjust_stacks(stacks, None, outs)

    def rel(x, y):  # relative Frobenius error, as the optimizer tests measure updates
        return float((x.double() - y.double()).norm() / y.double().norm())

    for (A, B, gA, _, s), gB, (na, nb), (ra, rb) in zip(stacks, raw_b, joined, expected, strict=True):
        assert max(rel(na, ra), rel(nb, rb)) < tol
        alone = adjust_gradients(A, B, gA, gB, s)  # the public per-call form: the same numbers
        torch.testing.assert_close((na, nb), alone)
