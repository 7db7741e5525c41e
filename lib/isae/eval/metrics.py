"""Identifiability metrics of P1 (and PW-MCC of Song et al.), each with its formula.

Pairwise metrics compare two SAEs trained with different seeds. Their symmetry group is signed
permutations, so atoms are matched first (``match_atoms``) and codes of the second SAE are mapped through
the signed permutation before they are compared.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from isae.core.arip import arip_support, rip_gap_exact, rip_gap_noise
from isae.core.models import SAE
from isae.core.sparse_ops import sparse_decode


def _unit(a: torch.Tensor) -> torch.Tensor:
    return a / a.norm(dim=1, keepdim=True).clamp_min(1e-12)


@dataclass
class Matching:
    """Signed matching of the atoms (rows) of A to those of B: A[i] ≈ signs[i] · B[perm[i]]."""

    rows: np.ndarray
    """Indices into A that were matched (all of them when A has no more atoms than B)."""
    perm: np.ndarray
    """perm[i]: the atom of B matched to A[rows[i]]."""
    cos: np.ndarray
    """Signed cosine of every matched pair."""

    @property
    def signs(self) -> np.ndarray:
        return np.where(self.cos < 0, -1.0, 1.0)


def coherence(atoms: torch.Tensor) -> dict[str, float]:
    """How coherent a dictionary is: the mean |cos| over pairs of distinct atoms, and the mean over atoms of
    the largest |cos| with another atom (rows of ``atoms`` are unit norm)."""
    cos = (atoms @ atoms.T).abs().fill_diagonal_(0)
    return {"mean |cos|": cos.mean().item(), "mean max |cos|": cos.max(1).values.mean().item()}


def cosines(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Cosine similarity of every row of a with every row of b, as a numpy array [len(a), len(b)]."""
    return (_unit(a.detach().float()) @ _unit(b.detach().float()).T).cpu().numpy()


def match_atoms(a: torch.Tensor, b: torch.Tensor, cos: np.ndarray | None = None) -> Matching:
    """Hungarian assignment (scipy's linear_sum_assignment) maximising Σ |cos(a_i, b_π(i))|, signs recorded."""
    cos = cosines(a, b) if cos is None else cos
    rows, cols = linear_sum_assignment(np.abs(cos), maximize=True)
    return Matching(rows=rows, perm=cols, cos=cos[rows, cols])


def dcs(matching: Matching) -> float:
    """Dictionary consistency score: mean |cos| over matched atom pairs."""
    return float(np.abs(matching.cos).mean())


def pw_mcc(a: torch.Tensor, b: torch.Tensor, cos: np.ndarray | None = None) -> float:
    """Song et al.'s PW-MCC: Hungarian matching on *signed* cosine of unit rows, mean matched cosine."""
    cos = cosines(a, b) if cos is None else cos
    rows, cols = linear_sum_assignment(cos, maximize=True)
    return float(cos[rows, cols].mean())


def map_codes(z_b: torch.Tensor, matching: Matching, d_sae_a: int) -> torch.Tensor:
    """Πz′: codes of B expressed in A's latents, (Πz′)[:, rows[i]] = signs[i] · z_b[:, perm[i]]."""
    mapped = torch.zeros(z_b.shape[0], d_sae_a, dtype=z_b.dtype, device=z_b.device)
    rows = torch.as_tensor(matching.rows, device=z_b.device)
    perm = torch.as_tensor(matching.perm, device=z_b.device)
    signs = torch.as_tensor(matching.signs, dtype=z_b.dtype, device=z_b.device)
    mapped[:, rows] = z_b[:, perm] * signs
    return mapped


def code_iou(z_a: torch.Tensor, z_b_mapped: torch.Tensor) -> float:
    """mean_x |supp(z) ∩ supp(Πz′)| / |supp(z) ∪ supp(Πz′)| (an input with both codes empty counts as 1)."""
    sa, sb = z_a != 0, z_b_mapped != 0
    inter = (sa & sb).sum(1).float()
    union = (sa | sb).sum(1).float()
    return float(torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union)).mean())


def code_l2(z_a: torch.Tensor, z_b_mapped: torch.Tensor) -> float:
    """mean_x ‖z − Πz′‖ / mean_x ‖z‖ (our reading of P1's "normalised by the mean code norm")."""
    return float((z_a - z_b_mapped).norm(dim=1).mean() / z_a.norm(dim=1).mean().clamp_min(1e-12))


def code_l2_resampled(z_a: torch.Tensor, z_b_mapped: torch.Tensor, seed: int = 0) -> float:
    """mean_x ‖z − Πz′‖ / mean_x ‖z − Πz′_σ‖, σ a random re-pairing of the inputs: the authors' normalised ℓ2
    (``rsae/metrics/identifiability_metrics.py``), 1 for codes no better matched than codes of other inputs.
    ``seed`` fixes σ (our choice: one permutation, seeded, so the number is reproducible)."""
    gen = torch.Generator().manual_seed(seed)
    sigma = torch.randperm(z_a.shape[0], generator=gen).to(z_a.device)
    num = (z_a - z_b_mapped).norm(dim=1).mean()
    return float(num / (z_a - z_b_mapped[sigma]).norm(dim=1).mean().clamp_min(1e-12))


@torch.no_grad()
def omp(atoms: torch.Tensor, x: torch.Tensor, k: int, chunk: int | None = None) -> torch.Tensor:
    """Orthogonal matching pursuit with sparsity k, batched over inputs. Returns dense codes [n, K].

    Per input: pick the atom most correlated (|dᵀr|) with the residual, refit x by least squares on the
    support so far, repeat k times. Our implementation works in correlation space — Dᵀr = Dᵀx − (DᵀD)_S a,
    computed as an embedding-bag over rows of the Gram matrix — and grows a Cholesky factor of G_S one
    row per step, so step t costs O(t·K) per input instead of the O(N·K) of recomputing Dᵀr.
    """
    if not 0 < k <= atoms.shape[0]:
        raise ValueError(f"k={k} must satisfy 0 < k ≤ number of atoms={atoms.shape[0]}.")
    if chunk is None:  # inputs per batch: small on CPU keeps the [chunk, K] temporaries in cache
        chunk = 256 if x.device.type == "cpu" else 4096
    atoms = atoms.float()
    gram = atoms @ atoms.T
    out = torch.zeros(x.shape[0], atoms.shape[0], device=x.device)
    for s in range(0, x.shape[0], chunk):
        xs = x[s : s + chunk].float()
        b = xs.shape[0]
        c0 = xs @ atoms.T  # Dᵀx
        corr = c0.clone()
        support = torch.zeros(b, k, dtype=torch.long, device=x.device)
        chol = torch.zeros(b, k, k, device=x.device)
        for t in range(k):
            score = corr.abs()
            if t:
                score.scatter_(1, support[:, :t], -1.0)  # never re-pick an atom
            j = score.argmax(1)
            support[:, t] = j
            g_jj = gram[j, j]
            if t == 0:
                chol[:, 0, 0] = g_jj.clamp_min(1e-12).sqrt()
            else:
                g_new = gram[support[:, :t], j[:, None]]  # G[S, j], [b, t]
                w = torch.linalg.solve_triangular(chol[:, :t, :t], g_new[..., None], upper=False)[..., 0]
                chol[:, t, :t] = w
                chol[:, t, t] = (g_jj - w.pow(2).sum(1)).clamp_min(1e-10).sqrt()
            coef = torch.cholesky_solve(c0.gather(1, support[:, : t + 1])[..., None], chol[:, : t + 1, : t + 1])[..., 0]
            corr = c0 - sparse_decode(coef, support[:, : t + 1], gram)
        out[s : s + chunk].scatter_(1, support, coef)
    return out


@torch.no_grad()
def sae_codes(sae: SAE, x: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Dense SAE codes of x, computed in chunks."""
    return torch.cat([sae.encode(x[s : s + chunk]) for s in range(0, x.shape[0], chunk)])


@torch.no_grad()
def oracle_codes(sae: SAE, x: torch.Tensor) -> torch.Tensor:
    """OMP codes (sparsity k) of x − b on the SAE's own dictionary: the best a perfect encoder could do."""
    return omp(sae.W_dec, x - sae.b_dec, sae.cfg.k)


@torch.no_grad()
def single_metrics(sae: SAE, x: torch.Tensor, chunk: int = 4096) -> dict[str, float]:
    """MSE in two readings, L0, dead fraction on x, and R_S.

    mse = mean_x ‖x − x̂‖² (P1's text, on unit-norm inputs); mse_fvu = Σ‖x − x̂‖² / Σ‖x − x̄‖², x̄ the feature means
    of x: per-element MSE over per-element variance, as the authors' code reports it (theirs divides by the first
    training batch's variance; ours by the evaluation inputs', from the same distribution).

    R_S = mean_x R(S_x), S_x the 2k largest |pre-activations| of the final sparsification (``isae.core.arip``).
    """
    mse, l0, r_s, fired = [], [], [], torch.zeros(sae.cfg.d_sae, dtype=torch.bool, device=x.device)
    for s in range(0, x.shape[0], chunk):
        xs = x[s : s + chunk]
        if sae.cfg.spec.k_sparse:
            code = sae.encode_sparse(xs, with_support=True)
            z = torch.zeros(xs.shape[0], sae.cfg.d_sae, dtype=code.vals.dtype, device=x.device)
            z.scatter_(1, code.idx, code.vals)
            support = code.support
        else:
            z = sae.encode(xs)
            support = arip_support(sae.preact(xs - sae.b_dec), sae.cfg.k)
        mse.append((xs - sae.decode(z)).pow(2).sum(1))
        l0.append((z != 0).sum(1).float())
        fired |= (z != 0).any(0)
        r_s.append(rip_gap_exact(sae.W_dec, support))
    variance = float((x - x.mean(0)).pow(2).sum(1).mean())
    return {"mse": float(torch.cat(mse).mean()), "mse_fvu": float(torch.cat(mse).mean()) / max(variance, 1e-12),
            "l0": float(torch.cat(l0).mean()),
            "dead_frac": float((~fired).float().mean()), "r_s": float(torch.cat(r_s).mean())}


def code_consistency(z_a: torch.Tensor, z_b: torch.Tensor, matching: Matching) -> tuple[float, float, float]:
    """(IoU, ℓ2 normalised by the mean code norm, ℓ2 normalised by re-paired inputs) between codes of A and codes
    of B mapped through the signed matching."""
    mapped = map_codes(z_b, matching, z_a.shape[1])
    return code_iou(z_a, mapped), code_l2(z_a, mapped), code_l2_resampled(z_a, mapped)


@torch.no_grad()
def pair_metrics(a: SAE, b: SAE, x: torch.Tensor, oracle: bool = True,
                 codes: dict[int, tuple[torch.Tensor, torch.Tensor | None]] | None = None,
                 with_matched_cos: bool = False) -> dict[str, float] | tuple[dict[str, float], np.ndarray]:
    """DCS, PW-MCC, SAE code IoU/ℓ2 and (with ``oracle``) OMP-oracle IoU/ℓ2 between two SAEs on inputs x; each ℓ2
    in both readings (``code_l2``: P1's text, ``*_l2_authors``: ``code_l2_resampled``, the authors' code).

    ``codes`` optionally caches (SAE codes, oracle codes) per ``id(sae)`` so that each SAE is encoded once
    when it appears in several pairs. ``with_matched_cos``: also return the |cos| of every matched atom pair (the
    one Hungarian matching the metrics use; their mean is the DCS).
    """
    codes = {} if codes is None else codes
    for sae in (a, b):
        if id(sae) not in codes:
            codes[id(sae)] = (sae_codes(sae, x), oracle_codes(sae, x) if oracle else None)
    cos = cosines(a.W_dec, b.W_dec)
    matching = match_atoms(a.W_dec, b.W_dec, cos)
    out = {"dcs": dcs(matching), "pw_mcc": pw_mcc(a.W_dec, b.W_dec, cos)}
    out["sae_iou"], out["sae_l2"], out["sae_l2_authors"] = code_consistency(codes[id(a)][0], codes[id(b)][0],
                                                                            matching)
    if oracle:
        out["oracle_iou"], out["oracle_l2"], out["oracle_l2_authors"] = code_consistency(
            codes[id(a)][1], codes[id(b)][1], matching)
    return (out, np.abs(matching.cos)) if with_matched_cos else out


def ground_truth_recovery(sae: SAE, true_atoms: torch.Tensor) -> dict[str, float]:
    """Recovery of the ground truth D* (M atoms) by the SAE's dictionary, after signed Hungarian matching.

    gt_dcs = (1/M) Σ_matched |cos| and gt_recovered = (1/M) #{matched |cos| > 0.9}: true atoms left unmatched
    (when the SAE has fewer atoms than D*) count as not recovered.
    """
    m = match_atoms(true_atoms, sae.W_dec)
    n_true = true_atoms.shape[0]
    return {"gt_dcs": float(np.abs(m.cos).sum() / n_true), "gt_recovered": float((np.abs(m.cos) > 0.9).sum() / n_true)}


@torch.no_grad()
def arip_estimators(sae: SAE, x: torch.Tensor, n_draws: int = 32, seed: int = 0) -> dict[str, float]:
    """R_S on x by the exact formula and by P1's one-draw noise estimator (mean and standard error over draws).

    Shows that the stochastic regulariser estimates the measured quantity (their expectations agree).
    """
    support = sae.encode_sparse(x, with_support=True).support
    gen = torch.Generator(x.device).manual_seed(seed)
    draws = torch.stack([rip_gap_noise(sae.W_dec, support, gen).mean() for _ in range(n_draws)])
    return {"exact": float(rip_gap_exact(sae.W_dec, support).mean()), "noise_mean": float(draws.mean()),
            "noise_se": float(draws.std() / n_draws**0.5)}
