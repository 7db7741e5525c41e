"""P2's toy model: the generator (sparsity, superposition, determinism), the weighted loss, the tied SAE bank,
the measures, and the two recovery facts the notebook relies on (TopK recovers at S → 1 with n_m ≥ n; an SAE
without an activation does not)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from isae.experiments import p2_toy as toy

torch.set_num_threads(1)


def _stream(sparsity: float = 0.9, n: int = 200, n_p: int = 20, w_p: str = "gaussian", batch: int = 64, seed: int = 0):
    return toy.ToyStream(toy.ToyConfig(n_features=n, n_input=n_p, sparsity=sparsity, w_p=w_p, seed=seed), batch, seed=seed)


# --- generator -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("sparsity", [0.2, 0.5, 0.9, 0.99])
def test_fraction_of_zero_features_matches_sparsity(sparsity):
    x, _ = _stream(sparsity).sample(4096, step=0)
    zero = (x == 0).float().mean().item()
    # 819,200 Bernoulli draws: the standard error is below 6e-4
    assert zero == pytest.approx(sparsity, abs=3e-3)
    assert bool((x >= 0).all()) and bool((x <= 1).all())
    nonzero = x[x > 0]
    assert nonzero.mean().item() == pytest.approx(0.5, abs=0.02)  # Uniform(0, 1) when on


def test_observed_inputs_are_the_superposition_of_the_true_features():
    stream = _stream(0.8)
    x, x_p = stream.sample(256, step=3)
    assert x.shape == (256, 200) and x_p.shape == (256, 20)
    assert torch.allclose(x_p, x @ stream.w_p.T, atol=1e-5)
    assert torch.allclose(stream.w_p.norm(dim=0), torch.ones(200), atol=1e-5)  # unit-norm columns


def test_batches_are_a_pure_function_of_seed_and_step():
    a, b = _stream(), _stream()
    assert torch.equal(a.batch(5), b.batch(5))
    b.batch(0), b.batch(7)  # asking for other steps first changes nothing
    assert torch.equal(a.batch(5), b.batch(5))
    assert not torch.equal(a.batch(5), a.batch(6))
    assert not torch.equal(a.batch(5), _stream(seed=1).batch(5))
    assert not torch.equal(a.held_out(64)[1], a.batch(0))


def test_sparsity_levels_drawn_together_are_coupled_and_each_has_its_own_law():
    stream = _stream()
    x, x_p = stream.sample(512, step=2, sparsity=(0.5, 0.9))
    assert x.shape == (2, 512, 200) and x_p.shape == (2, 512, 20)
    assert bool(((x[1] > 0) <= (x[0] > 0)).all())  # on at S=0.9 ⇒ on at S=0.5, same value
    assert torch.equal(x[1], _stream(0.9).sample(512, step=2)[0])


def test_heterogeneous_w_p_spans_monosemantic_to_polysemantic_dims():
    w = toy.make_w_p(toy.ToyConfig(w_p="heterogeneous"))
    pr = toy.polysemanticity(w)
    assert bool((w.abs().sum(0) > 0).all())  # every feature is visible somewhere
    assert pr.min() < 3 and pr.max() > 50
    gauss = toy.polysemanticity(toy.make_w_p(toy.ToyConfig()))
    assert gauss.max() / gauss.min() < 1.5  # Gaussian W_p: every dim about equally polysemantic


def test_polysemanticity_counts_features_per_dim():
    w = torch.zeros(3, 6)
    w[0, 0] = 1.0            # one feature
    w[1, :2] = 1.0           # two equal features
    w[2, :] = 1.0            # all six
    assert toy.polysemanticity(w).tolist() == pytest.approx([1.0, 2.0, 6.0])


def test_wsae_weights_are_smaller_on_more_polysemantic_dims():
    w = toy.make_w_p(toy.ToyConfig(w_p="heterogeneous"))
    pr = toy.polysemanticity(w)
    g = toy.wsae_weights(w, 1.0)
    assert g.pow(2).mean().item() == pytest.approx(1.0, rel=1e-5)
    assert np.corrcoef(pr.log().numpy(), g.log().numpy())[0, 1] == pytest.approx(-1.0, abs=1e-5)
    assert torch.allclose(toy.wsae_weights(w, 0.0), torch.ones(20))


def test_config_errors_say_what_is_wrong():
    with pytest.raises(ValueError, match="sparsity"):
        toy.ToyConfig(sparsity=1.0)
    with pytest.raises(ValueError, match="activation"):
        toy.ToySAEConfig(activation="gelu")
    with pytest.raises(ValueError, match="w_p"):
        toy.ToyConfig(w_p="orthogonal")
    with pytest.raises(ValueError, match="gamma"):
        toy.ToySAE(toy.ToySAEConfig()).set_gamma(torch.zeros(20))


# --- weighted loss and the SAE bank -------------------------------------------------------------------------
def test_weighted_loss_with_identity_weights_is_the_plain_loss():
    gen = torch.Generator().manual_seed(0)
    x_p = torch.randn(3, 32, 20, generator=gen)
    sae = toy.ToySAE(toy.ToySAEConfig(activation="relu"), seeds=(0, 1, 2))
    losses = sae.losses(x_p)
    plain = (x_p - sae(x_p)[1]).pow(2).sum(-1).mean(-1)
    assert torch.allclose(losses["weighted"], plain)
    assert torch.allclose(losses["weighted"], losses["mse"])
    err = torch.randn(32, 20, generator=gen)
    assert torch.allclose(toy.weighted_loss(err, torch.ones(20)), toy.weighted_loss(err))
    gamma = torch.rand(20, generator=gen) + 0.5  # and a non-trivial Γ scales each dim's squared error by γ²
    assert toy.weighted_loss(err, gamma).item() == pytest.approx((err.pow(2) * gamma.pow(2)).sum(1).mean().item(), rel=1e-5)
    sae.set_gamma(gamma)
    assert not torch.allclose(sae.losses(x_p)["weighted"], plain)


def test_tied_sae_encodes_and_decodes_with_one_matrix():
    cfg = toy.ToySAEConfig(n_input=5, n_latents=7, activation="topk", k=2)
    sae = toy.ToySAE(cfg, seeds=(3,))
    x_p = torch.randn(4, 5, generator=torch.Generator().manual_seed(1))
    x_m, x_hat = sae(x_p)
    pre = x_p @ sae.W[0].T
    assert ((x_m[0] != 0).sum(1) <= 2).all() and bool((x_m >= 0).all())
    top = pre.topk(2, dim=1)
    assert torch.allclose(x_m[0].gather(1, top.indices), top.values.relu())
    assert torch.allclose(x_hat[0], x_m[0] @ sae.W[0])


def test_activations():
    pre = torch.tensor([[-1.0, 0.05, 0.2, 3.0]])
    act = lambda name: toy.activate(pre, toy.ToySAEConfig(n_latents=4, activation=name))  # noqa: E731
    assert torch.equal(act("none"), pre)
    assert torch.equal(act("relu"), torch.tensor([[0.0, 0.05, 0.2, 3.0]]))
    assert torch.equal(act("jumprelu"), torch.tensor([[0.0, 0.0, 0.2, 3.0]]))
    assert torch.equal(act("topk"), torch.tensor([[0.0, 0.0, 0.2, 3.0]]))


def test_a_bank_trains_each_model_as_if_alone():
    stream = _stream(0.95, n=20, n_p=8)
    cfg = toy.ToySAEConfig(n_input=8, n_latents=20, activation="topk")
    train = toy.ToyTrainConfig(n_steps=20, batch_size=32, lr=1e-2, log_every=10)
    bank = toy.ToySAE(cfg, seeds=(0, 1))
    toy.train_toy(bank, stream, train, progress=False)
    alone = toy.ToySAE(cfg, seeds=(1,))
    toy.train_toy(alone, stream, train, progress=False)
    assert torch.allclose(bank.W[1], alone.W[0], atol=1e-5)


def test_ground_truth_sae_measures_as_perfect():
    stream = _stream(0.99)
    x, x_p = stream.held_out(2048)
    sae = toy.ToySAE.from_atoms(toy.ToySAEConfig(activation="topk"), stream.w_p.T)
    m = toy.toy_metrics(sae, stream.w_p, x, x_p)[0]
    assert m["recovered"] == 1.0 and m["matched_cos"] == pytest.approx(1.0, abs=1e-5)
    assert m["features_per_latent"] < 2.5  # only interference from co-active features
    random = toy.toy_metrics(toy.ToySAE(toy.ToySAEConfig(activation="topk"), seeds=(0,)), stream.w_p, x, x_p)[0]
    assert random["recovered"] == 0.0 and random["features_per_latent"] > m["features_per_latent"]
    assert m["loss_true"] < 0.6 < random["loss_true"]


# --- recovery (P2's conditions on a small instance) --------------------------------------------------------
N, N_P = 40, 10


def _train_small(activation: str, n_latents: int, sparsity: float = 0.98, steps: int = 1500):
    stream = _stream(sparsity, n=N, n_p=N_P, batch=256)
    sae = toy.ToySAE(toy.ToySAEConfig(n_input=N_P, n_latents=n_latents, activation=activation), seeds=(0, 1))
    toy.train_toy(sae, stream, toy.ToyTrainConfig(n_steps=steps, batch_size=256, lr=1e-2, log_every=steps),
                  progress=False)
    x, x_p = stream.held_out(4096)
    return toy.toy_metrics(sae, stream.w_p, x, x_p)


def test_topk_sae_recovers_nearly_all_features_when_very_sparse_and_wide_enough():
    for m in _train_small("topk", n_latents=2 * N):
        assert m["recovered"] >= 0.9, m
        assert m["matched_cos"] > 0.95
        assert m["features_per_latent"] < 2.0


def test_sae_without_activation_does_not_recover_features():
    for m in _train_small("none", n_latents=2 * N, steps=500):
        assert m["recovered"] <= 0.1, m
        assert m["features_per_latent"] > 0.5 * N  # every latent mixes most features


def test_too_few_latents_cannot_recover_all_features():
    for m in _train_small("topk", n_latents=N // 2):
        assert m["recovered"] <= 0.5


# --- profiles and claims ------------------------------------------------------------------------------------
def test_toy_profiles_reuse_the_profile_switch():
    assert set(toy.TOY_PROFILES) == {"smoke", "default", "paper"}
    assert toy.toy_profile("smoke", n_steps=7).n_steps == 7
    with pytest.raises(ValueError, match="profile"):
        toy.toy_profile("huge")
    with pytest.raises(ValueError, match="unknown toy parameter"):
        toy.toy_profile("smoke", n_stpes=7)
