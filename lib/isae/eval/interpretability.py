"""Offline monosemanticity measures for SAE latents: no explainer LLM, only labels the data already carry.

P2 (Cui et al.) scores latents by *auto-interpretability*: an explainer LLM writes an explanation from a
latent's top-activating examples and a judge predicts activations from it. No LLM is reachable here, so this
module measures the property auto-interpretability rewards — a latent's top-activating inputs share one
recognisable thing — with labels we have (every definition below is **our choice**):

* **text** (a language model's residual stream; each row is a token):
  - ``token_purity`` — the share of a latent's ``n_top`` top-activating tokens that are its most common token
    id: 1 when the latent fires only on one token, 1/n_top when its top tokens are all different;
  - ``token_entropy`` — Shannon entropy (nats) of the token ids among the top ``n_top`` (0 = one token;
    log n_top = all different); ``token_n_eff`` = exp(entropy), the effective number of distinct tokens;
  - ``context_purity`` — the same purity for the token *before* each top-activating token (a window's first
    token and tokens after a removed document separator have the context id −1): a latent that responds to
    "what came before" (e.g. the word after "of") scores high here even when the current token varies.
* **vision** (patch tokens; rows carry their image index and class label):
  - ``class_purity`` — patch tokens are max-pooled per image (a latent's activation on an image is its largest
    activation on any of the image's patches), the ``n_top`` images with the largest pooled activation are
    taken, and the purity is the share of them in their most common class. Pooling first keeps one image's
    many correlated patches from counting as independent evidence. ``class_entropy`` as for text.

A latent is **live** when it fires (activation > 0) on at least ``n_top`` held-out rows (text) or images
(vision); only live latents are scored, every per-SAE number is the mean over live latents, and the live
fraction is reported beside it, with the share of *all* latents that are live and pure (purity ≥ 0.5). The
chance level of each purity — the same measure on ``n_top`` inputs drawn
at random — is given by :func:`random_purity`: frequent tokens ("the", ",") make it well above 1/n_top.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

Encoder = Callable[[torch.Tensor], torch.Tensor]

TEXT_MEASURES = ("token_purity", "token_entropy", "token_n_eff", "context_purity")
VISION_MEASURES = ("class_purity", "class_entropy")
NO_CONTEXT = -1
"""Context id of a token with no cached predecessor in its window (first token after BOS or a separator)."""


@dataclass
class TopActivations:
    """The ``n_top`` largest activations of every latent over a set of inputs."""

    values: torch.Tensor
    """[n_top, K], each column sorted in decreasing order."""
    index: torch.Tensor
    """[n_top, K] (long): the input (row or pooled group) of each value."""
    fires: torch.Tensor
    """[K] (long): number of inputs on which the latent is > 0."""

    @property
    def n_top(self) -> int:
        return int(self.values.shape[0])

    def live(self, n_top: int | None = None) -> torch.Tensor:
        """Bool [K]: latents that fire on at least ``n_top`` inputs (default: this object's n_top)."""
        return self.fires >= (self.n_top if n_top is None else n_top)


@torch.no_grad()
def top_activations(encode: Encoder, x: torch.Tensor, n_top: int, chunk: int = 4096) -> TopActivations:
    """The ``n_top`` largest activations per latent of ``encode(x)``, computed ``chunk`` rows at a time.

    Never holds more than [chunk + n_top, K] codes, so it scales to long held-out sets.
    """
    if n_top <= 0:
        raise ValueError(f"n_top={n_top} must be positive.")
    if x.shape[0] < n_top:
        raise ValueError(f"{x.shape[0]} inputs are fewer than n_top={n_top}.")
    vals = idx = fires = None
    for s in range(0, x.shape[0], chunk):
        z = encode(x[s : s + chunk]).float()
        local = z.topk(min(n_top, z.shape[0]), dim=0)  # the chunk's own top rows, then merge
        if vals is None:
            cand_v, cand_i = local.values, local.indices + s
            fires = torch.zeros(z.shape[1], dtype=torch.long, device=z.device)
        else:
            cand_v, cand_i = torch.cat([vals, local.values]), torch.cat([idx, local.indices + s])
        fires += (z > 0).sum(0)
        top = cand_v.topk(min(n_top, cand_v.shape[0]), dim=0)
        vals, idx = top.values, cand_i.gather(0, top.indices)
    return TopActivations(values=vals.cpu(), index=idx.cpu(), fires=fires.cpu())


def top_of_pooled(pooled: torch.Tensor, n_top: int) -> TopActivations:
    """``TopActivations`` of an already pooled code matrix [n_groups, K] (e.g. max over an image's patches)."""
    if pooled.shape[0] < n_top:
        raise ValueError(f"{pooled.shape[0]} pooled inputs are fewer than n_top={n_top}.")
    top = pooled.float().topk(n_top, dim=0)
    return TopActivations(values=top.values.cpu(), index=top.indices.cpu(), fires=(pooled > 0).sum(0).cpu())


def label_purity(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(purity [K], entropy [K]) of the integer labels in each column of ``labels`` [n, K].

    purity = (count of the column's most common label) / n; entropy = −Σ p log p over the column's labels
    (nats). Labels may be any integers (token ids, class ids, −1).
    """
    labels = torch.as_tensor(labels).long()
    n, k = labels.shape
    if n == 0:
        raise ValueError("labels has no rows.")
    shifted = labels - labels.min()
    span = int(shifted.max()) + 1
    key = torch.arange(k, dtype=torch.long)[None, :].expand(n, k) * span + shifted  # (column, label) pairs
    uniq, counts = torch.unique(key.reshape(-1), return_counts=True)
    col = uniq // span
    p = counts.double() / n
    purity = torch.zeros(k, dtype=torch.double).scatter_reduce(0, col, p, reduce="amax", include_self=False)
    entropy = torch.zeros(k, dtype=torch.double).index_add(0, col, -p * p.log())
    return purity.float(), entropy.float()


def previous_tokens(tokens: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """For each cached LM row, the token id of the row before it in the same window, else ``NO_CONTEXT``.

    Rows of a cache are the kept positions of consecutive windows; row i − 1 precedes row i exactly when
    positions[i] = positions[i − 1] + 1 (a window's first kept token follows BOS, which is not cached).
    """
    tokens, positions = np.asarray(tokens).astype(np.int64), np.asarray(positions).astype(np.int64)
    prev = np.full_like(tokens, NO_CONTEXT)
    follows = np.zeros(len(tokens), dtype=bool)
    follows[1:] = positions[1:] == positions[:-1] + 1
    prev[follows] = tokens[:-1][follows[1:]]
    return prev


def _per_latent(top: TopActivations, live: torch.Tensor, measures: dict[str, torch.Tensor]) -> pd.DataFrame:
    frame = pd.DataFrame({"latent": np.arange(len(top.fires)), "fires": top.fires.numpy(), "live": live.numpy()})
    for name, value in measures.items():
        v = value.double().numpy().copy()
        v[~live.numpy()] = np.nan
        frame[name] = v
    return frame


def text_measures(top: TopActivations, tokens: np.ndarray, prev_tokens: np.ndarray) -> pd.DataFrame:
    """Per-latent text measures (``TEXT_MEASURES``) from the rows in ``top.index``; NaN for latents not live."""
    tok = torch.as_tensor(np.asarray(tokens).astype(np.int64))[top.index]
    ctx = torch.as_tensor(np.asarray(prev_tokens).astype(np.int64))[top.index]
    purity, entropy = label_purity(tok)
    context_purity, _ = label_purity(ctx)
    return _per_latent(top, top.live(), {"token_purity": purity, "token_entropy": entropy,
                                         "token_n_eff": entropy.exp(), "context_purity": context_purity})


def vision_measures(top: TopActivations, image_labels: torch.Tensor) -> pd.DataFrame:
    """Per-latent vision measures (``VISION_MEASURES``) from the pooled images in ``top.index``."""
    purity, entropy = label_purity(torch.as_tensor(image_labels).long()[top.index])
    return _per_latent(top, top.live(), {"class_purity": purity, "class_entropy": entropy})


PURE_THRESHOLD = 0.5
"""A latent counts as *pure* when its purity is at least this (our choice): most of its top inputs share one label."""


def summarise_latents(per_latent: pd.DataFrame) -> dict[str, float]:
    """Means over live latents of every measure in ``per_latent``, the live fraction and the live count.

    For every purity column also ``<name>_pure_frac`` (e.g. ``token_pure_frac``): the share of *all* latents
    that are live with purity ≥ ``PURE_THRESHOLD``. Unlike the mean over live latents it does not rise when
    impure latents die, so it guards the mean against survivor bias.
    """
    live = per_latent[per_latent["live"]]
    out = {"live_frac": float(per_latent["live"].mean()), "n_live": int(len(live))}
    for col in per_latent.columns:
        if col not in ("latent", "fires", "live"):
            out[col] = float(live[col].mean()) if len(live) else float("nan")
    for col in [c for c in per_latent.columns if c.endswith("_purity")]:
        pure = per_latent["live"] & (per_latent[col] >= PURE_THRESHOLD)
        out[col.replace("_purity", "_pure_frac")] = float(pure.mean())
    return out


@torch.no_grad()
def text_interpretability(encode: Encoder, x: torch.Tensor, tokens: np.ndarray, prev_tokens: np.ndarray,
                          n_top: int, chunk: int = 4096) -> pd.DataFrame:
    """Per-latent text measures of ``encode`` on held-out LM rows ``x`` (unit norm) with their token ids."""
    if len(tokens) != x.shape[0] or len(prev_tokens) != x.shape[0]:
        raise ValueError(f"x has {x.shape[0]} rows but tokens/prev_tokens have {len(tokens)}/{len(prev_tokens)}.")
    return text_measures(top_activations(encode, x, n_top, chunk=chunk), tokens, prev_tokens)


@torch.no_grad()
def pooled_max(encode: Encoder, x: torch.Tensor, groups: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """[n_groups, K]: per group (e.g. an image; ``torch.unique`` order) the max of ``encode`` over its rows."""
    ids, inverse = torch.unique(torch.as_tensor(groups).long(), return_inverse=True)
    out = None
    for s in range(0, x.shape[0], chunk):
        z = encode(x[s : s + chunk]).float()
        if out is None:
            out = torch.full((len(ids), z.shape[1]), -torch.inf, device=z.device)
        inv = inverse[s : s + z.shape[0]].to(z.device)
        out.scatter_reduce_(0, inv[:, None].expand_as(z), z, reduce="amax")
    return out.cpu()


def image_labels(groups: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The label of each group (in ``torch.unique`` order); a ValueError if a group carries several labels."""
    groups, labels = torch.as_tensor(groups).long(), torch.as_tensor(labels).long()
    ids, inverse = torch.unique(groups, return_inverse=True)
    out = torch.full((len(ids),), -1, dtype=torch.long).scatter_reduce(0, inverse, labels, reduce="amax",
                                                                       include_self=False)
    if not torch.equal(out[inverse], labels):
        raise ValueError("the rows of some group carry different labels.")
    return out


@torch.no_grad()
def vision_interpretability(encode: Encoder, x: torch.Tensor, groups: torch.Tensor, labels: torch.Tensor,
                            n_top: int, chunk: int = 4096) -> pd.DataFrame:
    """Per-latent vision measures of ``encode`` on patch tokens ``x`` with their image index and class label."""
    pooled = pooled_max(encode, x, groups, chunk=chunk)
    return vision_measures(top_of_pooled(pooled, n_top), image_labels(groups, labels))


def random_purity(labels: np.ndarray, n_top: int, n_draws: int = 2000, seed: int = 0) -> float:
    """Chance level of the purity: its mean over ``n_draws`` random sets of ``n_top`` of ``labels`` (no replacement)."""
    labels = np.asarray(labels)
    g = np.random.default_rng(seed)
    draws = np.stack([g.choice(len(labels), size=n_top, replace=False) for _ in range(n_draws)], axis=1)
    purity, _ = label_purity(torch.as_tensor(labels.astype(np.int64))[torch.as_tensor(draws)])
    return float(purity.mean())
