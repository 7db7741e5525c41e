"""Naive dense reference for the k-sparse SAEs: every step materialises batch × K tensors.

It is the ground truth that tests compare the sparse kernels with (values and gradients) and the
baseline that ``benchmarks/bench_training.py`` times. It shares parameters with an ``SAE``; only the
arithmetic differs. AuxK is not included (it is compared separately).
"""

from __future__ import annotations

import torch

from isae.core.arip import arip_support, rip_gap_exact
from isae.core.models import SAE


def _sparsify(sae: SAE, pre: torch.Tensor) -> torch.Tensor:
    """The k-sparse code of one encoder step, densely: keep the k largest (signed: largest |·|) entries."""
    key = pre.abs() if sae.cfg.spec.signed else pre
    idx = key.topk(sae.cfg.k, dim=1).indices
    mask = torch.zeros_like(pre, dtype=torch.bool).scatter(1, idx, True)
    z = pre * mask
    return sae.cfg.spec.sparse_values(z)


def dense_encode(sae: SAE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(z, score): z = σ(W(x − b)); for iSAE-ME, T steps of z ← AbsTopK(S z + W(x − b)), all dense.

    ``score`` is the pre-activation of the final sparsification (where the aRIP support is taken).
    """
    pre = (x - sae.b_dec) @ sae.W_enc.T + sae.b_enc
    score = pre
    z = _sparsify(sae, score)
    if sae.cfg.spec.multistep:
        for _ in range(sae.cfg.n_steps - 1):
            score = pre + z @ sae.S
            z = _sparsify(sae, score)
    return z, score


def dense_loss(sae: SAE, x: torch.Tensor) -> torch.Tensor:
    """MSE (+ exact aRIP term when the config has one), computed densely."""
    z, score = dense_encode(sae, x)
    x_hat = z @ sae.W_dec + sae.b_dec
    loss = (x - x_hat).pow(2).sum(1).mean()
    if sae.cfg.arip_coef > 0:
        loss = loss + sae.cfg.arip_coef * rip_gap_exact(sae.W_dec, arip_support(score.detach(), sae.cfg.k)).mean()
    return loss
