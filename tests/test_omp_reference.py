"""``isae.eval.metrics.omp`` (batched, Gram/Cholesky, float32) returns the supports of a plain per-input OMP.

The reference is the textbook algorithm in numpy float64, one input at a time: k times, pick the atom with
the largest |dᵀr|, refit x by least squares on the support so far, recompute the residual. Where
scikit-learn is installed (a benchmark-only dependency, ``benchmarks/requirements.txt``) its
``orthogonal_mp`` is compared too.

float32 (the library) and float64 (the references) can only disagree at a near-tie between the two best
atoms of some step, so inputs whose smallest relative margin along the reference's path is below
``MARGIN`` are left out of the support comparison, and each test checks that almost all inputs were kept.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from isae.eval.metrics import omp

MARGIN = 1e-4
"""Smallest relative gap (best − second best) / best of |dᵀr| along the path for an input to be compared."""

# (K atoms, N dimensions, k) of the small problems; N < K so that atoms are coherent and picks compete.
SIZES = [(64, 24, 6), (128, 32, 10), (40, 40, 8)]


def reference_omp(atoms: np.ndarray, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-input OMP in float64. Returns dense codes [n, K] and each input's smallest relative margin."""
    n, K = x.shape[0], atoms.shape[0]
    codes, margins = np.zeros((n, K)), np.full(n, np.inf)
    for i in range(n):
        r, support = x[i].copy(), []
        for _ in range(k):
            score = np.abs(atoms @ r)
            score[support] = -1.0  # never re-pick (the residual is orthogonal to them up to rounding)
            top2 = np.sort(score)[-2:]
            margins[i] = min(margins[i], (top2[1] - top2[0]) / top2[1])
            support.append(int(score.argmax()))
            sub = atoms[support].T  # [N, t]
            coef = np.linalg.lstsq(sub, x[i], rcond=None)[0]
            r = x[i] - sub @ coef
        codes[i, support] = coef
    return codes, margins


def _problem(K: int, N: int, k: int, seed: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Unit atoms [K, N] and 48 inputs [n, N] (float64): Gaussian, or k-sparse combinations plus noise."""
    rng = np.random.default_rng(seed)
    atoms = rng.standard_normal((K, N))
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    n = 48
    if kind == "gaussian":
        x = rng.standard_normal((n, N))
    else:
        z = np.zeros((n, K))
        for i in range(n):
            z[i, rng.choice(K, size=k, replace=False)] = rng.standard_normal(k)
        x = z @ atoms + 0.01 * rng.standard_normal((n, N)) / np.sqrt(N)
    return atoms, x / np.linalg.norm(x, axis=1, keepdims=True)


def _supports(codes) -> np.ndarray:
    return np.asarray(codes) != 0


def _library(atoms: np.ndarray, x: np.ndarray, k: int) -> np.ndarray:
    return omp(torch.from_numpy(atoms).float(), torch.from_numpy(x).float(), k).double().numpy()


def _kept(margins: np.ndarray) -> np.ndarray:
    kept = margins > MARGIN
    assert kept.mean() >= 0.9, f"only {kept.sum()}/{kept.size} inputs clear the margin: the test would be vacuous"
    return kept


@pytest.mark.parametrize("kind", ["gaussian", "sparse"])
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("seed", range(3))
def test_omp_supports_and_coefficients_equal_the_per_input_reference(seed, size, kind):
    K, N, k = size
    atoms, x = _problem(K, N, k, seed, kind)
    ref, margins = reference_omp(atoms, x, k)
    got = _library(atoms, x, k)
    kept = _kept(margins)
    assert (_supports(got).sum(1) == k).all()  # exactly k atoms every time
    np.testing.assert_array_equal(_supports(got)[kept], _supports(ref)[kept])
    # Same support → same least-squares coefficients, up to float32 rounding (atoms are unit, |x| = 1).
    np.testing.assert_allclose(got[kept], ref[kept], atol=2e-4, rtol=0)


@pytest.mark.parametrize("precompute", [False, True])
@pytest.mark.parametrize("kind", ["gaussian", "sparse"])
@pytest.mark.parametrize("seed", range(3))
def test_omp_supports_equal_scikit_learns_orthogonal_mp(seed, kind, precompute):
    linear_model = pytest.importorskip("sklearn.linear_model")
    K, N, k = SIZES[1]
    atoms, x = _problem(K, N, k, 100 + seed, kind)
    ref, margins = reference_omp(atoms, x, k)
    sk = linear_model.orthogonal_mp(atoms.T, x.T, n_nonzero_coefs=k, precompute=precompute).T  # [n, K]
    # scikit-learn (float64) and the float64 reference agree on every input, near-ties included ...
    np.testing.assert_array_equal(_supports(sk), _supports(ref))
    # ... and the library agrees with scikit-learn wherever float32 cannot flip a near-tie.
    kept = _kept(margins)
    got = _library(atoms, x, k)
    np.testing.assert_array_equal(_supports(got)[kept], _supports(sk)[kept])
    np.testing.assert_allclose(got[kept], sk[kept], atol=2e-4, rtol=0)


def test_the_gaussian_problems_have_close_calls():
    # Guards the tests above: agreement on these problems is not trivially guaranteed by huge margins.
    K, N, k = SIZES[0]
    atoms, x = _problem(K, N, k, 0, "gaussian")
    _, margins = reference_omp(atoms, x, k)
    assert margins.min() < 0.2  # some picks are close calls, so agreement is not trivially guaranteed
