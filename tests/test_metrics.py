"""Identifiability metrics: matching, DCS, PW-MCC, code IoU/ℓ2, OMP, single-model metrics, ground-truth recovery."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from conftest import D_SAE, K, make_sae, unit_rows

from isae.core.arip import arip_support, rip_gap_exact
from isae.core.models import SAE
from isae.core.reference import dense_encode
from isae.eval.metrics import (
    Matching,
    code_iou,
    code_l2,
    dcs,
    ground_truth_recovery,
    map_codes,
    match_atoms,
    omp,
    pair_metrics,
    pw_mcc,
    single_metrics,
)


def _random_atoms(n: int, d: int, seed: int) -> torch.Tensor:
    return unit_rows(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)))


def _cos(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    return (unit_rows(a.double()) @ unit_rows(b.double()).T).numpy()


# --- matching, DCS, PW-MCC ----------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(4))
def test_match_atoms_maximises_total_abs_cosine_over_all_signed_permutations(seed):
    a, b = _random_atoms(5, 3, seed), _random_atoms(5, 3, 100 + seed)  # N=3 < K=5: many competing matches
    cos = _cos(a, b)
    # over signed permutations, the best sign per pair is sign(cos), so the optimum is max_π Σ |cos[i, π(i)]|
    best = max(sum(abs(cos[i, p[i]]) for i in range(5)) for p in itertools.permutations(range(5)))
    m = match_atoms(a, b)
    assert sorted(m.rows.tolist()) == list(range(5)) and sorted(m.perm.tolist()) == list(range(5))
    assert np.abs(m.cos).sum() == pytest.approx(best, abs=1e-5)
    assert dcs(m) == pytest.approx(best / 5, abs=1e-6)
    np.testing.assert_allclose(m.cos, cos[m.rows, m.perm], atol=1e-6)  # the recorded cosines are the signed ones
    np.testing.assert_array_equal(m.signs, np.where(cos[m.rows, m.perm] < 0, -1.0, 1.0))


def test_match_atoms_recovers_a_known_signed_permutation():
    a = _random_atoms(6, 8, 0)
    perm = np.array([3, 0, 5, 1, 4, 2])
    signs = np.array([1, -1, -1, 1, 1, -1.0])
    b = torch.empty_like(a)
    b[perm] = a * torch.as_tensor(signs, dtype=a.dtype)[:, None]  # B[perm[i]] = s_i A[i]
    m = match_atoms(a, 2.5 * b)  # scale-invariant
    np.testing.assert_array_equal(m.perm[np.argsort(m.rows)], perm)
    np.testing.assert_array_equal(m.signs[np.argsort(m.rows)], signs)
    assert dcs(m) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_pw_mcc_equals_brute_force_over_permutations_of_signed_cosine(seed):
    a, b = _random_atoms(5, 3, seed), _random_atoms(5, 3, 50 + seed)
    cos = _cos(a, b)
    best = max(sum(cos[i, p[i]] for i in range(5)) for p in itertools.permutations(range(5))) / 5
    assert pw_mcc(a, b) == pytest.approx(best, abs=1e-6)
    # signed: flipping an atom of B changes PW-MCC but not DCS
    b_flip = b.clone()
    b_flip[0] = -b_flip[0]
    assert dcs(match_atoms(a, b_flip)) == pytest.approx(dcs(match_atoms(a, b)), abs=1e-6)
    flipped = max(sum(-cos[i, p[i]] if p[i] == 0 else cos[i, p[i]] for i in range(5))
                  for p in itertools.permutations(range(5))) / 5
    assert pw_mcc(a, b_flip) == pytest.approx(flipped, abs=1e-6)


def test_pw_mcc_is_one_for_identical_dictionaries_and_below_one_for_a_negated_one():
    a = _random_atoms(7, 5, 1)
    assert pw_mcc(a, a) == pytest.approx(1.0, abs=1e-6)
    assert dcs(match_atoms(a, -a)) == pytest.approx(1.0, abs=1e-6)  # DCS ignores signs
    assert pw_mcc(a, -a) < 0.9  # PW-MCC does not


# --- code IoU / ℓ2 and code mapping -----------------------------------------------------------------

def test_code_iou_on_hand_computed_example():
    z_a = torch.tensor([[1.0, 2.0, 0.0, 0.0],   # supp {0,1}
                        [0.0, 0.0, 3.0, 0.0],   # supp {2}
                        [0.0, 0.0, 0.0, 0.0]])  # empty
    z_b = torch.tensor([[5.0, 0.0, -1.0, 0.0],  # supp {0,2}: |∩|=1, |∪|=3 → 1/3
                        [0.0, 0.0, -7.0, 0.0],  # supp {2}: 1
                        [0.0, 0.0, 0.0, 0.0]])  # both empty: counts as 1
    assert code_iou(z_a, z_b) == pytest.approx((1 / 3 + 1 + 1) / 3)
    assert code_iou(z_a, z_a) == 1.0


def test_code_l2_on_hand_computed_example():
    z_a = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 2.0]])   # norms 5, 2 → mean 3.5
    z_b = torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.0, -2.0]])  # ‖diff‖ = 4, 4 → mean 4
    assert code_l2(z_a, z_b) == pytest.approx(4.0 / 3.5)
    assert code_l2(z_a, z_a) == 0.0


def test_map_codes_applies_the_signed_permutation():
    m = Matching(rows=np.array([0, 1, 2]), perm=np.array([2, 0, 1]), cos=np.array([0.9, -0.8, 0.7]))
    z_b = torch.tensor([[1.0, 2.0, 3.0]])
    # (Πz′)[rows[i]] = signs[i] · z_b[perm[i]]
    assert torch.equal(map_codes(z_b, m, 3), torch.tensor([[3.0, -1.0, 2.0]]))


# --- pair metrics under the symmetry group ------------------------------------------------------------

def _signed_permutation_of(sae: SAE, seed: int = 0) -> tuple[SAE, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(sae.cfg.d_sae, generator=g)
    signs = torch.where(torch.rand(sae.cfg.d_sae, generator=g) < 0.5, -1.0, 1.0)
    other = SAE(sae.cfg, seed=seed + 999)  # different init, overwritten by copying
    with torch.no_grad():  # other latent perm[i] = signs[i] · latent i
        other.W_dec[perm] = sae.W_dec * signs[:, None]
        other.W_enc[perm] = sae.W_enc * signs[:, None]
        other.b_dec.copy_(sae.b_dec)
    return other, perm, signs


def test_signed_permutation_of_an_abstopk_sae_scores_perfectly(x_unit):
    a = make_sae("abstopk", seed=1)
    with torch.no_grad():
        a.b_dec.copy_(0.05 * torch.randn(a.cfg.d_in, generator=torch.Generator().manual_seed(2)))
        a.W_enc.add_(0.1 * torch.randn(a.W_enc.shape, generator=torch.Generator().manual_seed(3)))
    b, perm, signs = _signed_permutation_of(a)
    assert (signs < 0).any() and not torch.equal(perm, torch.arange(D_SAE))
    torch.testing.assert_close(b(x_unit).x_hat, a(x_unit).x_hat)  # same function

    res = pair_metrics(a, b, x_unit, oracle=True)
    assert res["dcs"] == pytest.approx(1.0, abs=1e-6)
    assert res["sae_iou"] == pytest.approx(1.0, abs=1e-12)
    assert res["sae_l2"] == pytest.approx(0.0, abs=1e-6)
    assert res["oracle_iou"] == pytest.approx(1.0, abs=1e-12)
    assert res["oracle_l2"] == pytest.approx(0.0, abs=1e-4)
    assert res["pw_mcc"] < 0.99  # PW-MCC is signed, so sign flips cost it


def test_pair_metrics_of_independent_random_saes_are_far_from_perfect(x_unit):
    res = pair_metrics(make_sae("abstopk", seed=1), make_sae("abstopk", seed=2), x_unit)
    assert res["dcs"] < 0.95 and res["sae_iou"] < 0.9 and res["sae_l2"] > 0.1 and res["oracle_iou"] < 0.9


def test_pair_metrics_reuses_cached_codes(x_unit):
    a, b = make_sae("abstopk", seed=1), make_sae("abstopk", seed=2)
    cache: dict = {}
    first = pair_metrics(a, b, x_unit, codes=cache)
    assert set(cache) == {id(a), id(b)}
    cache[id(b)] = (torch.zeros_like(cache[id(b)][0]), cache[id(b)][1])  # poison B's SAE codes
    second = pair_metrics(a, b, x_unit, codes=cache)
    assert second["sae_iou"] == 0.0 and first["sae_iou"] > 0.0  # the cached codes were used, not recomputed


# --- OMP ----------------------------------------------------------------------------------------------

def _lstsq_on_support(atoms: torch.Tensor, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    out = torch.zeros_like(code, dtype=torch.float64)
    for i in range(x.shape[0]):
        s = code[i].nonzero()[:, 0]
        out[i, s] = torch.linalg.lstsq(atoms[s].double().T, x[i].double()[:, None]).solution[:, 0]
    return out


def test_omp_coefficients_are_least_squares_on_its_support_with_exactly_k_nonzeros():
    atoms = _random_atoms(40, 16, 0)
    x = torch.randn(30, 16, generator=torch.Generator().manual_seed(1))
    code = omp(atoms, x, 6)
    assert code.shape == (30, 40)
    assert torch.equal((code != 0).sum(1), torch.full((30,), 6))
    torch.testing.assert_close(code.double(), _lstsq_on_support(atoms, x, code), rtol=1e-4, atol=1e-4)
    # the residual is orthogonal to the chosen atoms (the defining property of the least-squares refit)
    residual = x - code @ atoms
    assert ((residual @ atoms.T) * (code != 0)).abs().max() < 1e-4


def test_omp_chunking_does_not_change_the_result():
    atoms = _random_atoms(40, 16, 0)
    x = torch.randn(30, 16, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(omp(atoms, x, 5, chunk=7), omp(atoms, x, 5))


def test_omp_greedy_first_pick_is_argmax_abs_correlation():
    atoms = _random_atoms(40, 16, 2)
    x = torch.randn(25, 16, generator=torch.Generator().manual_seed(3))
    code = omp(atoms, x, 1)
    corr = x @ atoms.T
    best = corr.abs().argmax(1)
    assert torch.equal(code.abs().argmax(1), best)
    torch.testing.assert_close(code.gather(1, best[:, None])[:, 0], corr.gather(1, best[:, None])[:, 0])


def test_omp_picks_atoms_greedily_against_the_residual():
    # the t-th pick is the atom (not yet chosen) most correlated with the residual after t-1 refits
    atoms = _random_atoms(40, 16, 4)
    x = torch.randn(10, 16, generator=torch.Generator().manual_seed(5))
    for i in range(x.shape[0]):
        support: list[int] = []
        r = x[i].double()
        for _ in range(4):
            score = (atoms.double() @ r).abs()
            score[support] = -1
            support.append(int(score.argmax()))
            d = atoms[support].double().T
            r = x[i].double() - d @ torch.linalg.lstsq(d, x[i].double()[:, None]).solution[:, 0]
        assert set(omp(atoms, x[i : i + 1], 4)[0].nonzero()[:, 0].tolist()) == set(support)


def test_omp_exactly_recovers_a_sparse_code_from_an_incoherent_dictionary():
    g = torch.Generator().manual_seed(6)
    atoms = _random_atoms(128, 64, 7)
    n, k = 50, 3
    idx = torch.rand(n, 128, generator=g).argsort(1)[:, :k]
    vals = torch.randn(n, k, generator=g).sign() * (1 + torch.rand(n, k, generator=g))  # |v| in [1, 2]
    z = torch.zeros(n, 128).scatter(1, idx, vals)
    code = omp(atoms, z @ atoms, k)
    assert torch.equal(code != 0, z != 0)
    torch.testing.assert_close(code, z, rtol=1e-4, atol=1e-4)


def test_omp_rejects_invalid_k():
    atoms = _random_atoms(10, 4, 0)
    with pytest.raises(ValueError, match="k="):
        omp(atoms, torch.randn(2, 4), 0)
    with pytest.raises(ValueError, match="k="):
        omp(atoms, torch.randn(2, 4), 11)


# --- single-model metrics and ground truth -------------------------------------------------------------

@pytest.mark.parametrize("architecture", ["topk", "isae_me", "relu"])
def test_single_metrics_mse_l0_dead_and_rs_equal_direct_computation(architecture, x_unit):
    sae = make_sae(architecture)
    with torch.no_grad():
        sae.b_dec.copy_(0.05 * torch.randn(sae.cfg.d_in, generator=torch.Generator().manual_seed(0)))
    res = single_metrics(sae, x_unit, chunk=20)
    with torch.no_grad():
        z = sae.encode(x_unit)
        x_hat = z @ sae.W_dec + sae.b_dec
        if architecture == "relu":
            support = arip_support(sae.preact(x_unit - sae.b_dec), sae.cfg.k)
        else:  # the 2k largest |score| of the final encoder step, from the dense reference
            support = arip_support(dense_encode(sae, x_unit)[1], sae.cfg.k)
        r_s = float(rip_gap_exact(sae.W_dec, support).mean())
    assert res["mse"] == pytest.approx(float((x_unit - x_hat).pow(2).sum(1).mean()), rel=1e-5)
    assert res["l0"] == pytest.approx(float((z != 0).sum(1).float().mean()), rel=1e-6)
    assert res["dead_frac"] == pytest.approx(float((~(z != 0).any(0)).float().mean()))
    assert res["r_s"] == pytest.approx(r_s, rel=1e-5)
    if architecture != "relu":
        assert res["l0"] == K


def test_ground_truth_recovery_is_perfect_for_the_true_dictionary():
    true_atoms = _random_atoms(D_SAE, 16, 11)
    sae = make_sae("abstopk")
    with torch.no_grad():
        perm = torch.randperm(D_SAE, generator=torch.Generator().manual_seed(0))
        sae.W_dec.copy_(-true_atoms[perm])  # same dictionary up to a signed permutation
    res = ground_truth_recovery(sae, true_atoms)
    assert res["gt_dcs"] == pytest.approx(1.0, abs=1e-6)
    assert res["gt_recovered"] == 1.0
    res_random = ground_truth_recovery(make_sae("abstopk", seed=5), true_atoms)
    assert res_random["gt_dcs"] < 0.9 and res_random["gt_recovered"] < 0.5


def test_gt_recovered_counts_unmatched_true_atoms_as_not_recovered():
    true_atoms = _random_atoms(8, 16, 0)
    sae = make_sae("abstopk", d_sae=4, k=1)
    with torch.no_grad():
        sae.W_dec.copy_(true_atoms[:4])  # recovers exactly half of the 8 true atoms
    res = ground_truth_recovery(sae, true_atoms)
    assert res["gt_recovered"] == pytest.approx(0.5)
    assert res["gt_dcs"] == pytest.approx(0.5, abs=1e-6)


def test_single_metrics_works_for_a_float64_sae(x_unit):
    sae = make_sae("topk").double()
    x = x_unit.double()
    res = single_metrics(sae, x)
    with torch.no_grad():
        assert res["mse"] == pytest.approx(float((x - sae(x).x_hat).pow(2).sum(1).mean()))
