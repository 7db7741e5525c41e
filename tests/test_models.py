"""The SAE family: sparse forward == dense reference (loss and gradients), recipe invariants, aRIP, AuxK, configs."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import D_IN, D_SAE, K, make_sae, unit_rows

from isae.core import kernels, models
from isae.core.arip import arip_support, rip_gap_exact, rip_gap_noise
from isae.core.models import K_SPARSE, SAE, SAEConfig
from isae.core.reference import dense_encode, dense_loss

GRAD_TOL = dict(rtol=1e-9, atol=1e-11)  # float64 throughout; only summation order differs


def _perturbed_sae(architecture: str, seed: int = 0, **kw) -> SAE:
    """A float64 SAE whose b_dec (and S for iSAE-ME, b_enc when present) are non-trivial, as after training."""
    sae = make_sae(architecture, seed=seed, arip_estimator="exact", **kw).double()
    g = torch.Generator().manual_seed(100 + seed)
    with torch.no_grad():
        sae.b_dec.copy_(0.1 * torch.randn(sae.cfg.d_in, generator=g, dtype=torch.float64))
        sae.W_enc.add_(0.2 * torch.randn(sae.W_enc.shape, generator=g, dtype=torch.float64))  # untie encoder
        if sae.cfg.has_encoder_bias:
            sae.b_enc.copy_(0.05 * torch.randn(sae.cfg.d_sae, generator=g, dtype=torch.float64))
        if architecture == "isae_me":
            a = 0.3 * torch.randn(sae.cfg.d_sae, sae.cfg.d_sae, generator=g, dtype=torch.float64)
            sae.S.copy_((a + a.T) / 2)  # strong enough that later steps change the support
    return sae


def _grads(sae: SAE, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    params = {n: p for n, p in sae.named_parameters() if p.requires_grad}
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    return {n: (g if g is not None else torch.zeros_like(p)) for (n, p), g in zip(params.items(), grads)}


# --- sparse forward == dense reference --------------------------------------------------------------

CASES = [
    ("topk", {}),
    ("abstopk", {}),
    ("isae", {}),
    ("isae_me", {}),
    ("isae_me", {"n_steps": 2}),
    ("topk", {"encoder_bias": True}),
    ("isae", {"encoder_bias": True}),
    ("isae_me", {"encoder_bias": True}),
    ("abstopk", {"arip_coef": 0.5}),
]


@pytest.mark.parametrize("architecture,extra", CASES, ids=[f"{a}-{e}" for a, e in CASES])
def test_forward_loss_and_gradients_equal_dense_reference(architecture, extra, x_unit):
    sae = _perturbed_sae(architecture, **extra)
    x = x_unit.double()

    out = sae(x)  # no dead_mask: AuxK off
    assert "aux" not in out.losses
    if architecture in ("isae", "isae_me"):
        assert "arip" in out.losses and sae.cfg.arip_coef == pytest.approx(0.1)
    sparse_grads = _grads(sae, out.losses["total"])
    ref_loss = dense_loss(sae, x)
    dense_grads = _grads(sae, ref_loss)

    torch.testing.assert_close(out.losses["total"], ref_loss, **GRAD_TOL)
    torch.testing.assert_close(sae.encode(x), dense_encode(sae, x)[0], **GRAD_TOL)
    expected = {"W_enc", "W_dec", "b_dec"} | ({"S"} if architecture == "isae_me" else set()) | (
        {"b_enc"} if sae.cfg.has_encoder_bias else set())
    assert expected <= set(sparse_grads)
    for name in expected:
        assert dense_grads[name].abs().max() > 0, name  # the comparison is not vacuous
        torch.testing.assert_close(sparse_grads[name], dense_grads[name], **GRAD_TOL, msg=name)


@pytest.mark.parametrize("architecture", K_SPARSE)
def test_forward_equals_dense_reference_at_a_width_where_selection_takes_the_numba_kernel(architecture, x_unit):
    # d_sae = 256, k = 4: the encoder selection and the aRIP support (2k = 8) use isae.core.kernels, not torch.topk
    sae = _perturbed_sae(architecture, d_sae=256)
    x = x_unit.double()
    assert kernels.topk_supports(x.new_empty(len(x), 256), 2 * sae.cfg.k)
    out = sae(x)
    ref_loss = dense_loss(sae, x)
    torch.testing.assert_close(out.losses["total"], ref_loss, **GRAD_TOL)
    torch.testing.assert_close(sae.encode(x), dense_encode(sae, x)[0], **GRAD_TOL)
    dense_grads = _grads(sae, ref_loss)
    for name, g in _grads(sae, out.losses["total"]).items():
        torch.testing.assert_close(g, dense_grads[name], **GRAD_TOL, msg=name)


def test_isae_me_later_steps_change_the_support_in_the_reference_comparison(x_unit):
    # Guards the comparison above: with the perturbed S, the T-step code differs from the one-step code.
    sae = _perturbed_sae("isae_me")
    one_step = make_sae("abstopk").double()
    one_step.load_state_dict({n: p for n, p in sae.state_dict().items() if n != "S"})
    x = x_unit.double()
    assert not torch.equal(sae.encode(x) != 0, one_step.encode(x) != 0)


def test_isae_me_with_zero_S_equals_abstopk_with_same_seed(x_unit):
    me = make_sae("isae_me", seed=7)
    abs_ = make_sae("abstopk", seed=7)
    assert torch.equal(me.S, torch.zeros(D_SAE, D_SAE))
    out_me, out_abs = me(x_unit), abs_(x_unit)
    assert torch.equal(me.encode(x_unit), abs_.encode(x_unit))
    # Same code; the decoder may sum the k atoms in another order (iSAE-ME's active set comes sorted from its
    # aRIP support, AbsTopK's unsorted), so the reconstructions agree to float32 rounding, not bit for bit.
    torch.testing.assert_close(out_me.x_hat, out_abs.x_hat)
    torch.testing.assert_close(out_me.losses["mse"], out_abs.losses["mse"])


def test_isae_me_iht_init_runs_iterative_hard_thresholding(x_unit):
    sae = make_sae("isae_me", me_init="iht", n_steps=4).double()
    x = x_unit.double()
    D = sae.W_dec.detach()
    mu = 1.0 / torch.linalg.matrix_norm(D, ord=2) ** 2
    z = torch.zeros(x.shape[0], D.shape[0], dtype=torch.float64)
    for _ in range(4):  # z <- H_k(z + mu D (x - b - zD))  (rows of D are atoms)
        g = z + mu * (x - sae.b_dec - z @ D) @ D.T
        idx = g.abs().topk(K, dim=1).indices
        z = torch.zeros_like(g).scatter(1, idx, g.gather(1, idx))
    torch.testing.assert_close(sae.encode(x), z, rtol=1e-6, atol=1e-6)


# --- recipe invariants -----------------------------------------------------------------------------

def test_normalize_atoms_gives_unit_norm_atoms():
    sae = make_sae("topk")
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(D_SAE, 1, generator=torch.Generator().manual_seed(0)) * 5 + 0.1)
    assert not torch.allclose(sae.W_dec.norm(dim=1), torch.ones(D_SAE))
    direction = unit_rows(sae.W_dec.detach().clone())
    sae.normalize_atoms()
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(D_SAE), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(sae.W_dec.detach(), direction, rtol=1e-6, atol=1e-6)  # direction unchanged


@pytest.mark.parametrize("architecture", ["topk", "isae"])
def test_remove_radial_grad_leaves_gradient_orthogonal_to_each_atom(architecture, x_unit):
    sae = make_sae(architecture)
    sae(x_unit).losses["total"].backward()
    before = sae.W_dec.grad.clone()
    assert (before * sae.W_dec).sum(1).abs().max() > 1e-4  # there was a radial part to remove
    sae.remove_radial_grad()
    radial = (sae.W_dec.grad * sae.W_dec).sum(1)
    assert radial.abs().max() < 1e-6
    # only the radial part was removed: the tangential part is unchanged
    tangential = before - (before * sae.W_dec).sum(1, keepdim=True) * sae.W_dec
    torch.testing.assert_close(sae.W_dec.grad, tangential)


def test_init_has_unit_atoms_and_tied_encoder():
    sae = make_sae("abstopk", seed=3)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(D_SAE))
    assert torch.equal(sae.W_enc, sae.W_dec)
    assert torch.equal(make_sae("abstopk", seed=3).W_dec, sae.W_dec)
    assert not torch.equal(make_sae("abstopk", seed=4).W_dec, sae.W_dec)


# --- codes --------------------------------------------------------------------------------------------

def test_topk_codes_are_non_negative(x_unit):
    z = make_sae("topk").encode(x_unit)
    assert (z >= 0).all()
    assert (z > 0).any()


@pytest.mark.parametrize("architecture", ["abstopk", "isae", "isae_me"])
def test_abstopk_family_codes_have_both_signs(architecture, x_unit):
    z = make_sae(architecture).encode(x_unit)
    assert (z > 0).any() and (z < 0).any()


@pytest.mark.parametrize("architecture", K_SPARSE)
def test_l0_equals_k(architecture, x_unit):
    sae = make_sae(architecture)
    z = sae.encode(x_unit)
    assert torch.equal((z != 0).sum(1), torch.full((x_unit.shape[0],), K))
    out = sae(x_unit)
    assert out.vals.shape == out.idx.shape == (x_unit.shape[0], K)


def test_abstopk_keeps_the_k_largest_magnitudes(x_unit):
    sae = make_sae("abstopk")
    pre = (x_unit - sae.b_dec) @ sae.W_enc.T
    z = sae.encode(x_unit)
    kth = pre.abs().topk(K, dim=1).values[:, -1:]
    torch.testing.assert_close(z, torch.where(pre.abs() >= kth, pre, torch.zeros_like(pre)))


# --- config validation ------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,param", [
    ({"k": D_SAE}, "k"),
    ({"k": D_SAE + 1}, "k"),
    ({"k": 0}, "k"),
    ({"k": -2}, "k"),
    ({"architecture": "gated"}, "architecture"),
    ({"arip_coef": -0.1}, "arip_coef"),
    ({"d_in": 0}, "d_in"),
    ({"n_steps": 0}, "n_steps"),
    ({"arip_estimator": "mc"}, "arip_estimator"),
    ({"me_init": "random"}, "me_init"),
    ({"aux_k": -1}, "aux_k"),
])
def test_invalid_config_raises_value_error_naming_the_parameter(kwargs, param):
    args = {"d_in": D_IN, "d_sae": D_SAE, "k": K, "architecture": "topk"} | kwargs
    with pytest.raises(ValueError, match=rf"\b{param}="):
        SAEConfig(**args)


def test_forward_with_wrong_d_in_raises_value_error_naming_d_in():
    sae = make_sae("abstopk")
    with pytest.raises(ValueError, match=r"d_in=16"):
        sae(torch.randn(4, D_IN + 1))


def test_default_arip_coef_is_papers():
    assert SAEConfig(d_in=8, d_sae=16, k=2, architecture="isae").arip_coef == 0.1
    assert SAEConfig(d_in=8, d_sae=16, k=2, architecture="isae_me").arip_coef == 0.1
    assert SAEConfig(d_in=8, d_sae=16, k=2, architecture="topk").arip_coef == 0.0
    assert SAEConfig(d_in=8, d_sae=16, k=2, architecture="abstopk").arip_coef == 0.0


# --- aRIP ---------------------------------------------------------------------------------------------

def _atoms_and_support(seed: int = 0, K_: int = 40, N: int = 12, B: int = 5, s: int = 6, unit: bool = True):
    g = torch.Generator().manual_seed(seed)
    atoms = torch.randn(K_, N, generator=g, dtype=torch.float64)
    atoms = unit_rows(atoms) if unit else atoms
    support = torch.rand(B, K_, generator=g).argsort(1)[:, :s]
    return atoms, support


@pytest.mark.parametrize("unit", [True, False])
def test_exact_rip_gap_equals_mean_squared_eigenvalue_deviation(unit):
    atoms, support = _atoms_and_support(unit=unit)
    gram = atoms[support] @ atoms[support].transpose(1, 2)
    expected = (torch.linalg.eigvalsh(gram) - 1).pow(2).mean(1)
    torch.testing.assert_close(rip_gap_exact(atoms, support), expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(rip_gap_exact(atoms, support, chunk=2), expected, rtol=1e-10, atol=1e-12)


def test_exact_rip_gap_of_unit_atoms_equals_off_diagonal_coherence():
    atoms, support = _atoms_and_support(seed=1)
    gram = atoms[support] @ atoms[support].transpose(1, 2)
    off = gram - torch.diag_embed(gram.diagonal(dim1=1, dim2=2))
    torch.testing.assert_close(rip_gap_exact(atoms, support), off.pow(2).sum((1, 2)) / support.shape[1])


def test_exact_rip_gap_is_zero_on_orthonormal_support():
    atoms = torch.eye(10, dtype=torch.float64)
    support = torch.tensor([[0, 3, 5], [1, 2, 9]])
    assert torch.equal(rip_gap_exact(atoms, support), torch.zeros(2, dtype=torch.float64))


def test_noise_estimator_mean_approaches_exact_rip_gap():
    atoms, support = _atoms_and_support(seed=2, B=3)
    draws = 8_000
    g = torch.Generator().manual_seed(0)
    est = rip_gap_noise(atoms, support.repeat(draws, 1), generator=g).view(draws, -1)
    exact = rip_gap_exact(atoms, support)
    mean, se = est.mean(0), est.std(0) / math.sqrt(draws)
    assert (exact > 0.05).all()  # a non-trivial target
    assert ((mean - exact).abs() < 5 * se).all(), (mean, exact, se)
    assert ((mean - exact).abs() / exact < 0.1).all()


def test_noise_estimator_equals_dense_formula_for_the_same_draw_in_value_and_gradient():
    atoms, support = _atoms_and_support(seed=3)
    a1 = atoms.clone().requires_grad_()
    est = rip_gap_noise(a1, support, generator=torch.Generator().manual_seed(5))
    est.sum().backward()

    n = torch.randn(support.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    a2 = atoms.clone().requires_grad_()
    d_s = a2[support]
    gram = d_s @ d_s.transpose(1, 2)
    dense = (gram @ n[..., None])[..., 0].pow(2).sum(1) / support.shape[1] - 1
    dense.sum().backward()
    torch.testing.assert_close(est, dense, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(a1.grad, a2.grad, rtol=1e-10, atol=1e-12)


def test_arip_support_is_the_2k_largest_magnitudes():
    score = torch.tensor([[0.1, -5.0, 3.0, 0.2, -0.3, 4.0]])
    assert set(arip_support(score, 2)[0].tolist()) == {1, 2, 5, 4}
    assert arip_support(score, 10).shape == (1, 6)  # capped at K


def test_isae_noise_arip_is_reproducible_with_a_generator(x_unit):
    sae = make_sae("isae")
    a = sae(x_unit, generator=torch.Generator().manual_seed(3)).losses["arip"]
    b = sae(x_unit, generator=torch.Generator().manual_seed(3)).losses["arip"]
    c = sae(x_unit, generator=torch.Generator().manual_seed(4)).losses["arip"]
    assert torch.equal(a, b) and not torch.equal(a, c)


# --- AuxK ---------------------------------------------------------------------------------------------

def _dense_auxk(sae: SAE, x: torch.Tensor, dead: torch.Tensor) -> torch.Tensor:
    """Gao et al.'s AuxK computed densely: top-k_aux dead pre-activations reconstruct the detached residual."""
    cfg = sae.cfg
    pre = (x - sae.b_dec) @ sae.W_enc.T + sae.b_enc
    x_hat = dense_encode(sae, x)[0] @ sae.W_dec + sae.b_dec
    n_dead = int(dead.sum())
    k_aux = min(cfg.aux_k, n_dead, cfg.d_sae - cfg.k)
    key = pre.abs() if cfg.architecture != "topk" else pre
    idx = key.detach().masked_fill(~dead, -math.inf).topk(k_aux, dim=1).indices
    z = pre * torch.zeros_like(pre, dtype=torch.bool).scatter(1, idx, True)
    z = z.relu() if cfg.architecture == "topk" else z
    residual = (x - x_hat).detach()
    variance = (residual - residual.mean(0)).pow(2).sum()
    return (z @ sae.W_dec - residual).pow(2).sum() / variance * min(n_dead / k_aux, 1.0)


def _dead_mask(n_dead: int = 12) -> torch.Tensor:
    dead = torch.zeros(D_SAE, dtype=torch.bool)
    dead[torch.randperm(D_SAE, generator=torch.Generator().manual_seed(0))[:n_dead]] = True
    return dead


@pytest.mark.parametrize("path", ["dense-over-dead", "sparse"])
@pytest.mark.parametrize("architecture,encoder_bias", [("topk", False), ("abstopk", False), ("isae_me", False),
                                                       ("topk", True)])
@pytest.mark.parametrize("aux_k", [5, 256])
def test_auxk_loss_equals_dense_computation_in_value_and_gradient(architecture, encoder_bias, aux_k, path, x_unit,
                                                                  monkeypatch):
    # both of AuxK's computations (chosen by n_dead / k_aux) against the naive dense one
    monkeypatch.setattr(models, "_AUXK_DENSE_MAX_DEAD_PER_K", 10**6 if path == "dense-over-dead" else 0)
    sae = _perturbed_sae(architecture, aux_k=aux_k, arip_coef=0.0, encoder_bias=encoder_bias)
    x, dead = x_unit.double(), _dead_mask()
    code = sae.encode_sparse(x, dead_mask=dead)
    assert (code.aux_dead_pre is not None) == (path == "dense-over-dead")
    aux = sae(x, dead_mask=dead).losses["aux"]
    ref = _dense_auxk(sae, x, dead)
    torch.testing.assert_close(aux, ref, **GRAD_TOL)
    g_sparse, g_dense = _grads(sae, aux), _grads(sae, ref)
    for name in ("W_enc", "W_dec", "b_dec") + (("b_enc",) if encoder_bias else ()):
        torch.testing.assert_close(g_sparse[name], g_dense[name], **GRAD_TOL, msg=name)


@pytest.mark.parametrize("architecture", ["topk", "abstopk"])
def test_auxk_is_positive_and_trains_only_dead_encoder_rows(architecture, x_unit):
    sae = make_sae(architecture)
    dead = _dead_mask()
    out = sae(x_unit, dead_mask=dead)
    assert out.losses["aux"] > 0
    torch.testing.assert_close(out.losses["total"], out.losses["mse"] + sae.cfg.aux_coef * out.losses["aux"])
    (g_enc,) = torch.autograd.grad(out.losses["aux"], [sae.W_enc])
    rows_with_grad = g_enc.norm(dim=1) > 0
    assert rows_with_grad.any()
    assert not (rows_with_grad & ~dead).any()  # only dead latents' encoder rows get AuxK gradient


@pytest.mark.parametrize("architecture", ["topk", "abstopk"])
def test_without_dead_mask_there_is_no_auxk_and_inactive_latents_get_no_encoder_gradient(architecture, x_unit):
    sae = make_sae(architecture)
    x = x_unit[:4]  # 4 inputs × k=4 picks leave most of the 48 latents inactive
    for mask in (None, torch.zeros(D_SAE, dtype=torch.bool)):
        out = sae(x, dead_mask=mask)
        assert "aux" not in out.losses
        assert torch.equal(out.losses["total"], out.losses["mse"])
        (g_enc,) = torch.autograd.grad(out.losses["total"], [sae.W_enc])
        active = torch.zeros(D_SAE, dtype=torch.bool)
        active[out.idx.unique()] = True
        assert (g_enc[~active] == 0).all()
    # with a mask, inactive dead latents do receive encoder gradient through the total loss
    dead = ~active
    out = sae(x, dead_mask=dead)
    (g_enc,) = torch.autograd.grad(out.losses["total"], [sae.W_enc])
    assert (g_enc[dead].norm(dim=1) > 0).any()


# --- memory: nothing of size batch × K is kept for the backward -------------------------------------------

def _saved_for_backward(sae: SAE, x: torch.Tensor, dead: torch.Tensor) -> tuple[int, list[tuple[int, ...]]]:
    """(total elements, shapes) of the non-parameter tensors autograd saves during a training forward."""
    params = {p.untyped_storage().data_ptr() for p in sae.parameters()}
    shapes: list[tuple[int, ...]] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in params:
            shapes.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = sae(x, dead_mask=dead)
    out.losses["total"].backward()
    assert "aux" in out.losses and "arip" in out.losses
    return sum(math.prod(s) for s in shapes), shapes


@pytest.mark.parametrize("architecture", K_SPARSE)
def test_memory_kept_for_backward_does_not_grow_with_the_number_of_latents(architecture, x_unit):
    # Everything autograd keeps besides the parameters is O(B·k) (iSAE-ME: plus its k × k blocks of S,
    # O(B·T·k²)); a dense pre-activation, code or gradient would make it grow with d_sae. AuxK and aRIP on.
    narrow = _saved_for_backward(make_sae(architecture, arip_coef=0.1), x_unit, _dead_mask())
    wide_sae = make_sae(architecture, d_sae=2 * D_SAE, arip_coef=0.1)
    wide = _saved_for_backward(wide_sae, x_unit, torch.cat([_dead_mask(), torch.zeros(D_SAE, dtype=torch.bool)]))
    assert narrow[0] > 0 and narrow[0] == wide[0], (narrow, wide)


@pytest.mark.parametrize("architecture", ["isae", "isae_me", "topk"])
def test_arip_support_is_capped_at_d_sae_when_2k_exceeds_it(architecture, x_unit):
    sae = make_sae(architecture, d_sae=12, k=8, arip_coef=0.1)  # 2k = 16 > d_sae = 12
    out = sae(x_unit)
    assert out.support.shape == (x_unit.shape[0], 12) and torch.isfinite(out.losses["total"])


# --- bfloat16 selection ------------------------------------------------------------------------------------

@pytest.mark.parametrize("architecture", K_SPARSE)
def test_bf16_selection_keeps_float32_values_and_nearly_the_same_latents(architecture, monkeypatch):
    # The ranking product in bfloat16 may reorder near-ties only; every value is float32 pre-activation.
    sae = make_sae(architecture, d_in=64, d_sae=512, k=8)
    x = unit_rows(torch.randn(256, 64, generator=torch.Generator().manual_seed(5)))
    dead = torch.zeros(512, dtype=torch.bool)
    dead[::7] = True
    with torch.no_grad():
        exact = sae.encode_sparse(x, dead_mask=dead, with_support=True)
        fast = sae.encode_sparse(x, dead_mask=dead, with_support=True, bf16_selection=True)
        pre = (x - sae.b_dec) @ sae.W_enc.T
    if architecture != "isae_me":  # (iSAE-ME's values add the lateral input; compared through the agreement below)
        torch.testing.assert_close(fast.vals, pre.gather(1, fast.idx).relu() if architecture == "topk"
                                   else pre.gather(1, fast.idx), rtol=1e-5, atol=1e-6)
    # 74 dead latents ≤ 4 · k_aux: AuxK takes its dense path, which reads pre at every dead latent
    assert fast.aux_pre is None
    torch.testing.assert_close(fast.aux_dead_pre, pre[:, dead.nonzero().squeeze(1)], rtol=1e-5, atol=1e-6)
    monkeypatch.setattr(models, "_AUXK_DENSE_MAX_DEAD_PER_K", 0)  # its sparse path reads pre at its choice only
    with torch.no_grad():
        sparse = sae.encode_sparse(x, dead_mask=dead, with_support=True, bf16_selection=True)
    assert sparse.aux_dead_pre is None
    torch.testing.assert_close(sparse.aux_pre, pre.gather(1, sparse.aux_idx), rtol=1e-5, atol=1e-6)

    def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
        same = (a[:, :, None] == b[:, None, :]).any(2).float()
        return float(same.mean())

    for name in ("idx", "support", "aux_idx"):
        assert agreement(getattr(fast, name), getattr(exact, name)) > 0.97, name


def test_unknown_architecture_is_refused_with_the_valid_names():
    with pytest.raises(ValueError) as err:
        SAEConfig(d_in=8, d_sae=16, k=2, architecture="gated")
    for name in models.REGISTRY:
        assert repr(name) in str(err.value)
    with pytest.raises(ValueError, match="topk"):
        models.architecture("TopK")  # display names are not architecture names


def test_registry_flags_drive_the_public_name_tuples():
    assert set(models.K_SPARSE) == {n for n, a in models.REGISTRY.items() if a.k_sparse}
    assert set(models.SIGNED) <= set(models.K_SPARSE)
    assert models.ARCHITECTURES["isae_me"] == SAEConfig(d_in=8, d_sae=16, k=2, architecture="isae_me").display_name
    # aRIP defaults on for the iSAE family only; the multistep encoder has T steps, the others one
    assert SAEConfig(d_in=8, d_sae=16, k=2, architecture="isae").arip_coef == 0.1
    assert SAEConfig(d_in=8, d_sae=16, k=2, architecture="abstopk").arip_coef == 0.0
    assert SAEConfig(d_in=8, d_sae=16, k=2, architecture="isae_me", n_steps=3).encoder_steps == 3
    assert SAEConfig(d_in=8, d_sae=16, k=2, architecture="isae", n_steps=3).encoder_steps == 1
    assert SAEConfig(d_in=8, d_sae=16, architecture="relu").has_encoder_bias


def test_sparse_values_follow_the_sign_flag():
    pre = torch.tensor([[-1.0, 2.0]])
    assert torch.equal(models.REGISTRY["topk"].sparse_values(pre), torch.tensor([[0.0, 2.0]]))
    assert torch.equal(models.REGISTRY["abstopk"].sparse_values(pre), pre)
    assert torch.equal(models.REGISTRY["jumprelu"].dense_code(torch.tensor([0.05, 0.2, -1.0]), 0.1),
                       torch.tensor([0.0, 0.2, -0.0]))
