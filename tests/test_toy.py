"""P2's toy model: the generator (sparsity, superposition, determinism), the weighted loss, the tied SAE bank,
the measures, and the two recovery facts the notebook relies on (TopK recovers at S → 1 with n_m ≥ n; an SAE
without an activation does not)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from isae.core.losses import unit_mean_square, weighted_mse
from isae.experiments import p2_toy
from isae.experiments.profiles import TOY_PROFILES, toy_profile
from isae.toy.data import ToyConfig, ToyStream, make_w_p, polysemanticity, wsae_weights
from isae.toy.model import ToySAE, ToySAEConfig, activate
from isae.train.trainer import BankTrainConfig, train_bank

torch.set_num_threads(1)


def _stream(sparsity: float = 0.9, n: int = 200, n_p: int = 20, w_p: str = "gaussian", batch: int = 64, seed: int = 0):
    return ToyStream(ToyConfig(n_features=n, n_input=n_p, sparsity=sparsity, w_p=w_p, seed=seed), batch, seed=seed)


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
    w = make_w_p(ToyConfig(w_p="heterogeneous"))
    pr = polysemanticity(w)
    assert bool((w.abs().sum(0) > 0).all())  # every feature is visible somewhere
    assert pr.min() < 3 and pr.max() > 50
    gauss = polysemanticity(make_w_p(ToyConfig()))
    assert gauss.max() / gauss.min() < 1.5  # Gaussian W_p: every dim about equally polysemantic


def test_polysemanticity_counts_features_per_dim():
    w = torch.zeros(3, 6)
    w[0, 0] = 1.0            # one feature
    w[1, :2] = 1.0           # two equal features
    w[2, :] = 1.0            # all six
    assert polysemanticity(w).tolist() == pytest.approx([1.0, 2.0, 6.0])


def test_wsae_weights_are_smaller_on_more_polysemantic_dims():
    w = make_w_p(ToyConfig(w_p="heterogeneous"))
    pr = polysemanticity(w)
    g = wsae_weights(w, 1.0)
    assert g.pow(2).mean().item() == pytest.approx(1.0, rel=1e-5)
    assert np.corrcoef(pr.log().numpy(), g.log().numpy())[0, 1] == pytest.approx(-1.0, abs=1e-5)
    assert torch.allclose(wsae_weights(w, 0.0), torch.ones(20))


def test_config_errors_say_what_is_wrong():
    with pytest.raises(ValueError, match="sparsity"):
        ToyConfig(sparsity=1.0)
    with pytest.raises(ValueError, match="activation"):
        ToySAEConfig(activation="gelu")
    with pytest.raises(ValueError, match="w_p"):
        ToyConfig(w_p="orthogonal")
    with pytest.raises(ValueError, match="gamma"):
        ToySAE(ToySAEConfig()).set_gamma(torch.zeros(20))


# --- weighted loss and the SAE bank -------------------------------------------------------------------------
def test_weighted_loss_with_identity_weights_is_the_plain_loss():
    gen = torch.Generator().manual_seed(0)
    x_p = torch.randn(3, 32, 20, generator=gen)
    sae = ToySAE(ToySAEConfig(activation="relu"), seeds=(0, 1, 2))
    losses = sae.losses(x_p)
    plain = (x_p - sae(x_p)[1]).pow(2).sum(-1).mean(-1)
    assert torch.allclose(losses["weighted"], plain)
    assert torch.allclose(losses["weighted"], losses["mse"])
    err = torch.randn(32, 20, generator=gen)
    assert torch.allclose(weighted_mse(err, torch.ones(20)), weighted_mse(err))
    gamma = torch.rand(20, generator=gen) + 0.5  # and a non-trivial Γ scales each dim's squared error by γ²
    assert weighted_mse(err, gamma).item() == pytest.approx((err.pow(2) * gamma.pow(2)).sum(1).mean().item(), rel=1e-5)
    sae.set_gamma(gamma)
    assert not torch.allclose(sae.losses(x_p)["weighted"], plain)


def test_weighted_mse_is_the_mean_over_inputs_of_the_weighted_squared_norm():
    gen = torch.Generator().manual_seed(5)
    err = torch.randn(3, 16, 6, generator=gen, dtype=torch.float64)
    gamma = torch.rand(3, 6, generator=gen, dtype=torch.float64) + 0.1  # one γ per model of a bank
    expected = torch.tensor([sum(sum((gamma[m, j] * err[m, i, j]) ** 2 for j in range(6)) for i in range(16)) / 16
                             for m in range(3)], dtype=torch.float64)
    assert torch.allclose(weighted_mse(err, gamma), expected)
    one = torch.rand(6, generator=gen, dtype=torch.float64) + 0.1  # a single γ for one model's [batch, d] errors
    assert torch.allclose(weighted_mse(err[0], one), ((err[0] * one) ** 2).sum(1).mean())
    assert torch.equal(weighted_mse(err), err.pow(2).sum(-1).mean(-1))


def test_unit_mean_square_normalises_and_leaves_ones_alone():
    g = torch.tensor([0.5, 2.0, 3.0, 10.0], dtype=torch.float64)
    n = unit_mean_square(g)
    assert n.pow(2).mean().item() == pytest.approx(1.0, rel=1e-12)
    assert torch.allclose(n / n[0], g / g[0])  # a rescaling: ratios kept
    assert torch.equal(unit_mean_square(torch.ones(5)), torch.ones(5))


def test_toy_stream_follows_the_stream_protocol():
    stream = _stream()
    assert stream.steps_per_pass is None and stream.d_in == 20
    assert torch.equal(stream.batch(3), stream.sample(stream.batch_size, 3)[1])
    coupled = stream.coupled([0.9, 0.5, 0.9])
    b = coupled.batch(4)
    assert b.shape == (3, 64, 20) and coupled.steps_per_pass is None
    coupled.batch(0)
    assert torch.equal(coupled.batch(4), b)  # pure in the step
    both = stream.sample(64, 4, sparsity=(0.5, 0.9))[1]
    assert torch.equal(b[0], both[1]) and torch.equal(b[1], both[0]) and torch.equal(b[2], both[1])
    assert coupled.held_out(8).shape == (3, 8, 20)


def _reference_toy_loop(sae, stream, cfg, sparsity):
    """A plain, independent toy loop: Adam over the bank, the lr schedule by hand, the summed per-model loss."""
    levels = sorted(set(sparsity))
    which = torch.as_tensor([levels.index(s) for s in sparsity])
    opt = torch.optim.Adam([p for p in sae.parameters() if p.requires_grad], lr=cfg.lr)
    for step in range(cfg.n_steps):
        start = cfg.n_steps * (1.0 - cfg.decay_frac)
        lr = cfg.lr if step < start else cfg.lr * (cfg.n_steps - step) / max(cfg.n_steps - start, 1.0)
        for group in opt.param_groups:
            group["lr"] = lr
        x_p = stream.sample(stream.batch_size, step, sparsity=levels)[1][which]
        total = sae.losses(x_p)["total"].sum()
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()


@pytest.mark.parametrize("bias,l1", [(False, 0.0), (True, 0.05)])
def test_train_bank_trains_a_toy_bank_exactly_like_the_reference_loop(bias, l1):
    stream = _stream(n=30, n_p=8, batch=32)
    cfg = ToySAEConfig(n_input=8, n_latents=30, activation="relu", bias=bias, l1_coef=l1)
    train = BankTrainConfig(n_steps=25, lr=1e-2, decay_frac=0.4, log_every=10)
    sparsity = [0.9, 0.5, 0.9]
    ours, ref = ToySAE(cfg, seeds=(0, 1, 2)), ToySAE(cfg, seeds=(0, 1, 2))
    gamma = torch.stack([wsae_weights(stream.w_p, a) for a in (0.0, 1.0, 0.5)])
    ours.set_gamma(gamma)
    ref.set_gamma(gamma)
    log = train_bank(ours, stream.coupled(sparsity), train, progress=False)
    _reference_toy_loop(ref, stream, train, sparsity)
    assert torch.equal(ours.W, ref.W) and torch.equal(ours.b, ref.b)
    assert sorted(log["step"].unique()) == [10, 20, 25] and set(log["model"]) == {0, 1, 2}


def test_bank_learning_rate_is_constant_then_decays_linearly_to_zero():
    cfg = BankTrainConfig(n_steps=10, lr=1.0, decay_frac=0.2)
    assert [cfg.lr_at(s) for s in range(10)] == pytest.approx([1.0] * 8 + [1.0, 0.5])
    assert BankTrainConfig(n_steps=10, lr=1.0, decay_frac=0.0).lr_at(9) == 1.0


def test_tied_sae_encodes_and_decodes_with_one_matrix():
    cfg = ToySAEConfig(n_input=5, n_latents=7, activation="topk", k=2)
    sae = ToySAE(cfg, seeds=(3,))
    x_p = torch.randn(4, 5, generator=torch.Generator().manual_seed(1))
    x_m, x_hat = sae(x_p)
    pre = x_p @ sae.W[0].T
    assert ((x_m[0] != 0).sum(1) <= 2).all() and bool((x_m >= 0).all())
    top = pre.topk(2, dim=1)
    assert torch.allclose(x_m[0].gather(1, top.indices), top.values.relu())
    assert torch.allclose(x_hat[0], x_m[0] @ sae.W[0])


def test_activations():
    pre = torch.tensor([[-1.0, 0.05, 0.2, 3.0]])

    def act(name):
        return activate(pre, ToySAEConfig(n_latents=4, activation=name))

    assert torch.equal(act("none"), pre)
    assert torch.equal(act("relu"), torch.tensor([[0.0, 0.05, 0.2, 3.0]]))
    assert torch.equal(act("jumprelu"), torch.tensor([[0.0, 0.0, 0.2, 3.0]]))
    assert torch.equal(act("topk"), torch.tensor([[0.0, 0.0, 0.2, 3.0]]))


def test_a_bank_trains_each_model_as_if_alone():
    stream = _stream(0.95, n=20, n_p=8)
    cfg = ToySAEConfig(n_input=8, n_latents=20, activation="topk")
    train = BankTrainConfig(n_steps=20, lr=1e-2, log_every=10)
    bank = ToySAE(cfg, seeds=(0, 1))
    train_bank(bank, stream, train, progress=False)
    alone = ToySAE(cfg, seeds=(1,))
    train_bank(alone, stream, train, progress=False)
    assert torch.allclose(bank.W[1], alone.W[0], atol=1e-5)


def test_ground_truth_sae_measures_as_perfect():
    stream = _stream(0.99)
    x, x_p = stream.held_out(2048)
    sae = ToySAE.from_atoms(ToySAEConfig(activation="topk"), stream.w_p.T)
    m = p2_toy.toy_metrics(sae, stream.w_p, x, x_p)[0]
    assert m["recovered"] == 1.0 and m["matched_cos"] == pytest.approx(1.0, abs=1e-5)
    assert m["features_per_latent"] < 2.5  # only interference from co-active features
    random = p2_toy.toy_metrics(ToySAE(ToySAEConfig(activation="topk"), seeds=(0,)), stream.w_p, x, x_p)[0]
    assert random["recovered"] == 0.0 and random["features_per_latent"] > m["features_per_latent"]
    assert m["loss_true"] < 0.6 < random["loss_true"]


# --- recovery (P2's conditions on a small instance) --------------------------------------------------------
N, N_P = 40, 10


def _train_small(activation: str, n_latents: int, sparsity: float = 0.98, steps: int = 1500):
    stream = _stream(sparsity, n=N, n_p=N_P, batch=256)
    sae = ToySAE(ToySAEConfig(n_input=N_P, n_latents=n_latents, activation=activation), seeds=(0, 1))
    train_bank(sae, stream, BankTrainConfig(n_steps=steps, lr=1e-2, log_every=steps),
                  progress=False)
    x, x_p = stream.held_out(4096)
    return p2_toy.toy_metrics(sae, stream.w_p, x, x_p)


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
    assert set(TOY_PROFILES) == {"smoke", "default", "paper"}
    assert toy_profile("smoke", n_steps=7).n_steps == 7
    with pytest.raises(ValueError, match="profile"):
        toy_profile("huge")
    with pytest.raises(ValueError, match="unknown toy parameter"):
        toy_profile("smoke", n_stpes=7)


def test_train_bank_stops_on_a_non_finite_loss():
    from isae.train.trainer import TrainingDiverged

    class NaNAt:
        steps_per_pass = None

        def __init__(self, inner, step):
            self.inner, self.step, self.d_in = inner, step, inner.d_in

        def identity(self):
            return self.inner.identity()

        def batch(self, step):
            x = self.inner.batch(step)
            return torch.full_like(x, float("nan")) if step == self.step else x

    bank = ToySAE(ToySAEConfig(n_input=8, n_latents=10), seeds=(0,))
    with pytest.raises(TrainingDiverged, match="step 3"):
        train_bank(bank, NaNAt(_stream(n=10, n_p=8), 3), BankTrainConfig(n_steps=10, lr=1e-2), progress=False)
