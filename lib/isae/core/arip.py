"""The approximate restricted isometry property (aRIP) of P1: its measurement and its regulariser.

For a support S (a set of atom indices) and G_S = D_Sᵀ D_S, the RIP gap is

    R(S) = (1/|S|) Σ_i (λ_i(G_S) − 1)² = (tr(G_S²) − 2 tr(G_S) + |S|) / |S|,

which for unit-norm atoms equals tr(G_S²)/|S| − 1 = (1/|S|) Σ_{i≠j∈S} (d_iᵀ d_j)². No eigendecomposition is
needed (``tests/test_metrics.py`` checks the identity against ``torch.linalg.eigvalsh``).

Which S (P1): the indices of the 2k largest |pre-activations| of an input — its active set plus the k most
interacting inactive atoms.
"""

from __future__ import annotations

import torch

from isae.core.sparse_ops import LatentMajor, rows_dot, sparse_decode, topk_indices


def arip_support(score: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the 2k largest |score| entries of each row ([B, min(2k, K)]), largest first."""
    return topk_indices(score, min(2 * k, score.shape[1]), magnitude=True)


def rip_gap_exact(atoms: torch.Tensor, support: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    """Per-input R(S) = (tr(G²) − 2 tr(G) + |S|)/|S| for atoms [K, N] (rows) and support [B, s]. Differentiable."""
    s = support.shape[1]
    parts = []
    for start in range(0, support.shape[0], chunk):
        d_s = atoms[support[start : start + chunk]]  # [b, s, N]
        gram = d_s @ d_s.transpose(1, 2)
        tr_g2 = gram.pow(2).sum((1, 2))
        tr_g = gram.diagonal(dim1=1, dim2=2).sum(1)
        parts.append((tr_g2 - 2 * tr_g + s) / s)
    return torch.cat(parts)


def rip_gap_noise(atoms: torch.Tensor, support: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-input stochastic estimate of R(S): ‖D_Sᵀ D_S n‖²/|S| − 1 with one n ~ N(0, I_|S|) per input.

    E_n ‖G n‖² = tr(G²), so for unit-norm atoms this is unbiased for R(S) (P1's regulariser). It costs
    O(B·|S|·N) through the sparse decode and its adjoint, never forming G_S.
    """
    _, g_n = _noise_products(atoms, support, generator)
    return g_n.pow(2).sum(1) / support.shape[1] - 1.0


def rip_gap_ratio(atoms: torch.Tensor, support: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The authors' form of the stochastic estimate, one number per batch:
    |S| · mean‖D_Sᵀ D_S n‖² / (mean‖D_S n‖²)² − 1.

    A ratio of batch means (``rsae/rip_topk.py``): E‖D_S n‖² = tr(G_S) = |S| for unit atoms, so it estimates the
    same tr(G_S²)/|S| − 1 as ``rip_gap_noise``, but the denominator also normalises away the atoms' scale.
    """
    u, g_n = _noise_products(atoms, support, generator)
    return support.shape[1] * g_n.pow(2).sum(1).mean() / u.pow(2).sum(1).mean().pow(2) - 1.0


def _noise_products(atoms: torch.Tensor, support: torch.Tensor, generator: torch.Generator | None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(D_S n [B, N], D_Sᵀ D_S n [B, s]) for one n ~ N(0, I_|S|) per input, through the sparse decode and its
    adjoint (never forming G_S)."""
    noise = torch.randn(support.shape, generator=generator, device=support.device, dtype=atoms.dtype)
    layout = LatentMajor(support, atoms.shape[0])  # both products' weight gradients scatter through the support
    u = sparse_decode(noise, support, atoms, layout)
    return u, rows_dot(atoms, support, u, layout)
