"""Downstream loss: splice an SAE into a language model at its hook and measure what the model loses.

For every held-out window we run the model clean, with the hook's activations replaced by a
reconstruction, and with them zero-ablated, through transformer-lens hooks, and report

* clean cross-entropy, CE with the reconstruction, CE with the hook zero-ablated (next-token, nats),
* fraction of CE recovered = (CE_zero − CE_sae) / (CE_zero − CE_clean),
* KL(clean ‖ spliced) of the next-token distributions, averaged over positions.

Positions are those the activation cache trained on: BOS and padding positions are neither replaced nor
scored (our choice: their activations are outliers that the SAEs never saw).
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import torch
import torch.nn.functional as F

from isae.core.models import SAE
from isae.progress import progress_bar

Reconstructor = Callable[[torch.Tensor], torch.Tensor]


def sae_reconstructor(sae: SAE, center: bool = False) -> Reconstructor:
    """x ↦ ‖x‖ · SAE(x / ‖x‖): the SAEs are trained on unit-norm inputs, so the norm is restored after. With
    ``center`` (an SAE trained on per-sample centred rows), x's own feature mean is removed first and added back."""

    @torch.no_grad()
    def reconstruct(x: torch.Tensor) -> torch.Tensor:
        if center:
            mean = x.mean(dim=-1, keepdim=True)
            return reconstruct_unit(x - mean) + mean
        return reconstruct_unit(x)

    def reconstruct_unit(x: torch.Tensor) -> torch.Tensor:
        norm = x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        unit = (x / norm).to(sae.W_dec.device, sae.W_dec.dtype)
        return (sae.decode(sae.encode(unit)).to(x.device, x.dtype)) * norm

    return reconstruct


def _next_token_ce(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Per-position CE of predicting tokens[:, t+1] from logits[:, t]; shape [n, T-1]."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), tokens[:, 1:].flatten(), reduction="none").view(
        tokens.shape[0], -1)


@torch.no_grad()
def splice_metrics(bridge, tokens: torch.Tensor, mask: torch.Tensor, hook: str,
                   reconstructors: dict[str, Reconstructor], batch_size: int = 8,
                   progress: bool = True) -> pd.DataFrame:
    """CE clean / spliced / zero-ablated, fraction recovered and KL for each reconstructor on the windows.

    ``tokens`` [n, T] are model token ids and ``mask`` [n, T] marks the positions whose activations are
    replaced; a prediction is scored when both its input and target positions are in ``mask``.
    """
    if tokens.shape != mask.shape:
        raise ValueError(f"tokens {tuple(tokens.shape)} and mask {tuple(mask.shape)} must have the same shape.")
    device = next(bridge.parameters()).device
    sums = {name: {"ce": 0.0, "kl": 0.0} for name in reconstructors}
    clean_sum = zero_sum = 0.0
    count = 0
    for s in progress_bar(range(0, len(tokens), batch_size), desc="splicing SAEs", disable=not progress):
        tok = tokens[s : s + batch_size].to(device)
        m = mask[s : s + batch_size].to(device)
        scored = (m[:, :-1] & m[:, 1:]).float()
        n = scored.sum().item()
        if n == 0:
            continue

        def replace(fn: Reconstructor, m: torch.Tensor = m):  # m bound now: this batch's mask
            def hook_fn(act, hook=None):
                out = act.clone()
                out[m] = fn(act[m])
                return out
            return hook_fn

        clean = bridge.run_with_hooks(tok, return_type="logits")
        clean_logp = clean[:, :-1].float().log_softmax(-1)
        clean_sum += (_next_token_ce(clean, tok) * scored).sum().item()
        zero = bridge.run_with_hooks(tok, return_type="logits", fwd_hooks=[(hook, replace(torch.zeros_like))])
        zero_sum += (_next_token_ce(zero, tok) * scored).sum().item()
        for name, fn in reconstructors.items():
            logits = bridge.run_with_hooks(tok, return_type="logits", fwd_hooks=[(hook, replace(fn))])
            sums[name]["ce"] += (_next_token_ce(logits, tok) * scored).sum().item()
            logp = logits[:, :-1].float().log_softmax(-1)
            kl = (clean_logp.exp() * (clean_logp - logp)).sum(-1)
            sums[name]["kl"] += (kl * scored).sum().item()
        count += int(n)
    if count == 0:
        raise ValueError("no scored positions: the mask excludes every (input, target) pair.")
    ce_clean, ce_zero = clean_sum / count, zero_sum / count
    rows = []
    for name, acc in sums.items():
        ce = acc["ce"] / count
        rows.append({"model": name, "ce_clean": ce_clean, "ce_sae": ce, "ce_zero": ce_zero,
                     "ce_recovered": (ce_zero - ce) / (ce_zero - ce_clean) if ce_zero != ce_clean else float("nan"),
                     "kl": acc["kl"] / count, "n_tokens": count})
    return pd.DataFrame(rows)
