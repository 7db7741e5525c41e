"""P3 (Dorrell): the first-order optimality conditions of non-negative L1 dictionary learning, and the solver
that reaches the optimum they describe.

Problem (per input; atoms are the unit rows of D [K, N], codes z ≥ 0):

    min_{D, b, Z ≥ 0}  Σ_n ½‖x_n − b − z_n D‖² + λ‖z_n‖₁,      r_n = x_n − b − z_n D.

First-order conditions of a local optimum (../shared/spec/PAPERS.md, "P3"):

* C1 (codes): d_kᵀ r_n = λ where z_kn > 0, and d_kᵀ r_n ≤ λ where z_kn = 0;
* C2 (bias): Σ_n r_n = 0;
* C3 (atoms on the sphere): Σ_n z_kn r_n = λ (Σ_n z_kn) d_k.

This project's ReLU+L1 SAE minimises mean_n ‖r_n‖² + c ‖z_n‖₁ (``isae.core.models``), the same problem with
λ = c / 2 (``sae_lambda``).
"""

from __future__ import annotations

import math

import torch


def sae_lambda(l1_coef: float) -> float:
    """λ of the problem above for an SAE trained with loss ‖r‖² + ``l1_coef`` ‖z‖₁ (both sides halved)."""
    return l1_coef / 2


@torch.no_grad()
def nonneg_lasso(atoms: torch.Tensor, x: torch.Tensor, lam: float, n_iter: int = 500, tol: float = 1e-6,
                 z0: torch.Tensor | None = None) -> torch.Tensor:
    """argmin_{z ≥ 0} ½‖x − z D‖² + λ Σ z for every row of x (already centred by b), by FISTA with restarts
    (Beck & Teboulle 2009; O'Donoghue & Candès 2015), batched over inputs; atoms D [K, N] as rows.

    Stops when the largest violation of the optimality conditions (``kkt_violation``) falls below ``tol``
    (relative to λ) or after ``n_iter`` iterations. ``z0`` warm-starts it (e.g. an SAE's own codes).
    """
    if lam <= 0:
        raise ValueError(f"lam={lam} must be positive (the L1 weight λ).")
    d = atoms.double()
    xd = x.double()
    gram = d @ d.T
    step = 1.0 / float(torch.linalg.eigvalsh(gram)[-1].clamp_min(1e-12))
    corr = xd @ d.T  # Dᵀx per input
    z = torch.zeros(x.shape[0], d.shape[0], dtype=torch.float64, device=x.device) if z0 is None \
        else z0.double().clamp_min(0)
    y, t = z.clone(), 1.0
    for it in range(n_iter):
        grad = y @ gram - corr
        z_new = (y - step * (grad + lam)).clamp_min(0)
        restart = ((z_new - z) * (y - z_new)).sum(1, keepdim=True) > 0  # momentum is pointing uphill
        t_new = (1 + math.sqrt(1 + 4 * t * t)) / 2
        y = torch.where(restart, z_new, z_new + (t - 1) / t_new * (z_new - z))
        z, t = z_new, t_new
        if it % 20 == 19 and kkt_violation(gram, corr, z, lam) < tol:
            break
    return z.to(x.dtype)


def kkt_violation(gram: torch.Tensor, corr: torch.Tensor, z: torch.Tensor, lam: float) -> float:
    """The largest violation of the non-negative lasso's optimality over all inputs and atoms, relative to λ:
    |d_kᵀr − λ| where z_k > 0, max(0, d_kᵀr − λ) where z_k = 0 (d_kᵀr = (Dᵀx − G z)_k)."""
    dr = corr - z @ gram
    active = z > 0
    v = torch.where(active, (dr - lam).abs(), (dr - lam).clamp_min(0))
    return float(v.max()) / lam


@torch.no_grad()
def conditions(atoms: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, z: torch.Tensor, lam: float
               ) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """P3's conditions C1–C3 for dictionary ``atoms`` [K, N] (unit rows), bias b, inputs x [n, N], codes
    z [n, K] ≥ 0 and λ. Returns (summary, per-latent tensors).

    Summary: ``c1_active_mean_dev`` (mean |d_kᵀr − λ| / λ over active entries), ``c1_active_median_ratio``
    (median d_kᵀr / λ over active entries: 1 at an optimum), ``c1_inactive_violation_rate`` (share of inactive
    entries with d_kᵀr > λ) and ``c1_inactive_violation_mean`` (mean excess / λ where violated), ``c2`` (‖mean r‖
    / mean ‖r‖), ``c3_median`` and ``c3_mean`` (the per-latent C3 residual ‖Σ z_kn r_n − λ Σ z_kn d_k‖ /
    (λ Σ z_kn) over latents that fire), ``c3_angle_median`` (degrees between Σ z_kn r_n and d_k).
    """
    r = x.double() - bias.double() - z.double() @ atoms.double()
    d = atoms.double()
    dr = r @ d.T  # [n, K]: d_kᵀ r_n
    zd = z.double()
    active = zd > 0
    a_ratio = dr[active] / lam
    excess = (dr[~active] - lam).clamp_min(0) / lam
    weighted = zd.T @ r  # [K, N]: Σ_n z_kn r_n
    mass = zd.sum(0)  # Σ_n z_kn
    fired = mass > 0
    c3 = (weighted - lam * mass[:, None] * d).norm(dim=1) / (lam * mass).clamp_min(1e-300)
    cos = (weighted * d).sum(1) / (weighted.norm(dim=1) * d.norm(dim=1)).clamp_min(1e-300)
    angle = torch.rad2deg(torch.arccos(cos.clamp(-1, 1)))
    nan = float("nan")
    summary = {
        "c1_active_mean_dev": float((a_ratio - 1).abs().mean()) if active.any() else nan,
        "c1_active_median_ratio": float(a_ratio.median()) if active.any() else nan,
        "c1_inactive_violation_rate": float((excess > 0).double().mean()) if (~active).any() else nan,
        "c1_inactive_violation_mean": float(excess[excess > 0].mean()) if (excess > 0).any() else 0.0,
        "c2": float(r.mean(0).norm() / r.norm(dim=1).mean().clamp_min(1e-300)),
        "c3_median": float(c3[fired].median()) if fired.any() else nan,
        "c3_mean": float(c3[fired].mean()) if fired.any() else nan,
        "c3_angle_median": float(angle[fired].median()) if fired.any() else nan,
        "fired_frac": float(fired.double().mean()),
        "l0": float(active.sum(1).double().mean()),
    }
    return summary, {"c3": c3.float(), "angle": angle.float(), "fired": fired, "mass": mass.float()}


@torch.no_grad()
def learn_dictionary(x: torch.Tensor, n_atoms: int, lam: float, n_outer: int = 60, atom_steps: int = 20,
                     seed: int = 0, init: torch.Tensor | None = None, tol: float = 1e-4, progress=None) -> dict:
    """The reference optimum: non-negative L1 dictionary learning by alternating minimisation, from ``init``
    (rows) or random data points. Each outer step: codes by ``nonneg_lasso`` (warm-started), the bias in closed
    form (b = mean(x − z D)), then ``atom_steps`` projected-gradient steps on the unit-norm atoms
    (step 1 / λ_max(ZᵀZ)); it stops early once no atom moves by more than ``tol`` in an outer step. At the end,
    codes and bias of the final atoms alternately until both settle. Returns atoms, bias, codes, the outer steps
    taken (``n_outer``) and whether it stopped on ``tol`` (``converged``)."""
    gen = torch.Generator().manual_seed(seed)
    xd = x.double()
    if init is None:
        d = xd[torch.randperm(len(x), generator=gen)[:n_atoms]] - xd.mean(0)
        d = d / d.norm(dim=1, keepdim=True).clamp_min(1e-12)
    else:
        d = init.double() / init.double().norm(dim=1, keepdim=True)
    b = xd.mean(0)
    z, taken, converged = None, 0, False
    for _ in range(n_outer) if progress is None else progress(range(n_outer)):
        d_before = d
        taken += 1
        z = nonneg_lasso(d, xd - b, lam, n_iter=300, z0=z).double()
        b = (xd - z @ d).mean(0)
        zz = z.T @ z
        step = 1.0 / float(torch.linalg.eigvalsh(zz)[-1].clamp_min(1e-12))
        xc = xd - b
        zx = z.T @ xc
        for _ in range(atom_steps):
            grad = zz @ d - zx  # ∂/∂D of ½‖X − Z D‖²
            d = d - step * grad
            d = d / d.norm(dim=1, keepdim=True).clamp_min(1e-12)
        if float((d - d_before).abs().max()) < tol:
            converged = True
            break
    for _ in range(20):  # the codes and bias of the final atoms, jointly: C1 and C2 together
        z = nonneg_lasso(d, xd - b, lam, n_iter=1000, z0=z).double()
        b = (xd - z @ d).mean(0)
    z = nonneg_lasso(d, xd - b, lam, n_iter=1000, z0=z).double()
    return {"atoms": d.to(x.dtype), "bias": b.to(x.dtype), "codes": z.to(x.dtype), "n_outer": taken,
            "converged": converged}


@torch.no_grad()
def antipodal_pairs(atoms: torch.Tensor, z: torch.Tensor | None = None, threshold: float = -0.9) -> dict[str, float]:
    """Pairs of atoms with cos(d_i, d_j) < ``threshold``: their count, the share of atoms in one, and (with codes
    z) the mean firing density of those atoms against all atoms'."""
    u = atoms.double() / atoms.double().norm(dim=1, keepdim=True).clamp_min(1e-12)
    cos = u @ u.T
    pairs = torch.triu(cos < threshold, diagonal=1)
    members = pairs.any(0) | pairs.any(1)
    out = {"antipodal_pairs": int(pairs.sum()), "antipodal_atom_frac": float(members.double().mean())}
    if z is not None:
        density = (z != 0).double().mean(0)
        out["density_antipodal"] = float(density[members].mean()) if members.any() else float("nan")
        out["density_all"] = float(density.mean())
    return out


@torch.no_grad()
def ray_alignment(atoms: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None = None) -> float:
    """Mean over atoms of the largest cosine with a (centred, normalised) data point: P3's wide-dictionary limit
    has atoms clustering along rays through the data, i.e. this approaching 1 as K grows."""
    xc = x.double() - (0 if bias is None else bias.double())
    xu = xc / xc.norm(dim=1, keepdim=True).clamp_min(1e-12)
    u = atoms.double() / atoms.double().norm(dim=1, keepdim=True).clamp_min(1e-12)
    return float((u @ xu.T).amax(1).mean())
