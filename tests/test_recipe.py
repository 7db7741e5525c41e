"""The two training recipes (P1's text, the authors' code): each element against an independent computation."""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import pytest
import torch
from conftest import make_sae

from isae.core.arip import rip_gap_exact, rip_gap_ratio
from isae.data.synthetic import SyntheticConfig, SyntheticStream, authors_components, make_dictionary
from isae.eval import metrics
from isae.train.recipe import AUTHORS, ELEMENTS, PAPER, Recipe, recipe, recipe_table
from isae.train.trainer import TrainConfig, set_mse_scale, train_many


def test_authors_me_init_is_one_gradient_step_with_an_unscaled_encoder():
    sae = make_sae("isae_me", d_in=12, d_sae=40, k=3, seed=4, me_init="authors")
    d = sae.W_dec.detach().double()  # unit atoms as rows: DᵀD of P1 (atoms as columns) is d dᵀ
    gram = d @ d.T
    lam_max = np.linalg.eigvalsh(gram.numpy()).max()
    expected = torch.eye(40, dtype=torch.float64) - gram / (1.1 * lam_max)
    assert torch.allclose(sae.S.detach().double(), expected, atol=1e-5)
    assert torch.equal(sae.W_enc, sae.W_dec)  # W = Dᵀ, no 1/L factor


def test_iht_init_scales_the_encoder_and_zero_init_leaves_s_at_zero():
    iht = make_sae("isae_me", d_in=12, d_sae=40, k=3, seed=4, me_init="iht")
    lam_max = np.linalg.eigvalsh((iht.W_dec @ iht.W_dec.T).detach().double().numpy()).max()
    assert torch.allclose(iht.W_enc, iht.W_dec / lam_max, atol=1e-6)
    assert not make_sae("isae_me", d_in=12, d_sae=40, k=3, seed=4).S.detach().any()


def test_learning_rate_schedule_of_the_authors_recipe():
    cfg = AUTHORS.train_config(n_steps=1000, batch_size=8)
    lr = [cfg.learning_rate(4096) * cfg.lr_factor(s) for s in (0, 99, 100, 799, 800, 999)]
    # 3e-4 · (step + 1) / 100 in the warm-up, constant, then (1000 − step) / 200 from step 800 = 80% on
    assert lr == pytest.approx([3e-6, 3e-4, 3e-4, 3e-4, 3e-4, 3e-4 / 200])


def test_paper_recipe_keeps_a_constant_learning_rate():
    cfg = PAPER.train_config(n_steps=1000, batch_size=8)
    assert {cfg.lr_factor(s) for s in range(1000)} == {1.0}
    assert cfg.learning_rate(4096) == pytest.approx(2e-4 / (4096 / 2**14) ** 0.5)


def test_trainer_applies_the_schedule_to_adam(monkeypatch):
    import isae.train.trainer as trainer

    stream = SyntheticStream(SyntheticConfig(d_in=16, n_atoms=32, k=3), batch_size=32)
    sae = make_sae("abstopk", d_in=16, d_sae=48, k=3)
    cfg = TrainConfig(n_steps=10, batch_size=32, lr=1e-3, warmup_steps=4, decay_frac=0.5, device="cpu",
                      geometric_median_samples=64)
    optimisers, seen = [], []
    make = trainer.make_optimizer
    monkeypatch.setattr(trainer, "make_optimizer",
                        lambda model, lr: optimisers.append(make(model, lr)) or optimisers[-1])
    sae.register_forward_pre_hook(lambda module, args: seen.append(optimisers[0].param_groups[0]["lr"]))
    train_many({"m": sae}, stream, cfg, progress=False)
    assert seen == pytest.approx([1e-3 * f for f in (0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 0.8, 0.6, 0.4, 0.2)])


def test_gradient_clipping_bounds_the_global_norm_and_keeps_its_direction():
    from isae.train.trainer import _before_step

    sae = make_sae("isae_me", d_in=16, d_sae=48, k=3)
    for p in sae.parameters():
        p.grad = torch.full_like(p, 3.0) if p.requires_grad else None
    before = torch.cat([p.grad.flatten() for p in sae.parameters() if p.grad is not None])
    _before_step(sae, TrainConfig(n_steps=1, grad_clip=1.0, remove_radial_grad=False))()
    after = torch.cat([p.grad.flatten() for p in sae.parameters() if p.grad is not None])
    assert after.norm() == pytest.approx(1.0, rel=1e-5)
    assert torch.allclose(after, before / before.norm(), atol=1e-6)


def test_code_l1_is_the_mean_absolute_code_value_per_active_latent(x_unit):
    sae = make_sae("isae", k=3, code_l1_coef=0.01)
    out = sae(x_unit)
    z = sae.encode(x_unit)
    assert out.losses["code_l1"].item() == pytest.approx(z.abs().sum().item() / (x_unit.shape[0] * 3), rel=1e-5)
    plain = make_sae("isae", k=3)(x_unit)
    assert "code_l1" not in plain.losses


def test_code_l1_is_given_only_to_the_arip_models():
    assert AUTHORS.sae_config(16, 64, 3, "isae").code_l1_coef == 0.01
    assert AUTHORS.sae_config(16, 64, 3, "isae_me").code_l1_coef == 0.01
    assert AUTHORS.sae_config(16, 64, 3, "abstopk").code_l1_coef == 0.0
    assert AUTHORS.sae_config(16, 64, 3, "topk").code_l1_coef == 0.0
    assert AUTHORS.sae_config(768, 4096, 40, "topk").aux_k == 384  # d_in // 2


def test_ratio_arip_estimator_matches_its_formula_and_the_exact_gap(gen):
    atoms = torch.randn(30, 8, generator=gen)
    atoms = atoms / atoms.norm(dim=1, keepdim=True)
    support = torch.stack([torch.randperm(30, generator=gen)[:6] for _ in range(2000)])
    noise_gen = torch.Generator().manual_seed(7)
    ratio = rip_gap_ratio(atoms, support, noise_gen).item()
    noise = torch.randn(support.shape, generator=torch.Generator().manual_seed(7))
    d_s = atoms[support]  # [B, 6, N]
    u = torch.einsum("bs,bsn->bn", noise, d_s)
    g = torch.einsum("bsn,bn->bs", d_s, u)
    assert ratio == pytest.approx(6 * g.pow(2).sum(1).mean().item() / u.pow(2).sum(1).mean().item() ** 2 - 1, rel=1e-4)
    assert ratio == pytest.approx(rip_gap_exact(atoms, support).mean().item(), abs=0.05)


def test_mse_scale_is_one_over_n_times_the_per_element_variance(gen):
    batch = torch.randn(50, 10, generator=gen) * torch.linspace(0.5, 2, 10)
    sae = make_sae("topk", d_in=10, d_sae=32, k=2)
    set_mse_scale([sae], batch)
    variance = batch.numpy().var(axis=0, ddof=0).mean()
    assert sae.mse_scale.item() == pytest.approx(1 / (10 * variance), rel=1e-5)
    x_hat = sae(batch).x_hat
    out = sae(batch)
    assert out.losses["total"].item() == pytest.approx(
        ((batch - x_hat) ** 2).mean().item() / variance + out.losses["total"].item() - out.losses["mse"].item()
        * sae.mse_scale.item(), rel=1e-4)


def test_authors_mixture_has_m_over_100_balanced_components_with_the_stated_variances():
    cfg = SyntheticConfig(d_in=3000, n_atoms=400, k=3, kind="mixture", mixture_recipe="authors", mixture_scale=0.3)
    assert authors_components(400) == 4 and authors_components(150) == 2 and authors_components(4096) == 40
    atoms = make_dictionary(cfg)
    cos = (atoms @ atoms.T).numpy()
    same = cos > 0.15  # within a component E cos = s / (s + 1 − s) = 0.3; across components 0 (± 1/√N ≈ 0.02)
    groups = {tuple(row) for row in same}
    assert len(groups) == 4
    assert sorted(int(np.array(g).sum()) for g in groups) == [100, 100, 100, 100]
    within = cos[same & ~np.eye(400, dtype=bool)]
    assert within.mean() == pytest.approx(0.3, abs=0.02)
    assert np.abs(cos[~same]).mean() < 0.03


def test_authors_iid_is_the_mixture_generator_at_scale_zero():
    iid = make_dictionary(SyntheticConfig(d_in=32, n_atoms=64, k=3, kind="mixture", mixture_recipe="authors",
                                          mixture_scale=0.0))
    cos = (iid @ iid.T).fill_diagonal_(0).abs()
    assert cos.mean() < 0.2  # no clusters: random unit atoms


def test_centred_inputs_have_zero_mean_and_unit_norm():
    x = SyntheticStream(SyntheticConfig(d_in=16, n_atoms=32, k=3, center_inputs=True), batch_size=64).batch(0)
    assert torch.allclose(x.mean(1), torch.zeros(64), atol=1e-6)
    assert torch.allclose(x.norm(dim=1), torch.ones(64), atol=1e-5)


def test_a_latent_is_dead_after_eight_batches_without_firing():
    stream = SyntheticStream(SyntheticConfig(d_in=16, n_atoms=32, k=3), batch_size=32)
    sae = make_sae("topk", d_in=16, d_sae=64, k=3)
    with torch.no_grad():
        sae.W_enc[:10] = 0.0  # these 10 never fire until AuxK revives them
    cfg = AUTHORS.train_config(n_steps=9, batch_size=32, log_every=1, device="cpu", geometric_median_samples=64)
    assert cfg.dead_window() == 8 * 32
    log = train_many({"m": sae}, stream, cfg, progress=False).set_index("step")["dead_frac"]
    assert log.loc[7] == 0.0  # nothing can be dead before 8 batches
    assert log.loc[8] >= 10 / 64


def test_two_l2_readings_on_a_case_computed_by_hand():
    z_a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    z_b = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # already matched: Π = I
    # paper: mean‖z − z′‖ / mean‖z‖ = (0 + 1)/2 / ((1 + 2)/2) = 1/3
    assert metrics.code_l2(z_a, z_b) == pytest.approx(1 / 3)
    # authors: / mean‖z − z′_σ‖; with two inputs σ is the identity or the swap
    sigma = torch.randperm(2, generator=torch.Generator().manual_seed(0))
    swapped = (z_a - z_b[sigma]).norm(dim=1).mean().item()
    assert metrics.code_l2_resampled(z_a, z_b, seed=0) == pytest.approx(0.5 / swapped)
    if sigma.tolist() == [1, 0]:  # ‖(1, −1)‖ and ‖(−1, 2)‖
        assert swapped == pytest.approx((2**0.5 + 5**0.5) / 2)


def test_switch_changes_one_element_and_names_it():
    for element in ELEMENTS:
        mixed = PAPER.switch(element, AUTHORS)
        changed = [f.name for f in fields(Recipe) if getattr(mixed, f.name) != getattr(PAPER, f.name)]
        assert changed == ["name", element] or changed == ["name"]  # equal values in both recipes: only the name
        assert element in mixed.name
    with pytest.raises(ValueError, match="element='nope'"):
        PAPER.switch("nope", AUTHORS)


def test_recipe_names_and_table():
    assert recipe("paper") is PAPER and recipe(AUTHORS) is AUTHORS
    with pytest.raises(ValueError, match="recipe='gao'"):
        recipe("gao")
    with pytest.raises(ValueError, match="'colour' is not a recipe element"):
        recipe("authors+colour")
    mixed = recipe("authors+lr+me_init")
    assert mixed.lr == PAPER.lr and mixed.me_init == PAPER.me_init
    assert all(getattr(mixed, e) == getattr(AUTHORS, e) for e in ELEMENTS if e not in ("lr", "me_init"))
    table = recipe_table()
    assert list(table["element"]) == list(ELEMENTS)
    assert (table["paper source"].str.len() > 0).all() and (table["authors source"].str.len() > 0).all()


def test_elements_that_change_nothing_for_a_model_are_marked():
    assert not PAPER.applies("me_init", "abstopk", "iid") and PAPER.applies("me_init", "isae_me", "iid")
    assert not PAPER.applies("code_l1", "abstopk", "iid") and PAPER.applies("code_l1", "isae", "iid")
    assert not PAPER.applies("mixture", "abstopk", "iid") and PAPER.applies("mixture", "abstopk", "mixture")
    assert PAPER.applies("lr", "topk", "iid")


@pytest.mark.parametrize("kwargs,param", [({"warmup_steps": -1}, "warmup_steps"),
                                          ({"decay_frac": 1.5}, "decay_frac"), ({"grad_clip": 0.0}, "grad_clip"),
                                          ({"loss_normaliser": "x"}, "loss_normaliser")])
def test_bad_schedule_settings_are_refused_by_name(kwargs, param):
    with pytest.raises(ValueError, match=param):
        TrainConfig(n_steps=10, **kwargs)
