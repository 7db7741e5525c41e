"""P2's weighted reconstruction loss and its weight normalisation, shared by the toy and the real-data SAEs."""

from __future__ import annotations

import torch


def weighted_mse(err: torch.Tensor, gamma: torch.Tensor | None = None) -> torch.Tensor:
    """mean_x ‖Γ err‖², Γ = diag(γ); γ = None is the plain loss mean_x ‖err‖².

    ``err`` is [..., batch, d]; ``gamma`` is [d] or [..., d] (one γ per leading index, e.g. per model of a
    bank: a batch axis is inserted). Returns [...] (a scalar for a single model).
    """
    if gamma is not None:
        err = err * (gamma[..., None, :] if gamma.dim() == err.dim() - 1 else gamma)
    return err.pow(2).sum(-1).mean(-1)


def unit_mean_square(gamma: torch.Tensor) -> torch.Tensor:
    """γ scaled so that mean γ² = 1 (in γ's dtype): for errors spread evenly over the dimensions the weighted
    loss then has the scale of the plain one, and one learning rate serves every weighting (our choice)."""
    return gamma / gamma.pow(2).mean().sqrt()
