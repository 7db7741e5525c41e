"""P3's optimality conditions: the non-negative lasso against closed forms and scikit-learn, the conditions at a
known optimum and off it, the alternating reference optimum, antipodal pairs and ray alignment."""

from __future__ import annotations

import pytest
import torch

from isae.eval import optimality


def _orthonormal(k, n, seed=0):
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q[:k]  # k orthonormal rows


def test_lasso_on_an_orthonormal_dictionary_is_the_soft_threshold():
    d = _orthonormal(6, 10)
    x = torch.randn(200, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    lam = 0.3
    z = optimality.nonneg_lasso(d, x, lam, n_iter=2000, tol=1e-10)
    want = (x @ d.T - lam).clamp_min(0)
    assert torch.allclose(z, want, atol=1e-8)
    summary, _ = optimality.conditions(d, torch.zeros(10, dtype=torch.float64), x, z, lam)
    assert summary["c1_active_mean_dev"] < 1e-6 and summary["c1_inactive_violation_rate"] == 0.0


def test_lasso_matches_scikit_learn():
    sklearn = pytest.importorskip("sklearn.linear_model")
    gen = torch.Generator().manual_seed(2)
    d = torch.randn(12, 8, generator=gen, dtype=torch.float64)
    d = d / d.norm(dim=1, keepdim=True)
    x = torch.randn(5, 8, generator=gen, dtype=torch.float64)
    lam = 0.05
    z = optimality.nonneg_lasso(d, x, lam, n_iter=20000, tol=1e-10)
    for i in range(len(x)):
        # sklearn minimises (1 / (2 n)) ‖y − X w‖² + α ‖w‖₁ with n = 8 rows: α = λ / 8
        ref = sklearn.Lasso(alpha=lam / 8, positive=True, fit_intercept=False, tol=1e-12, max_iter=200_000)
        ref.fit(d.T.numpy(), x[i].numpy())
        assert torch.allclose(z[i], torch.as_tensor(ref.coef_), atol=1e-5)


def test_conditions_flag_codes_that_are_not_optimal():
    d = _orthonormal(6, 10)
    x = torch.randn(200, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    lam = 0.3
    z = (x @ d.T).clamp_min(0)  # the ReLU of the projection: λ not subtracted
    summary, _ = optimality.conditions(d, torch.zeros(10, dtype=torch.float64), x, z, lam)
    assert summary["c1_active_median_ratio"] == pytest.approx(0.0, abs=1e-9)  # d_kᵀr = 0, not λ
    assert summary["c1_active_mean_dev"] == pytest.approx(1.0)


def test_alternating_minimisation_reaches_the_first_order_conditions():
    gen = torch.Generator().manual_seed(3)
    true = torch.randn(16, 8, generator=gen, dtype=torch.float64)
    true = true / true.norm(dim=1, keepdim=True)
    codes = torch.rand(600, 16, generator=gen, dtype=torch.float64) * (torch.rand(600, 16, generator=gen) < 0.15)
    x = codes @ true + 0.01 * torch.randn(600, 8, generator=gen, dtype=torch.float64)
    lam = 0.05
    opt = optimality.learn_dictionary(x, 16, lam, n_outer=80, seed=0)
    at_opt, _ = optimality.conditions(opt["atoms"], opt["bias"], x, opt["codes"], lam)
    start = optimality.learn_dictionary(x, 16, lam, n_outer=0, seed=0)  # the initial dictionary, codes optimal
    at_start, _ = optimality.conditions(start["atoms"], start["bias"], x, start["codes"], lam)
    assert at_opt["c2"] < 1e-4
    assert at_opt["c1_active_mean_dev"] < 1e-3 and at_opt["c1_inactive_violation_rate"] < 1e-3
    assert at_opt["c3_median"] < 0.1 * at_start["c3_median"]  # only the atoms' condition tells them apart


def test_antipodal_pairs_and_ray_alignment():
    atoms = torch.tensor([[1.0, 0.0], [-1.0, 0.05], [0.0, 1.0]])
    z = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    out = optimality.antipodal_pairs(atoms, z)
    assert out["antipodal_pairs"] == 1 and out["antipodal_atom_frac"] == pytest.approx(2 / 3)
    assert out["density_antipodal"] == pytest.approx(0.5) and out["density_all"] == pytest.approx(5 / 12)
    x = torch.tensor([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.05]])
    assert optimality.ray_alignment(atoms, x) == pytest.approx(1.0)
    assert optimality.sae_lambda(0.01) == 0.005
