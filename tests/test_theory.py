"""P1's theory measured: δ_S against a dense eigendecomposition, Theorem 3.6's constants against a hand
computation, the greedy worst case against brute force, Theorem 3.2's construction, richness and diversity."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from isae.eval import theory


def _unit_atoms(k, n, seed=0):
    a = torch.randn(k, n, generator=torch.Generator().manual_seed(seed))
    return a / a.norm(dim=1, keepdim=True)


def test_rip_constants_match_numpy_eigenvalues_with_padded_supports():
    atoms = _unit_atoms(20, 8)
    supports = torch.tensor([[0, 1, 2, 3], [4, 5, -1, -1], [7, 3, 9, -1]])
    got = theory.rip_constants(atoms, supports)
    for row, value in zip(supports.tolist(), got.tolist()):
        s = [i for i in row if i >= 0]
        d = atoms[s].double().numpy()
        want = np.abs(np.linalg.eigvalsh(d @ d.T) - 1).max()
        assert value == pytest.approx(want, abs=1e-5)
    # a pair's δ is its |cos|
    assert got[1].item() == pytest.approx(abs(float(atoms[4] @ atoms[5])), abs=1e-5)


def test_supports_and_pair_unions_are_the_code_supports():
    z = torch.tensor([[0.0, 2.0, 0.0, -1.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 3.0, 0.5]])
    assert theory.support_sets(z).tolist() == [[1, 3], [0, -1], [2, 3]]
    unions = theory.pair_unions(z, 50, seed=1)
    sets = [set(np.flatnonzero(r.numpy())) for r in z]
    possible = [sets[a] | sets[b] for a in range(3) for b in range(3) if a != b]
    for row in unions.tolist():
        assert {i for i in row if i >= 0} in possible


def test_greedy_worst_case_is_below_brute_force_and_exact_for_pairs():
    atoms = _unit_atoms(9, 4, seed=3)
    for size in (2, 3, 4):
        g_support, g_delta = theory.greedy_worst_support(atoms, size)
        b_support, b_delta = theory.brute_worst_support(atoms, size)
        assert len(set(g_support)) == size and g_delta <= b_delta + 1e-6
        assert g_delta >= 0.8 * b_delta  # greedy finds most of the worst case on this tiny dictionary
        if size == 2:
            assert g_delta == pytest.approx(b_delta, abs=1e-6)
    with pytest.raises(ValueError, match="size=10"):
        theory.greedy_worst_support(atoms, 10)


def test_theorem_3_6_constants_by_hand():
    out = theory.theorem_3_6(delta=0.2, zeta=0.5, eps=0.01, bound_x=1.0, k=4)
    alpha = math.sqrt(8 / 9)
    eta = 0.04 / (0.5 * math.sqrt(0.8))
    c1 = 1 + 2 / alpha
    assert out["alpha"] == pytest.approx(alpha) and out["eta"] == pytest.approx(eta) and out["C1"] == pytest.approx(c1)
    assert out["eps_max"] == pytest.approx(0.5 * math.sqrt(0.8) * alpha / 8)
    assert out["premise_holds"] and out["premise_ratio"] == pytest.approx(0.01 / out["eps_max"])
    assert out["atom_bound"] == pytest.approx(2 * c1 * eta)
    assert out["code_bound"] == pytest.approx(0.02 / math.sqrt(0.8) + 4 * c1 * eta * 1.01 / 0.8)
    assert not theory.theorem_3_6(0.5, 0.5, 1.0, 1.0, 4)["premise_holds"]
    assert math.isnan(theory.theorem_3_6(1.2, 0.5, 0.01, 1.0, 4)["alpha"])  # no aRIP: nothing applies


def test_theorem_3_2_two_encoders_same_error_different_supports():
    c = theory.theorem_3_2(k=5, eps=0.1, n_inputs=300, d_in=7)
    err_a = (c.x - c.codes_a @ c.atoms).norm(dim=1)
    err_b = (c.x - c.codes_b @ c.atoms).norm(dim=1)
    assert torch.allclose(err_a, err_b, atol=1e-10) and err_a.max() < 1e-10
    same = ((c.codes_a != 0) == (c.codes_b != 0)).all(1)
    assert same.float().mean() == 0.0  # supports differ on every input (Gaussian coefficients are never zero)
    assert ((c.codes_a != 0).sum(1) == 5).all() and ((c.codes_b != 0).sum(1) == 5).all()
    with pytest.raises(ValueError, match="eps=1"):
        theory.theorem_3_2(k=5, eps=1.0)


def test_richness_finds_an_atom_that_never_fires_alone():
    z = torch.zeros(40, 4)
    z[:20, 0] = 1.0
    z[:10, 1] = 1.0  # atom 1 only ever fires with atom 0
    z[20:, 2] = 1.0
    z[30:, 3] = 1.0  # atom 3 only ever fires with atom 2
    r = theory.richness(z, n_pairs=2000, min_fires=5)
    assert r["live_atoms"] == 4 and r["always_cooccur_pairs"] == 2
    # the sole shared atom of a pair: 0 (pair from rows 10..19 and 0..19), 2 likewise; 1 and 3 never alone
    assert r["sole_shared_frac"] == pytest.approx(0.5)


def test_diversity_is_the_smallest_singular_value_on_repeated_supports():
    gen = torch.Generator().manual_seed(0)
    block = torch.randn(12, 2, generator=gen).abs() + 0.1
    z = torch.zeros(13, 5)
    z[:12, [1, 3]] = block
    z[12, 0] = 1.0  # a support seen once: not measurable
    d = theory.diversity(z)
    assert d["supports"] == 2 and d["measurable_supports"] == 1
    assert d["covered_frac"] == pytest.approx(12 / 13)
    assert d["zeta_min"] == pytest.approx(np.linalg.svd(block.double().numpy(), compute_uv=False)[-1] / math.sqrt(12))


def test_bootstrap_interval_covers_the_exhaustive_value():
    atoms = _unit_atoms(64, 16, seed=5)
    gen = torch.Generator().manual_seed(2)
    supports = torch.stack([torch.randperm(64, generator=gen)[:6] for _ in range(4000)])
    exhaustive = theory.delta_summary(theory.rip_constants(atoms, supports))
    sample = theory.bootstrap_summary(theory.rip_constants(atoms, supports[:300]), n_boot=300)
    for stat in ("mean", "q50", "q90"):
        assert sample.loc[stat, "lo"] <= exhaustive[stat] <= sample.loc[stat, "hi"]


def test_pooled_diversity_of_signed_iid_values_is_their_rms():
    gen = torch.Generator().manual_seed(0)
    z = torch.zeros(20_000, 30)
    idx = torch.stack([torch.randperm(30, generator=gen)[:3] for _ in range(20_000)])
    z.scatter_(1, idx, torch.randn(20_000, 3, generator=gen))
    # E[v vᵀ] = I for independent standard normal values: σ_min / √n → 1
    assert theory.pooled_diversity(z) == pytest.approx(1.0, abs=0.05)
    assert math.isnan(theory.pooled_diversity(torch.zeros(5, 4)))


def test_construction_table_shows_the_gap_that_does_not_close():
    from isae.experiments import p1_theory

    table = p1_theory.construction_table(6, (0.3, 0.01), n_inputs=200)
    assert (table["dcs"] == 1.0).all() and (table["supports_differ"] == 1.0).all()
    assert table["sae_iou"].to_numpy() == pytest.approx([4 / 8, 4 / 8])  # (k − 2) / (k + 2)
    assert (table["recon_err_a"] < 1e-10).all() and (table["recon_err_b"] < 1e-10).all()
    assert (table["δ on union support"] >= 1 - 1e-6).all()  # k + 2 atoms in a k-dimensional span


def test_theory_claims_read_the_tables():
    from isae.experiments import p1_theory

    deltas = pd.DataFrame([
        {"setting": "iid", "model": m, "dictionary": "learned", "kind": "pair union", "mean": mean, "mean_sd": 0.01,
         "q50": mean, "q99": 0.9, "frac_below_1": frac, "frac_below_1_sd": 0.001, "n_seeds": 3}
        for m, mean, frac in (("AbsTopK", 0.7, 0.995), ("iSAE", 0.5, 0.98))])
    bounds = pd.DataFrame([{"setting": "iid", "δ reading": "sup", "delta": d, "premise_holds": ok,
                            "premise_ratio": r} for d, ok, r in ((1.2, False, float("nan")), (0.5, True, 0.5))])
    claims = p1_theory.theory_claims(deltas, bounds, "default")
    arip = claims[claims["claim"].str.startswith("learned")].set_index("setting")["verdict"]
    assert arip.to_dict() == {"iid, AbsTopK": "holds", "iid, iSAE": "fails"}
    assert claims[claims["claim"].str.contains("regulariser")]["verdict"].iloc[0] == "holds"
    premise = claims[claims["claim"].str.contains("3.6")].iloc[0]
    assert premise["verdict"] == "holds" and "(of 2)" in premise["ours"] and "1/2 pairs" in premise["ours"]
    # without iSAE the regulariser claim is missing, not failing
    alone = p1_theory.theory_claims(deltas[deltas["model"] == "AbsTopK"], bounds, "default")
    assert alone[alone["claim"].str.contains("regulariser")]["verdict"].iloc[0] == "missing"


def test_groups_are_rebuilt_from_saved_saes_and_their_provenance(tmp_path):
    from isae.core.io import save_sae
    from isae.core.models import SAE, SAEConfig
    from isae.data.synthetic import SyntheticConfig, SyntheticStream
    from isae.experiments import p1_theory

    data = SyntheticConfig(d_in=8, n_atoms=12, k=2, seed=3)
    for seed in (0, 1):
        sae = SAE(SAEConfig(d_in=8, d_sae=12, k=2, architecture="abstopk"), seed=seed)
        save_sae(sae, tmp_path / f"iid_abstopk_seed{seed}", setting="iid", seed=seed, data=data.to_dict())
    groups = p1_theory.load_groups(tmp_path, ("iid", "mixture"), n_eval=64)
    assert len(groups) == 1 and groups[0].model == "AbsTopK" and sorted(groups[0].saes) == [0, 1]
    x, z = SyntheticStream(data, batch_size=1, seed=3).held_out(64)
    assert torch.equal(groups[0].x, x) and torch.equal(groups[0].true_codes, z)
    deltas = p1_theory.delta_table(groups, n_supports=128)
    assert set(deltas["dictionary"]) == {"learned", "ground truth", "random"}
    bounds = p1_theory.bound_table(groups, n_supports=128)
    assert list(bounds["δ reading"]) == ["sup", "q99"] and (bounds["delta"] >= 0).all()
