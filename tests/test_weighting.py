"""P2's weighted SAE on real activations: weights γ, semantic consistency, Γ = I equals plain training, tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_sae

from isae.core.runs import RunKey
from isae.data.synthetic import SyntheticConfig, SyntheticStream
from isae.experiments import p2_weighted
from isae.experiments.p2_weighted import WSAEKey
from isae.experiments.profiles import WEIGHT_ALPHAS, weighted_profile
from isae.report.p2 import check_claims
from isae.train.trainer import TrainConfig, train_many

D_IN, D_SAE, K = 16, 48, 3


def _stream() -> SyntheticStream:
    return SyntheticStream(SyntheticConfig(d_in=D_IN, n_atoms=32, k=K, seed=0), batch_size=64, seed=0)


def _cfg() -> TrainConfig:
    return TrainConfig(n_steps=10, batch_size=64, lr=3e-3, geometric_median_samples=128, log_every=5,
                       checkpoint_every=100, device="cpu", dead_after_tokens=128)


def _scaled_data(n: int = 4000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    scales = torch.linspace(0.2, 3.0, D_IN)[torch.randperm(D_IN, generator=g)]
    return torch.randn(n, D_IN, generator=g) * scales, scales


def test_gamma_with_alpha_zero_is_all_ones():
    x, _ = _scaled_data()
    g = p2_weighted.gamma(p2_weighted.dimension_variance(x), 0.0)
    assert torch.equal(g, torch.ones(D_IN))


@pytest.mark.parametrize("alpha", [0.5, 1.0])
def test_variance_weights_follow_the_variances(alpha):
    x, scales = _scaled_data()
    var = p2_weighted.dimension_variance(x)
    g = p2_weighted.gamma(var, alpha)
    assert torch.equal(torch.argsort(g), torch.argsort(var))  # monotone in the variance
    assert torch.equal(torch.argsort(var), torch.argsort(scales))  # and the variance follows the data's scales
    assert float(g.pow(2).mean()) == pytest.approx(1.0, rel=1e-5)  # our normalisation
    ratio = (g / g[0]).double()
    assert torch.allclose(ratio, (var / var[0]).double() ** alpha, rtol=1e-4)


def test_dimension_variance_is_on_unit_norm_rows():
    x, _ = _scaled_data(500)
    unit = (x / x.norm(dim=1, keepdim=True)).numpy().astype(np.float64)
    assert torch.allclose(p2_weighted.dimension_variance(x), torch.as_tensor(unit.var(0)).float(), rtol=1e-5)
    assert torch.allclose(p2_weighted.dimension_variance(10 * x), p2_weighted.dimension_variance(x), rtol=1e-5)


def test_gamma_rejects_negative_scores_and_alpha():
    with pytest.raises(ValueError):
        p2_weighted.gamma(torch.tensor([1.0, -1.0]), 0.5)
    with pytest.raises(ValueError):
        p2_weighted.gamma(torch.tensor([1.0, 2.0]), -1.0)


def test_semantic_consistency_higher_for_a_class_aligned_dimension():
    g = torch.Generator().manual_seed(0)
    n_images, per_image = 600, 4
    labels_img = torch.randint(0, 10, (n_images,), generator=g)
    groups = torch.arange(n_images).repeat_interleave(per_image)
    labels = labels_img[groups]
    x = torch.randn(len(groups), D_IN, generator=g)
    x[:, 0] += 4.0 * (labels == 3).float()  # dim 0 is a class-3 direction
    c = p2_weighted.semantic_consistency(x, groups, labels, n_top=30)
    assert c[0] == 1.0
    assert float(c[1:].max()) < 0.6 and float(c[0]) > float(c[1:].mean()) + 0.5
    both = p2_weighted.semantic_consistency(x, groups, labels, n_top=30, tail="both")
    assert float(both[0]) > float(both[1:].max())
    g_cons = p2_weighted.gamma(c, 1.0)
    assert int(g_cons.argmax()) == 0  # the consistent dim gets the largest weight


def test_weighted_loss_is_the_papers_formula(x_unit):
    sae = make_sae("topk", seed=0)
    gam = p2_weighted.gamma(torch.linspace(0.1, 2.0, 16), 1.0)
    x_hat = sae(x_unit).x_hat.detach()
    sae.set_loss_weight(gam)
    manual = (gam * (x_unit - x_hat)).pow(2).sum(1).mean()
    assert torch.allclose(sae.reconstruction_loss(x_unit, x_hat), manual)


def _train(saes):
    train_many(saes, _stream(), _cfg(), progress=False)
    return saes


def test_identity_weights_train_exactly_like_the_plain_sae():
    plain = _train({"plain": make_sae("topk", d_sae=D_SAE, k=K, seed=0)})["plain"]
    weighted = make_sae("topk", d_sae=D_SAE, k=K, seed=0)
    weighted.set_loss_weight(p2_weighted.gamma(torch.rand(D_IN, generator=torch.Generator().manual_seed(3)) + 0.1, 0.0))
    weighted = _train({"plain": weighted})["plain"]
    for (name, a), (_, b) in zip(plain.state_dict().items(), weighted.state_dict().items()):
        assert torch.equal(a, b), name
    # also when trained beside each other in one train_many call (one stream for every α, as the notebook)
    scores = torch.rand(D_IN, generator=torch.Generator().manual_seed(4)) + 0.1
    both = p2_weighted.make_saes(D_IN, D_SAE, K, {0.0: torch.ones(D_IN), 1.0: p2_weighted.gamma(scores, 1.0)}, 1)
    both = _train(both)
    for name, a in plain.state_dict().items():
        assert torch.equal(a, both[WSAEKey.of(0.0, 0)].state_dict()[name]), name


def test_non_identity_weights_change_training():
    plain = _train({"m": make_sae("topk", d_sae=D_SAE, k=K, seed=0)})["m"]
    weighted = make_sae("topk", d_sae=D_SAE, k=K, seed=0)
    weighted.set_loss_weight(p2_weighted.gamma(torch.linspace(0.1, 3.0, D_IN), 1.0))
    weighted = _train({"m": weighted})["m"]
    assert not torch.allclose(plain.W_dec, weighted.W_dec)


def test_make_saes_share_the_init_of_a_seed_across_alphas():
    scores = torch.rand(D_IN, generator=torch.Generator().manual_seed(3)) + 0.1
    saes = p2_weighted.make_saes(D_IN, D_SAE, K, p2_weighted.gammas(scores), n_seeds=2)
    assert set(saes) == {WSAEKey.of(a, s) for a in WEIGHT_ALPHAS for s in range(2)}
    assert torch.equal(saes[WSAEKey.of(0.0, 1)].W_dec, saes[WSAEKey.of(1.0, 1)].W_dec)
    assert not torch.equal(saes[WSAEKey.of(0.0, 0)].W_dec, saes[WSAEKey.of(0.0, 1)].W_dec)
    assert torch.equal(saes[WSAEKey.of(0.0, 0)].loss_weight, torch.ones(D_IN))


@pytest.mark.parametrize("profile", ["smoke", "default", "paper"])
def test_profiles_are_defined(profile):
    wp = weighted_profile(profile)
    assert wp.n_seeds >= 2 and 0.0 in wp.alphas and wp.lm_k < wp.lm_d_sae and wp.vision_k < wp.vision_d_sae
    assert weighted_profile(profile, n_seeds=3).n_seeds == 3


def test_profile_errors_name_the_problem():
    with pytest.raises(ValueError, match="profile"):
        weighted_profile("huge")
    with pytest.raises(ValueError, match="unknown"):
        weighted_profile("smoke", width=3)
    with pytest.raises(ValueError, match="n_seeds"):
        weighted_profile("smoke", n_seeds=1)
    with pytest.raises(ValueError, match="alphas"):
        weighted_profile("smoke", alphas=(0.5, 1.0))


def test_first_windows_rows_cuts_at_window_starts():
    positions = np.array([1, 2, 3, 1, 2, 5, 6, 1, 2])  # windows start at rows 0, 3, 7
    assert p2_weighted.first_windows_rows(positions, 1) == 3
    assert p2_weighted.first_windows_rows(positions, 2) == 7
    assert p2_weighted.first_windows_rows(positions, 3) == 9 == p2_weighted.first_windows_rows(positions, 10)


def test_paired_gains_pair_by_seed_and_respect_the_direction():
    runs = pd.DataFrame({"setting": ["L"] * 4, "alpha": [0.0, 0.0, 1.0, 1.0], "seed": [0, 1, 0, 1],
                         "token_purity": [0.5, 0.7, 0.6, 0.7], "token_entropy": [2.0, 2.0, 1.0, 1.5]})
    gains = p2_weighted.paired_gains(runs, ("token_purity", "token_entropy")).set_index("measure")
    assert gains.loc["token_purity", "diff"] == pytest.approx(0.05)
    assert gains.loc["token_purity", "gain_pct"] == pytest.approx(100 * 0.05 / 0.6)
    assert gains.loc["token_purity", "diff_sd"] == pytest.approx(np.std([0.1, 0.0], ddof=1))
    assert gains.loc["token_purity", "better"] and gains.loc["token_entropy", "better"]  # entropy went down
    claims = check_claims(p2_weighted.paired_gains(runs, ("token_purity",)), ["L"], None, profile="default")
    assert (claims["verdict"] == "inconclusive").all()  # two seeds (and one layer) decide nothing


def test_uniform_controls_have_smaller_k_and_keys_carry_their_identity():
    wp = weighted_profile("default")
    assert wp.control_ks(32) == (16, 8, 4, 2)
    assert wp.control_ks(8) == (4, 2, 1)  # rounded, at least 1, distinct
    saes = p2_weighted.make_saes(D_IN, D_SAE, 8, {0.0: torch.ones(D_IN)}, n_seeds=2, control_ks=(4,))
    key = WSAEKey.of(0.0, 1, control_k=4)
    control = saes[key]
    assert control.cfg.k == 4 and torch.equal(control.loss_weight, torch.ones(D_IN))
    assert torch.equal(control.W_dec, saes[WSAEKey.of(0.0, 1)].W_dec)  # same init as the uniform SAE of its seed
    assert isinstance(key, RunKey) and key.control and not WSAEKey.of(0.5, 0).control
    assert key.columns() == {"variant": "uniform k=4", "alpha": 0.0, "control_k": 4, "seed": 1}
    assert WSAEKey.of(0.5, 0).columns() == {"variant": "alpha=0.5", "alpha": 0.5, "control_k": None, "seed": 0}
    assert str(key) == "uniform k=4/seed1"  # the display label (and the training log's "model" column)


def test_train_setting_logs_the_key_columns_of_every_run():
    saes, log = p2_weighted.train_setting("L", _stream(), {0.0: torch.ones(D_IN), 1.0: torch.linspace(0.5, 1.5, D_IN)},
                                        D_SAE, K, n_seeds=2, train_cfg=_cfg(), control_ks=(2,), progress=False)
    assert len(saes) == 6
    rows = log.drop_duplicates("model").set_index("model")
    for key in saes:
        assert rows.loc[str(key), ["variant", "alpha", "seed"]].tolist() == [key.variant, key.alpha, key.seed]
    assert list(log.columns[:2]) == ["setting", "model"] and set(log["setting"]) == {"L"}


def test_summarise_is_mean_and_sd_over_seeds_per_variant():
    runs = pd.DataFrame({"setting": ["L"] * 4, "variant": ["alpha=0", "alpha=0", "alpha=1", "alpha=1"],
                         "alpha": [0.0, 0.0, 1.0, 1.0], "k": [4] * 4, "seed": [0, 1, 0, 1],
                         "mse": [0.1, 0.3, 0.2, 0.2], "l0": [4.0, 4.0, 3.0, 5.0]})
    table = p2_weighted.summarise(runs, ("mse", "l0", "absent"))
    assert list(table.columns) == ["setting", "variant", "alpha", "k", "mse", "mse_sd", "l0", "l0_sd", "n_seeds"]
    assert table["mse"].tolist() == pytest.approx([0.2, 0.2]) and table["n_seeds"].tolist() == [2, 2]
    assert table["mse_sd"].iloc[0] == pytest.approx(np.std([0.1, 0.3], ddof=1)) and table["mse_sd"].iloc[1] == 0


def test_frontier_comparison_interpolates_the_uniform_curve_at_the_weighted_mse():
    runs = pd.DataFrame({
        "setting": ["L"] * 5, "seed": [0] * 5, "alpha": [0.0, 0.0, 0.0, 1.0, 0.5],
        "k": [32, 16, 8, 32, 32], "mse": [0.2, 0.3, 0.4, 0.35, 0.5],
        "token_purity": [0.30, 0.40, 0.60, 0.45, 0.9]})
    f = p2_weighted.frontier_comparison(runs, "token_purity").set_index("alpha")
    assert f.loc[1.0, "frontier"] == pytest.approx(0.50)  # halfway between k=16 (0.40) and k=8 (0.60)
    assert f.loc[1.0, "excess"] == pytest.approx(-0.05)  # weighting buys less purity than lowering k
    assert np.isnan(f.loc[0.5, "excess"]) and f.loc[0.5, "n_matched"] == 0  # MSE beyond the frontier: no extrapolation
    claims = check_claims(pd.DataFrame(columns=["alpha", "measure", "setting", "diff", "better", "beyond_2se",
                                                          "gain_pct"]), ["L"], None, frontiers=f.reset_index(),
                          profile="default")
    row = claims[claims["claim"].str.contains("α=1:")].iloc[0]
    assert row["verdict"] == "inconclusive" and row["difference"] == pytest.approx(-0.05)  # one seed
    assert claims[claims["claim"].str.contains("α=0.5:")]["verdict"].iloc[0] == "missing"  # nothing matched


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_real_and_toy_weights_are_one_rule_with_one_normalisation(alpha):
    from isae.toy.data import ToyConfig, make_w_p, polysemanticity, wsae_weights

    w_p = make_w_p(ToyConfig(w_p="heterogeneous"))
    toy = wsae_weights(w_p, alpha)  # γ_j = PR_j^(−α), mean γ² = 1
    real = p2_weighted.gamma(1.0 / polysemanticity(w_p), alpha)  # γ_j = s_j^α with s_j = 1 / PR_j
    assert torch.allclose(toy, real, rtol=1e-5)
    assert float(real.pow(2).mean()) == pytest.approx(1.0, rel=1e-5)
