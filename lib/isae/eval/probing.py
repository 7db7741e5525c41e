"""Sparse probing: how well do a few SAE latents linearly predict a label that the SAE never saw?

A reading of SAEBench's k-sparse probing (Gao et al. 2024; Karvonen et al. 2025) for labelled images.
Every step that SAEBench does not fix for this setting is **our choice**, and named so:

1. **Pooling (our choice).** An image has many patch tokens; its code is the SAE latents of its tokens
   *mean*-pooled over the image (SAEBench mean-pools latents over the tokens of a text). ``how="max"`` takes
   the per-latent maximum instead. Signed codes (AbsTopK family) are pooled as they are: mean pooling is
   linear, so it commutes with the linear part of the encoder.
2. **Tasks.** One binary task per class, "class c vs the rest" (SAEBench's tasks are binary too).
3. **Latent selection.** On the *training* examples only: the ``k`` latents with the largest
   |mean(z | y = 1) − mean(z | y = 0)| (SAEBench's selection by class-mean difference).
4. **Probe (our choice of solver).** Logistic regression on those k latents, standardised with the training
   mean and sd, L2 penalty ``l2`` on the weights, class-balanced sample weights (each class carries half the
   loss), fitted by Newton's method with a line search in float64 (torch; no scikit-learn).
5. **Score (our choice).** Balanced accuracy on held-out examples, the mean of the true-positive and
   true-negative rates: chance is 0.5 whatever the class balance. SAEBench balances its data sets instead
   and reports plain accuracy; with balanced data the two agree.

SAEBench's default k values are 1, 2 and 5; P1 does not say which one its Table 3 reports.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

DEFAULT_K = (1, 2, 5)


# --- pooling -----------------------------------------------------------------------------------------------

def pool(z: torch.Tensor, group: torch.Tensor, how: str = "mean") -> tuple[torch.Tensor, torch.Tensor]:
    """Pool the rows of ``z`` [n, K] by ``group`` [n] (e.g. the image each patch token belongs to).

    Returns (pooled [G, K], group ids [G] in increasing order). ``how``: "mean" or "max" (per latent).
    """
    if how not in ("mean", "max"):
        raise ValueError(f"how={how!r}; use 'mean' or 'max'.")
    if z.shape[0] != group.shape[0]:
        raise ValueError(f"z has {z.shape[0]} rows but group has {group.shape[0]}.")
    ids, inverse = torch.unique(torch.as_tensor(group, device=z.device), return_inverse=True)
    out = torch.zeros(len(ids), z.shape[1], dtype=z.dtype, device=z.device)
    if how == "mean":
        out.index_add_(0, inverse, z)
        counts = torch.bincount(inverse, minlength=len(ids)).to(z.dtype)
        return out / counts[:, None], ids
    out.fill_(-torch.inf)
    out.scatter_reduce_(0, inverse[:, None].expand_as(z), z, reduce="amax")
    return out, ids


@torch.no_grad()
def pooled_codes(encode: Callable[[torch.Tensor], torch.Tensor], cache, group_extra: str = "image",
                 label_extra: str = "labels", how: str = "mean", chunk: int = 8192, normalize: bool = True,
                 device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Codes of every row of an ``ActivationCache`` pooled per group, and each group's label.

    ``encode`` maps unit-norm rows [n, d_in] to codes [n, K] (``sae.encode``; ``lambda x: x`` probes the raw
    activations). Rows are read and encoded ``chunk`` at a time, so no [rows, K] matrix is ever held.
    Rows are scaled to unit norm first when ``normalize`` (the SAEs' training recipe). A group whose rows
    carry different labels raises a ValueError.
    """
    if how not in ("mean", "max"):
        raise ValueError(f"how={how!r}; use 'mean' or 'max'.")
    groups = torch.as_tensor(np.asarray(cache.extra(group_extra)).astype(np.int64))
    labels = torch.as_tensor(np.asarray(cache.extra(label_extra)).astype(np.int64))
    ids, inverse = torch.unique(groups, return_inverse=True)
    first = torch.full((len(ids),), len(groups), dtype=torch.long).scatter_reduce(
        0, inverse, torch.arange(len(groups)), reduce="amin")
    group_labels = labels[first]
    if not torch.equal(group_labels[inverse], labels):
        raise ValueError(f"the rows of some {group_extra!r} carry different {label_extra!r}.")
    acc = counts = None
    for s in range(0, len(groups), chunk):
        x = torch.from_numpy(np.asarray(cache.rows(s, min(s + chunk, len(groups))))).float().to(device)
        if normalize:
            x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
        z = encode(x).float()
        inv = inverse[s : s + len(x)].to(z.device)
        if acc is None:
            acc = torch.zeros(len(ids), z.shape[1], device=z.device)
            counts = torch.zeros(len(ids), device=z.device)
            if how == "max":
                acc.fill_(-torch.inf)
        if how == "mean":
            acc.index_add_(0, inv, z)
            counts.index_add_(0, inv, torch.ones(len(inv), device=z.device))
        else:
            acc.scatter_reduce_(0, inv[:, None].expand_as(z), z, reduce="amax")
    if how == "mean":
        acc = acc / counts[:, None]
    return acc.cpu(), group_labels


# --- selection, probe, score -------------------------------------------------------------------------------

def select_latents(z: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k latents with the largest |mean(z | y) − mean(z | ¬y)| (ties: lower index first)."""
    y = torch.as_tensor(y, dtype=torch.bool)
    if y.all() or not y.any():
        raise ValueError("y needs both classes to select latents by class-mean difference.")
    diff = (z[y].double().mean(0) - z[~y].double().mean(0)).abs()
    k = min(k, z.shape[1])
    order = torch.argsort(-diff, stable=True)
    return order[:k]


@dataclass
class LogisticProbe:
    """A fitted binary logistic regression on standardised features: p(y = 1 | x) = σ(((x − μ)/s)·w + b)."""

    mean: torch.Tensor
    scale: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return ((x.double() - self.mean) / self.scale) @ self.weight + self.bias

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x) > 0


def fit_logistic(x: torch.Tensor, y: torch.Tensor, l2: float = 1e-3, max_iter: int = 50,
                 tol: float = 1e-10) -> LogisticProbe:
    """Class-balanced, L2-penalised logistic regression fitted by Newton's method (float64, full batch).

    Loss: Σ_i w_i · BCE(logit_i, y_i) + l2 · ‖w‖², with w_i = 1 / (2 · #class(y_i)) so that each class carries
    half the loss (the bias is not penalised). Features are standardised with the training mean and sd
    (sd 0 → 1). The loss is strictly convex in the weights, so Newton steps with a backtracking line search
    converge in a few iterations for the handful of features a sparse probe has.
    """
    x = x.double()
    y = torch.as_tensor(y, dtype=torch.bool)
    if y.all() or not y.any():
        raise ValueError("a logistic probe needs examples of both classes.")
    mean = x.mean(0)
    scale = x.std(0, unbiased=False)
    scale = torch.where(scale > 1e-12, scale, torch.ones_like(scale))
    xs = torch.cat([(x - mean) / scale, torch.ones(len(x), 1, dtype=torch.float64)], dim=1)  # last column: bias
    target = y.double()
    n_pos = target.sum()
    sample_w = torch.where(y, 0.5 / n_pos, 0.5 / (len(y) - n_pos))
    penalty = torch.full((xs.shape[1],), 2.0 * l2, dtype=torch.float64)
    penalty[-1] = 0.0

    def loss_of(theta: torch.Tensor) -> torch.Tensor:
        logits = xs @ theta
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, weight=sample_w, reduction="sum")
        return bce + 0.5 * (penalty * theta.pow(2)).sum()

    theta = torch.zeros(xs.shape[1], dtype=torch.float64)
    loss = loss_of(theta)
    for _ in range(max_iter):
        prob = torch.sigmoid(xs @ theta)
        grad = xs.T @ (sample_w * (prob - target)) + penalty * theta
        if grad.abs().max() < tol:
            break
        hess = (xs * (sample_w * prob * (1 - prob))[:, None]).T @ xs + torch.diag(penalty)
        hess += 1e-12 * torch.eye(len(theta), dtype=torch.float64)
        step = torch.linalg.solve(hess, grad)
        t = 1.0
        while t > 1e-8:  # backtracking (Armijo) line search
            new = theta - t * step
            new_loss = loss_of(new)
            if new_loss <= loss - 1e-4 * t * (grad @ step):
                break
            t *= 0.5
        if t <= 1e-8:
            break
        theta, loss = new, new_loss
    return LogisticProbe(mean=mean, scale=scale, weight=theta[:-1].clone(), bias=theta[-1].clone())


def balanced_accuracy(y_true: torch.Tensor, y_pred: torch.Tensor) -> float:
    """Mean of the true-positive and true-negative rates (0.5 for any constant or random predictor)."""
    y_true = torch.as_tensor(y_true, dtype=torch.bool)
    y_pred = torch.as_tensor(y_pred, dtype=torch.bool)
    if y_true.all() or not y_true.any():
        raise ValueError("balanced accuracy needs both classes among the true labels.")
    tpr = (y_pred & y_true).sum().item() / y_true.sum().item()
    tnr = (~y_pred & ~y_true).sum().item() / (~y_true).sum().item()
    return 0.5 * (tpr + tnr)


def sparse_probe(z_train: torch.Tensor, y_train: torch.Tensor, z_test: torch.Tensor, y_test: torch.Tensor,
                 ks: Sequence[int] = DEFAULT_K, classes: Sequence | None = None, l2: float = 1e-3) -> pd.DataFrame:
    """k-sparse probes for every class c (c vs the rest) and every k in ``ks``.

    Latents are selected and the probe fitted on (z_train, y_train); scored on (z_test, y_test). One row per
    (class, k): train and test balanced accuracy and the selected latents. Classes absent from either split
    are skipped.
    """
    y_train = torch.as_tensor(y_train)
    y_test = torch.as_tensor(y_test)
    classes = sorted(set(y_train.tolist())) if classes is None else list(classes)
    rows = []
    for c in classes:
        ytr, yte = y_train == c, y_test == c
        if ytr.all() or not ytr.any() or yte.all() or not yte.any():
            continue
        for k in ks:
            idx = select_latents(z_train, ytr, k)
            probe = fit_logistic(z_train[:, idx], ytr, l2=l2)
            rows.append({"class": c, "k": int(k),
                         "train_acc": balanced_accuracy(ytr, probe.predict(z_train[:, idx])),
                         "test_acc": balanced_accuracy(yte, probe.predict(z_test[:, idx])),
                         "latents": idx.tolist()})
    return pd.DataFrame(rows)


def probe_summary(results: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Mean test (and train) balanced accuracy over classes, one row per name of ``results`` and one column per k."""
    rows = []
    for name, df in results.items():
        g = df.groupby("k")
        rows.append({"model": name, **{f"test_acc_k{k}": v for k, v in g["test_acc"].mean().items()},
                     **{f"train_acc_k{k}": v for k, v in g["train_acc"].mean().items()}})
    return pd.DataFrame(rows)
