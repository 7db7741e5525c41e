"""P1's theory, measured: Theorem 3.2's construction, restricted isometry constants on the supports the data
produce, Theorem 3.6's bound, and a cheap aRIP diagnostic for any SAE.

Notation (P1, ../shared/spec/PAPERS.md): for a support S and unit-norm atoms, G_S = D_Sᵀ D_S and the restricted
isometry constant of S is δ_S = max_i |λ_i(G_S) − 1|, so that (1 − δ_S)‖z‖² ≤ ‖D z‖² ≤ (1 + δ_S)‖z‖² for every z
supported on S. aRIP asks this with δ < 1 only on the supports the data produce: S = supp(z) ∪ supp(z′) for the
codes z, z′ of two inputs.

Supports are index tensors [B, s] padded with -1 (supports of different sizes in one tensor). A padded slot
contributes an identity row and column to G_S, i.e. an eigenvalue 1, which changes no δ_S.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

PAD = -1


# --- restricted isometry constants ------------------------------------------------------------------------------

@torch.no_grad()
def gram_on_supports(atoms: torch.Tensor, supports: torch.Tensor) -> torch.Tensor:
    """G_S = D_Sᵀ D_S for every row of ``supports`` ([B, s], padded with -1): [B, s, s], the padded slots an
    identity block."""
    valid = supports != PAD
    d_s = atoms.float()[supports.clamp_min(0)] * valid[..., None]  # [B, s, N], padded rows zero
    gram = d_s @ d_s.transpose(1, 2)
    return gram + torch.diag_embed((~valid).to(gram.dtype))


@torch.no_grad()
def rip_constants(atoms: torch.Tensor, supports: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """δ_S = max_i |λ_i(G_S) − 1| for every support ([B, s], padded with -1), by a batched symmetric
    eigendecomposition (``torch.linalg.eigvalsh``) of G_S in float64: [B]."""
    out = []
    for start in range(0, supports.shape[0], chunk):
        gram = gram_on_supports(atoms, supports[start : start + chunk]).double()
        out.append((torch.linalg.eigvalsh(gram) - 1).abs().amax(1).float())
    return torch.cat(out) if out else torch.zeros(0)


def support_sets(z: torch.Tensor) -> torch.Tensor:
    """The support of every code (rows of dense codes z [B, K]) as indices [B, max |supp|], padded with -1."""
    mask = z != 0
    width = max(int(mask.sum(1).max()), 1) if len(z) else 1
    idx = torch.where(mask, torch.arange(z.shape[1], device=z.device), z.shape[1])
    idx = idx.sort(1).values[:, :width]
    return torch.where(idx == z.shape[1], PAD, idx)


def pair_unions(z: torch.Tensor, n_pairs: int, seed: int = 0) -> torch.Tensor:
    """P1's aRIP supports: S = supp(z_a) ∪ supp(z_b) for ``n_pairs`` random pairs of distinct rows of the codes
    z [B, K] (seeded), as indices padded with -1."""
    if z.shape[0] < 2:
        raise ValueError(f"pair_unions needs at least 2 codes, got {z.shape[0]}; pass more inputs.")
    gen = torch.Generator().manual_seed(seed)
    a = torch.randint(z.shape[0], (n_pairs,), generator=gen)
    b = (a + torch.randint(1, z.shape[0], (n_pairs,), generator=gen)) % z.shape[0]  # never a itself
    return support_sets(((z[a.to(z.device)] != 0) | (z[b.to(z.device)] != 0)).float())


def greedy_worst_support(atoms: torch.Tensor, size: int) -> tuple[list[int], float]:
    """A support of ``size`` atoms with a large δ_S, grown greedily: start from the most coherent pair, then add
    the atom that raises δ_S the most. A lower bound on the worst case over all supports of that size (exact for
    size 2, where δ_S is the pair's |cos|); it shows how far "all supports" RIP is from the data-driven one."""
    n_atoms = atoms.shape[0]
    if not 1 <= size <= n_atoms:
        raise ValueError(f"size={size} must be between 1 and the number of atoms, {n_atoms}.")
    if size == 1:
        norms = (atoms.float().norm(dim=1) ** 2 - 1).abs()
        return [int(norms.argmax())], float(norms.max())
    cos = (atoms.float() @ atoms.float().T).abs().fill_diagonal_(-1)
    i, j = divmod(int(cos.argmax()), n_atoms)
    support = [i, j]
    while len(support) < size:
        rest = torch.tensor([c for c in range(n_atoms) if c not in support])
        cand = torch.cat([torch.tensor(support).expand(len(rest), -1), rest[:, None]], 1)
        deltas = rip_constants(atoms, cand)
        support.append(int(rest[deltas.argmax()]))
    return support, float(rip_constants(atoms, torch.tensor([support]))[0])


def brute_worst_support(atoms: torch.Tensor, size: int) -> tuple[list[int], float]:
    """The worst support of ``size`` atoms by enumerating all of them (tiny dictionaries only: C(K, size) rows)."""
    n_sets = math.comb(atoms.shape[0], size)
    if n_sets > 2_000_000:
        raise ValueError(f"brute force over C({atoms.shape[0]}, {size}) = {n_sets} supports is too large; use "
                         "greedy_worst_support.")
    cand = torch.tensor(list(itertools.combinations(range(atoms.shape[0]), size)))
    deltas = rip_constants(atoms, cand)
    best = int(deltas.argmax())
    return cand[best].tolist(), float(deltas[best])


def delta_summary(deltas: torch.Tensor, quantiles: tuple[float, ...] = (0.5, 0.9, 0.99)) -> dict[str, float]:
    """The distribution of δ_S: mean, the given quantiles, the maximum and the fraction with δ_S < 1 (aRIP)."""
    d = deltas.double()
    out = {"mean": float(d.mean())}
    out |= {f"q{round(q * 100):g}": float(torch.quantile(d, q)) for q in quantiles}
    return out | {"max": float(d.max()), "frac_below_1": float((d < 1).double().mean()), "n": len(d)}


# --- richness and diversity (Theorem 3.6's assumptions) ---------------------------------------------------------

@torch.no_grad()
def richness(z: torch.Tensor, n_pairs: int = 20_000, min_fires: int = 5, seed: int = 0) -> dict[str, float]:
    """How far the codes z [B, K] satisfy P1's richness, as measurable on a sample:

    * ``always_cooccur_pairs``: pairs of atoms (each firing ≥ ``min_fires`` times) where one never fires without
      the other (richness needs 0), and ``n_pairs_checked`` pairs that co-occurred at least once;
    * ``sole_shared_frac``: the share of atoms (firing ≥ ``min_fires``) that are the only shared atom of at least
      one of ``n_pairs`` random input pairs (richness needs every atom: 1).
    """
    fired = (z != 0).float()
    counts = fired.sum(0)
    live = counts >= min_fires
    co = fired[:, live].T @ fired[:, live]  # co-occurrence counts among live atoms
    c = counts[live]
    nested = (co >= c[:, None]) & ~torch.eye(len(c), dtype=torch.bool, device=z.device)  # i never without j
    checked = (co > 0) & ~torch.eye(len(c), dtype=torch.bool, device=z.device)
    gen = torch.Generator().manual_seed(seed)
    a = torch.randint(z.shape[0], (n_pairs,), generator=gen).to(z.device)
    b = (a + torch.randint(1, z.shape[0], (n_pairs,), generator=gen).to(z.device)) % z.shape[0]
    shared = (fired[a] * fired[b])
    sole = shared[shared.sum(1) == 1].sum(0) > 0
    return {"live_atoms": int(live.sum()), "always_cooccur_pairs": int(nested.sum()),
            "n_pairs_checked": int(checked.sum()) // 2,
            "sole_shared_frac": float(sole[live].float().mean()) if live.any() else float("nan")}


@torch.no_grad()
def diversity(z: torch.Tensor, min_repeats: int | None = None) -> dict[str, float]:
    """Diversity ζ of the codes z [B, K], where measurable: for every exact support S that at least
    ``min_repeats`` inputs share (default 2|S|), ζ_S = σ_min(Z_S) / √n_S, Z_S the n_S codes restricted to S
    (normalised per input: **our choice**, P1 states ζ as a bound on the smallest singular value). Supports
    that repeat fewer times cannot be measured; the fraction of inputs covered says how much of the data that is.
    """
    supp = support_sets(z)
    rows: dict[tuple, list[int]] = {}
    for i, s in enumerate(supp.tolist()):
        rows.setdefault(tuple(v for v in s if v != PAD), []).append(i)
    zetas, covered = [], 0
    for s, idx in rows.items():
        need = 2 * len(s) if min_repeats is None else min_repeats
        if not s or len(idx) < max(need, len(s)):
            continue
        block = z[idx][:, list(s)].double()
        zetas.append(float(torch.linalg.svdvals(block)[-1]) / math.sqrt(len(idx)))
        covered += len(idx)
    out = {"supports": len(rows), "measurable_supports": len(zetas), "covered_frac": covered / max(len(z), 1)}
    if zetas:
        out |= {"zeta_min": min(zetas), "zeta_median": float(np.median(zetas))}
    return out


@torch.no_grad()
def pooled_diversity(z: torch.Tensor) -> float:
    """Diversity pooled over supports, for codes whose supports almost never repeat: the non-zero values of every
    code with the modal support size s, in atom order, as the rows of an [n, s] matrix; ζ̂ = σ_min / √n.
    **Our choice**: it equals the per-support ζ when code values are exchangeable across supports (true of P1's
    generator, where every support's values are the same order statistics with random signs), and is an
    assumption for learned codes."""
    mask = z != 0
    sizes = mask.sum(1)
    if not len(z) or int(sizes.max()) == 0:
        return float("nan")
    size = int(torch.mode(sizes[sizes > 0]).values)
    rows = z[sizes == size]
    vals = rows[rows != 0].reshape(len(rows), size).double()  # row-major: each code's values in atom order
    if len(vals) < size:
        return float("nan")
    return float(torch.linalg.svdvals(vals)[-1]) / math.sqrt(len(vals))


# --- Theorem 3.6 ------------------------------------------------------------------------------------------------

def theorem_3_6(delta: float, zeta: float, eps: float, bound_x: float, k: int) -> dict[str, float]:
    """Theorem 3.6's constants and bounds for aRIP constant ``delta`` (< 1), diversity ``zeta``, reconstruction
    error ``eps``, data bound ``bound_x`` (‖x‖ ≤ B) and sparsity ``k``:

    α(δ) = √(1 − (2δ/(1+δ))²), η = 2√k ε / (ζ √(1−δ)), C₁(δ) = 1 + 2/α(δ); the premise ε < ζ √(1−δ) α(δ) / (4√k);
    atom error ≤ 2 C₁ η; code error ≤ 2ε/√(1−δ) + 2√k C₁ η (B + ε)/(1−δ). With δ ≥ 1 nothing applies (NaNs).
    """
    if not delta < 1 or zeta <= 0:
        nan = float("nan")
        return {"alpha": nan, "eta": nan, "C1": nan, "eps_max": nan, "premise_holds": False, "premise_ratio": nan,
                "atom_bound": nan, "code_bound": nan}
    alpha = math.sqrt(max(0.0, 1 - (2 * delta / (1 + delta)) ** 2))
    eta = 2 * math.sqrt(k) * eps / (zeta * math.sqrt(1 - delta))
    c1 = 1 + 2 / alpha if alpha > 0 else float("inf")
    eps_max = zeta * math.sqrt(1 - delta) * alpha / (4 * math.sqrt(k))
    return {"alpha": alpha, "eta": eta, "C1": c1, "eps_max": eps_max, "premise_holds": eps < eps_max,
            "premise_ratio": eps / eps_max if eps_max > 0 else float("inf"), "atom_bound": 2 * c1 * eta,
            "code_bound": 2 * eps / math.sqrt(1 - delta) + 2 * math.sqrt(k) * c1 * eta * (bound_x + eps) / (1 - delta)}


# --- Theorem 3.2 ------------------------------------------------------------------------------------------------

@dataclass
class Construction:
    """Theorem 3.2's dictionary and two k-sparse linear (hence continuous) encoders of the same inputs."""

    atoms: torch.Tensor
    """[k + 2, N]: e_1..e_k, then (e_{k−1} + ε e_k)/√(1+ε²) and (ε e_{k−1} + e_k)/√(1+ε²)."""
    x: torch.Tensor
    """Inputs in span{e_1..e_k}."""
    codes_a: torch.Tensor
    """Codes on e_1..e_k (support {1..k})."""
    codes_b: torch.Tensor
    """Codes on e_1..e_{k−2} and the two tilted atoms (support {1..k−2, k+1, k+2})."""


def theorem_3_2(k: int, eps: float, n_inputs: int = 1024, d_in: int | None = None, seed: int = 0) -> Construction:
    """P1's impossibility construction: one dictionary (so DCS = 1 between the two "SAEs"), two encoders with the
    same reconstruction error (zero: each support is a basis of the inputs' span) and different supports on every
    input whose last two coordinates are not both zero. ``eps`` in (0, 1): the tilt of the two extra atoms."""
    if k < 2:
        raise ValueError(f"k={k} must be ≥ 2 (the construction tilts two of the k atoms).")
    if not 0 < eps < 1:
        raise ValueError(f"eps={eps} must be in (0, 1): at 0 the extra atoms duplicate e_(k-1), e_k; at 1 they "
                         "coincide.")
    d_in = k if d_in is None else d_in
    if d_in < k:
        raise ValueError(f"d_in={d_in} must be ≥ k={k}.")
    eye = torch.eye(d_in, dtype=torch.float64)
    tilt = torch.stack([eye[k - 2] + eps * eye[k - 1], eps * eye[k - 2] + eye[k - 1]]) / math.sqrt(1 + eps**2)
    atoms = torch.cat([eye[:k], tilt])
    gen = torch.Generator().manual_seed(seed)
    coef = torch.randn(n_inputs, k, generator=gen, dtype=torch.float64)
    x = coef @ eye[:k]
    codes_a = torch.zeros(n_inputs, k + 2, dtype=torch.float64)
    codes_a[:, :k] = coef
    codes_b = torch.zeros_like(codes_a)
    codes_b[:, : k - 2] = coef[:, : k - 2]
    # the last two coordinates, expressed in the tilted pair: solve [t1 t2]ᵀ c = x_(k−1, k)
    pair = tilt[:, k - 2 : k]  # rows t1, t2 restricted to coordinates k−1, k
    codes_b[:, k:] = torch.linalg.solve(pair.T, coef[:, k - 2 :].T).T
    return Construction(atoms=atoms, x=x, codes_a=codes_a, codes_b=codes_b)


# --- a cheap aRIP diagnostic (beyond P1) ------------------------------------------------------------------------

def bootstrap_summary(deltas: torch.Tensor, n_boot: int = 500, level: float = 0.95, seed: int = 0
                      ) -> pd.DataFrame:
    """``delta_summary`` of ``deltas`` with percentile-bootstrap confidence intervals at ``level`` (rows: the
    statistics; columns estimate, lo, hi)."""
    gen = torch.Generator().manual_seed(seed)
    point = delta_summary(deltas)
    boots = pd.DataFrame([delta_summary(deltas[torch.randint(len(deltas), (len(deltas),), generator=gen)])
                          for _ in range(n_boot)])
    tail = (1 - level) / 2
    rows = {s: {"estimate": point[s], "lo": boots[s].quantile(tail), "hi": boots[s].quantile(1 - tail)}
            for s in point if s != "n"}
    return pd.DataFrame(rows).T.assign(n=point["n"])


@torch.no_grad()
def arip_diagnostic(sae, x: torch.Tensor, n_supports: int = 512, n_boot: int = 500, level: float = 0.95,
                    seed: int = 0) -> pd.DataFrame:
    """The distribution of δ_S on the supports an SAE produces on inputs x (P1's pair unions of code supports),
    estimated from ``n_supports`` sampled supports, with bootstrap confidence intervals; one call for any saved
    SAE (``isae.core.io.load_sae``) and activations. Columns estimate, lo, hi, n, seconds (the whole call)."""
    t0 = time.perf_counter()
    from isae.eval.metrics import sae_codes  # local: metrics imports the models, which this module does not need

    z = sae_codes(sae, x)
    deltas = rip_constants(sae.W_dec.detach(), pair_unions(z, n_supports, seed))
    return bootstrap_summary(deltas, n_boot, level, seed).assign(seconds=time.perf_counter() - t0)
