"""The data-constrained law and its fitter: recover planted parameters, sane crossovers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from carelab.diffusion.scaling import (
    ScalingFit,
    critical_compute,
    effective_data,
    empirical_crossover,
    fit_scaling,
)


def _grid(sizes):
    N, U, E = [], [], []
    for n in sizes:
        for u in (2e4, 1e5, 5e5):
            for e in (1, 2, 4, 8, 16, 32, 64):
                N.append(n), U.append(u), E.append(e)
    return np.array(N), np.array(U), np.array(E)


def test_effective_data_limits():
    assert effective_data(100.0, 1, 15.0) == pytest.approx(100.0)  # one epoch is all fresh
    assert effective_data(100.0, 2, 1e6) == pytest.approx(200.0, rel=1e-4)  # R_D* → ∞: repeats are fresh
    assert effective_data(100.0, 1e6, 15.0) == pytest.approx(100.0 * 16, rel=1e-4)  # saturates at U(1+R_D*)
    assert effective_data(100.0, 0.5, 15.0) == pytest.approx(50.0)  # under one epoch


@pytest.mark.parametrize("R_D", [3.0, 40.0])
def test_fitter_recovers_planted_law(R_D):
    N, U, E = _grid([1e5, 3e5, 1e6])
    true = ScalingFit(E=1.7, A=80.0, B=300.0, alpha=0.34, beta=0.34, R_D=R_D, tied=True)
    L = true.predict(N, U, E) * np.exp(np.random.default_rng(0).normal(0, 1e-4, len(N)))
    fit = fit_scaling(N, U, E, L, bootstrap=3)
    assert fit.tied and fit.n_term
    for k in ("E", "A", "B", "alpha", "beta", "R_D"):
        assert getattr(fit, k) == pytest.approx(getattr(true, k), rel=0.05), k
    lo, hi = fit.R_D_ci
    assert lo <= R_D * 1.05 and hi >= R_D * 0.95


def test_single_model_size_folds_n_term_into_E():
    N, U, E = _grid([2e5])
    true = ScalingFit(E=2.0, A=0.0, B=150.0, alpha=0.3, beta=0.3, R_D=10.0, n_term=False)
    fit = fit_scaling(N, U, E, true.predict(N, U, E))
    assert not fit.n_term and fit.A == 0.0
    assert pytest.approx(10.0, rel=0.05) == fit.R_D and pytest.approx(2.0, rel=0.02) == fit.E


def test_critical_compute_where_slow_decaying_repetition_wins():
    # AR: better at fresh data (smaller B) but repetition decays fast; MDM: worse start, R_D* large
    ar = ScalingFit(E=1.5, A=50.0, B=200.0, alpha=0.3, beta=0.3, R_D=2.0)
    mdm = ScalingFit(E=1.5, A=50.0, B=320.0, alpha=0.3, beta=0.3, R_D=500.0)
    n_grid = np.geomspace(1e5, 1e6, 8)
    U = 1e5
    c = critical_compute(ar, mdm, U, n_grid, c_range=(1e10, 1e20))
    assert c is not None and 1e10 < c < 1e20
    # below the crossover AR's frontier is better, above it MDM's
    from carelab.diffusion.scaling import frontier_loss

    assert frontier_loss(ar, [c / 10], U, n_grid)[0] < frontier_loss(mdm, [c / 10], U, n_grid)[0]
    assert frontier_loss(ar, [c * 10], U, n_grid)[0] > frontier_loss(mdm, [c * 10], U, n_grid)[0]
    assert critical_compute(mdm, ar, U, n_grid, c_range=(1e10, 1e20)) is None  # roles swapped: never


def test_empirical_crossover_and_bad_input():
    rows = [{"objective": o, "unique_tokens": 1, "C": c, "val_loss": v}
            for o, c, v in [("ar", 1, 3.0), ("mdm", 1, 3.5), ("ar", 2, 2.8), ("mdm", 2, 3.0),
                            ("ar", 4, 2.9), ("mdm", 4, 2.7), ("ar", 8, 3.1), ("mdm", 8, 2.6)]]
    assert empirical_crossover(rows, 1) == 4
    assert empirical_crossover([r for r in rows if r["C"] < 4], 1) is None
    with pytest.raises(ValueError):
        fit_scaling([1, 2], [1, 2], [1, 2], [1.0, 2.0])
    assert math.isfinite(ScalingFit(E=1, A=1, B=1, alpha=0.5, beta=0.5, R_D=5).predict([10], [10], [3])[0])


def test_report_from_synthetic_sweep(tmp_path):
    from carelab.diffusion.scaling import write_report

    ar = ScalingFit(E=1.5, A=50.0, B=200.0, alpha=0.3, beta=0.3, R_D=3.0)
    mdm = ScalingFit(E=1.5, A=50.0, B=320.0, alpha=0.3, beta=0.3, R_D=300.0)
    rows = []
    for obj, law in (("ar", ar), ("mdm", mdm)):
        for size, n in (("xs", 1e5), ("s", 3e5)):
            for e in (1, 4, 16, 64):
                v = float(law.predict([n], [2e4], [e])[0])
                rows.append({"id": f"{obj}-{size}-U20000-E{e}", "objective": obj, "size": size, "N": n,
                             "unique_tokens": 20000, "epochs": e, "D": 20000 * e, "C": 6 * n * 20000 * e,
                             "val_loss": v, "train_loss": v})
    (tmp_path / "results.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    res = write_report(tmp_path, tmp_path / "rep", bootstrap=0)
    assert res["fits"]["mdm"].R_D > 10 * res["fits"]["ar"].R_D
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "R_D*" in text and "| AR | xs (100K) | 20,000 |" in text
    for png in ("val_loss_vs_epochs.png", "loss_vs_compute.png", "training_curves.png"):
        assert (tmp_path / "rep" / png).stat().st_size > 1000
