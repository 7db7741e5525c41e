"""P2's toy model of superposition: when does a tied SAE recover the true features, and does weighting help?

Cui, Zhang, Wang & Wang (P2) model superposition as x_p = W_p x: n = 200 non-negative sparse true features
x ∈ R^n are written into n_p = 20 observed ("polysemantic") dimensions. A tied SAE with n_m latents reads
them back, x_m = σ(W_m x_p), x̂_p = W_mᵀ x_m, and is trained on ‖Γ(x_p − x̂_p)‖² (Γ = I: the plain SAE;
Γ = diag(γ): P2's weighted SAE, WSAE). P2 claims the SAE recovers the true features (rows of W_m ∝
columns of W_p) only when (1) the features are extremely sparse, (2) σ is a sparse activation and
(3) n_m ≥ n; and that weights smaller on more polysemantic input dims narrow the gap between the SAE loss
and the loss on the true features.

Everything P2 does not specify is **our choice** and is marked so below:

* non-zero feature values ~ Uniform(0, 1) (as in Elhage et al.'s toy models); feature i is zero with
  probability S, independently of the others;
* W_p: "gaussian" — i.i.d. N(0, 1) entries, columns scaled to unit norm (every input dim is equally
  polysemantic); "heterogeneous" — input dim j loads on each feature with probability ρ_j, ρ_j geometric
  from ``density_min`` to 1 over the n_p dims, Gaussian values, unit columns (dims range from nearly
  monosemantic to fully polysemantic, which P2's weighting principle needs to have anything to act on);
* the SAE has no biases (P2's equations have none); ``bias=True`` adds a per-latent encoder bias;
* rows of W_m are initialised as random unit vectors; Adam on W_m (and b); no atom normalisation (the tied
  loss fixes the atom scale by itself: a recovered atom has unit norm);
* TopK keeps the k = 2 largest pre-activations and clips them at 0 (codes ≥ 0, like isae's TopK);
  JumpReLU is pre·1[pre > 0.1] with a fixed threshold.

Many SAEs (seeds × conditions) with the same activation and width are trained together as one *bank*:
one parameter tensor [n_models, n_m, n_p] and the sum of their losses. Their gradients do not interact and
Adam is element-wise, so each model trains exactly as it would alone — only faster. All models of an
experiment see the same batches in the same order (one seeded stream); seeds differ only in the SAE init.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field, replace
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from isae.eval.metrics import match_atoms
from isae.experiments.profiles import TOY_ACTIVATIONS as ACTIVATIONS, ToyProfile, toy_profile  # noqa: F401
from isae.core.seeding import derive_seed

ACTIVATION_NAMES = {"none": "none", "relu": "ReLU", "jumprelu": "JumpReLU (0.1)", "topk": "TopK (k=2)"}
W_P_KINDS = ("gaussian", "heterogeneous")
RECOVERY_THRESHOLD = 0.9
"""A true feature is *recovered* when its Hungarian-matched atom has |cos| above this (P2-style, our value)."""
PROBE_VALUE = 0.5
"""Value of the single active feature in the isolated-feature probe: E[x_i | x_i > 0] under Uniform(0, 1)."""


# ------------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ToyConfig:
    """Ground truth of the toy model. Defaults are P2's sizes unless marked "our choice"."""

    n_features: int = 200
    """n, true (monosemantic) features (P2: 200)."""
    n_input: int = 20
    """n_p, observed superposed dims (P2: 20)."""
    sparsity: float = 0.9
    """S: each feature is zero with probability S."""
    w_p: str = "gaussian"
    """How W_p is drawn: "gaussian" or "heterogeneous" (our choice; see the module docstring)."""
    density_min: float = 0.02
    """"heterogeneous": the sparsest input dim loads on this fraction of the features (our choice)."""
    seed: int = 0
    """Seed of W_p."""

    def __post_init__(self) -> None:
        if self.n_features <= 0 or self.n_input <= 0:
            raise ValueError(f"n_features={self.n_features} and n_input={self.n_input} must be positive.")
        if not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"sparsity={self.sparsity} must lie in [0, 1) (1 would mean no feature is ever on).")
        if self.w_p not in W_P_KINDS:
            raise ValueError(f"w_p={self.w_p!r} is unknown; use one of {W_P_KINDS}.")
        if not 0.0 < self.density_min <= 1.0:
            raise ValueError(f"density_min={self.density_min} must lie in (0, 1].")

    def to_dict(self) -> dict:
        return asdict(self)


def make_w_p(cfg: ToyConfig) -> torch.Tensor:
    """The superposition matrix W_p [n_input, n_features]: unit-norm columns (one per true feature)."""
    gen = torch.Generator().manual_seed(derive_seed("toy-w_p", cfg.seed))
    w = torch.randn(cfg.n_input, cfg.n_features, generator=gen)
    if cfg.w_p == "heterogeneous":
        density = torch.logspace(np.log10(cfg.density_min), 0.0, cfg.n_input)[:, None]
        mask = torch.rand(cfg.n_input, cfg.n_features, generator=gen) < density
        empty = ~mask.any(0)  # a feature on no dim would be invisible: put it on one random dim
        rows = torch.randint(cfg.n_input, (int(empty.sum()),), generator=gen)
        mask[rows, torch.nonzero(empty).flatten()] = True
        w = w * mask
    return w / w.norm(dim=0, keepdim=True)


def polysemanticity(w_p: torch.Tensor) -> torch.Tensor:
    """Polysemanticity of each input dim j: the participation ratio of row j of W_p (our definition).

    PR_j = (Σ_i W_p[j,i]²)² / Σ_i W_p[j,i]⁴ — the effective number of true features written into dim j:
    1 when one feature owns the dim, n when all n features load on it equally.
    """
    sq = w_p.pow(2)
    return sq.sum(1).pow(2) / sq.pow(2).sum(1).clamp_min(1e-30)


def wsae_weights(w_p: torch.Tensor, alpha: float) -> torch.Tensor:
    """P2's principle on the toy: γ_j = PR_j^(−α) (smaller for more polysemantic dims), scaled so mean γ² = 1.

    α = 0 gives uniform weights (the plain SAE). The scaling (our choice) keeps the loss on the scale of the
    plain loss, so one learning rate serves every α.
    """
    gamma = polysemanticity(w_p).pow(-float(alpha))
    return gamma / gamma.pow(2).mean().sqrt()


class ToyStream:
    """Seeded batches of the toy model; ``sample(n, step)`` is a pure function of (seed, step).

    Two uniforms per feature and input are drawn: u decides whether the feature is on (u ≥ S) and v is its
    value. Because the draws do not depend on S, streams with the same seed and different S are *coupled*:
    ``sample(n, step, sparsity=(0.5, 0.9))`` returns both from the same draws (a feature on at S = 0.9 is
    also on at 0.5), which is how a sparsity sweep trains all its models from one stream.
    """

    def __init__(self, cfg: ToyConfig, batch_size: int, seed: int = 0, device: str | torch.device = "cpu"):
        if batch_size <= 0:
            raise ValueError(f"batch_size={batch_size} must be positive.")
        self.cfg = cfg
        self.batch_size = batch_size
        self.seed = seed
        self.device = torch.device(device)
        self.w_p = make_w_p(cfg).to(self.device)

    @property
    def d_in(self) -> int:
        return self.cfg.n_input

    def identity(self) -> dict:
        return {"stream": "toy", **self.cfg.to_dict(), "stream_seed": self.seed, "batch_size": self.batch_size}

    def sample(self, n: int, step: int, sparsity: float | Sequence[float] | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x [n, n_features], x_p [n, n_input]) drawn from seed (seed, step); negative steps are held out.

        With a sequence of sparsities both gain a leading axis, one slice per sparsity, from the same draws.
        """
        gen = torch.Generator(self.device).manual_seed(derive_seed("toy-stream", self.seed, step))
        u = torch.rand(n, self.cfg.n_features, generator=gen, device=self.device)
        v = torch.rand(n, self.cfg.n_features, generator=gen, device=self.device)
        s = self.cfg.sparsity if sparsity is None else sparsity
        if isinstance(s, (int, float)):
            x = v * (u >= s)
        else:
            x = v * (u >= torch.as_tensor(list(s), device=self.device, dtype=u.dtype)[:, None, None])
        return x, x @ self.w_p.T

    def batch(self, step: int) -> torch.Tensor:
        """Training batch number ``step``: the observed x_p."""
        return self.sample(self.batch_size, step)[1]

    def held_out(self, n: int, sparsity: float | Sequence[float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Evaluation inputs that no training step sees (drawn from step −1)."""
        return self.sample(n, step=-1, sparsity=sparsity)


# ------------------------------------------------------------------------------------------------------
# The tied SAE (a bank of independent ones)
# ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ToySAEConfig:
    """One tied SAE x_m = σ(W_m x_p + b), x̂_p = W_mᵀ x_m."""

    n_input: int = 20
    n_latents: int = 200
    """n_m."""
    activation: str = "topk"
    """σ: "none" (identity), "relu", "jumprelu" (fixed threshold) or "topk"."""
    k: int = 2
    """TopK: latents kept (P2: 2)."""
    threshold: float = 0.1
    """JumpReLU threshold (P2: 0.1)."""
    bias: bool = False
    """Per-latent encoder bias b (our choice: off, as in P2's equations)."""
    l1_coef: float = 0.0
    """Optional L1 penalty λ·Σ_m |x_m|·‖W_m[m]‖ (not in P2; our extra for the ReLU ablation)."""

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation={self.activation!r} is unknown; use one of {ACTIVATIONS}.")
        if self.n_input <= 0 or self.n_latents <= 0:
            raise ValueError("n_input and n_latents must be positive.")
        if self.activation == "topk" and not 0 < self.k <= self.n_latents:
            raise ValueError(f"k={self.k} must satisfy 0 < k ≤ n_latents={self.n_latents}.")
        if self.threshold < 0 or self.l1_coef < 0:
            raise ValueError("threshold and l1_coef must be ≥ 0.")


def activate(pre: torch.Tensor, cfg: ToySAEConfig) -> torch.Tensor:
    """σ applied to pre-activations [..., n_latents]."""
    if cfg.activation == "none":
        return pre
    if cfg.activation == "relu":
        return pre.relu()
    if cfg.activation == "jumprelu":
        return pre * (pre > cfg.threshold)
    vals, idx = pre.topk(cfg.k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, idx, vals.relu())


class ToySAE(nn.Module):
    """A bank of ``len(seeds)`` independent tied SAEs of one configuration, trained in lockstep.

    ``W`` is [n_models, n_latents, n_input] (row m of model i = atom m), ``b`` is [n_models, n_latents] and
    ``gamma`` (a buffer) the per-model loss weights [n_models, n_input]. Model i is initialised from
    ``seeds[i]`` alone, so a seed starts from the same atoms whatever bank it is in.
    """

    def __init__(self, cfg: ToySAEConfig, seeds: Sequence[int] = (0,)):
        super().__init__()
        self.cfg = cfg
        self.seeds = tuple(int(s) for s in seeds)
        if not self.seeds:
            raise ValueError("a bank needs at least one seed.")
        rows = []
        for s in self.seeds:
            gen = torch.Generator().manual_seed(derive_seed("toy-sae-init", s))
            w = torch.randn(cfg.n_latents, cfg.n_input, generator=gen)
            rows.append(w / w.norm(dim=1, keepdim=True))
        self.W = nn.Parameter(torch.stack(rows))
        self.b = nn.Parameter(torch.zeros(len(self.seeds), cfg.n_latents), requires_grad=cfg.bias)
        self.register_buffer("gamma", torch.ones(len(self.seeds), cfg.n_input))

    @property
    def n_models(self) -> int:
        return self.W.shape[0]

    @classmethod
    def from_atoms(cls, cfg: ToySAEConfig, atoms: torch.Tensor) -> "ToySAE":
        """A one-model bank with the given atoms [n_latents, n_input] (e.g. W_pᵀ: the ground-truth SAE)."""
        sae = cls(replace(cfg, n_latents=atoms.shape[0], n_input=atoms.shape[1]), seeds=(0,))
        with torch.no_grad():
            sae.W.copy_(atoms[None].to(sae.W))
        return sae

    def set_gamma(self, gamma: torch.Tensor) -> None:
        """Loss weights Γ = diag(γ): [n_input] (all models) or [n_models, n_input]; positive."""
        gamma = torch.as_tensor(gamma, dtype=self.gamma.dtype, device=self.gamma.device)
        if gamma.shape not in ((self.cfg.n_input,), (self.n_models, self.cfg.n_input)) or not bool((gamma > 0).all()):
            raise ValueError(f"gamma must be positive with shape ({self.cfg.n_input},) or "
                             f"({self.n_models}, {self.cfg.n_input}), got {tuple(gamma.shape)}.")
        self.gamma.copy_(gamma.expand_as(self.gamma))

    def _inputs(self, x_p: torch.Tensor) -> torch.Tensor:
        if x_p.dim() == 2:  # one batch for every model
            return x_p.unsqueeze(0).expand(self.n_models, -1, -1)
        if x_p.dim() != 3 or x_p.shape[0] != self.n_models:
            raise ValueError(f"x_p must be [batch, n_input] or [{self.n_models}, batch, n_input]; got {tuple(x_p.shape)}.")
        return x_p

    def preact(self, x_p: torch.Tensor) -> torch.Tensor:
        """W_m x_p + b, [n_models, batch, n_latents]."""
        return torch.baddbmm(self.b[:, None, :], self._inputs(x_p), self.W.transpose(1, 2))

    def encode(self, x_p: torch.Tensor) -> torch.Tensor:
        """x_m = σ(W_m x_p + b), [n_models, batch, n_latents]."""
        return activate(self.preact(x_p), self.cfg)

    def decode(self, x_m: torch.Tensor) -> torch.Tensor:
        """x̂_p = W_mᵀ x_m (tied), [n_models, batch, n_input]."""
        return torch.bmm(x_m, self.W)

    def forward(self, x_p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x_m = self.encode(x_p)
        return x_m, self.decode(x_m)

    def losses(self, x_p: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-model losses [n_models]: "weighted" = mean_x ‖Γ(x_p − x̂_p)‖², "mse" (Γ = I), "total" (+ L1)."""
        x_p = self._inputs(x_p)
        x_m, x_hat = self(x_p)
        err = x_p - x_hat
        weighted = weighted_loss(err, self.gamma)
        out = {"weighted": weighted, "mse": err.pow(2).sum(-1).mean(-1), "total": weighted}
        if self.cfg.l1_coef > 0:
            out["l1"] = (x_m.abs() * self.W.norm(dim=-1)[:, None, :]).sum(-1).mean(-1)
            out["total"] = weighted + self.cfg.l1_coef * out["l1"]
        return out


def weighted_loss(err: torch.Tensor, gamma: torch.Tensor | None = None) -> torch.Tensor:
    """P2's weighted reconstruction loss mean_x ‖Γ err‖², Γ = diag(γ); γ = None (or ones) is the plain loss.

    ``err`` is [..., batch, n_input]; ``gamma`` broadcasts against [..., n_input] (a leading model axis gets
    a batch axis inserted). Returns [...] (one value per model).
    """
    if gamma is not None:
        err = err * (gamma[..., None, :] if gamma.dim() == err.dim() - 1 else gamma)
    return err.pow(2).sum(-1).mean(-1)


# ------------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ToyTrainConfig:
    """Optimisation of a bank (our choices: Adam, a fresh batch every step, constant lr then a linear decay
    to 0 over the last ``decay_frac`` of the steps, so the measured parameters are not one noisy step)."""

    n_steps: int = 4000
    batch_size: int = 256
    lr: float = 5e-3
    decay_frac: float = 0.2
    log_every: int = 100

    def __post_init__(self) -> None:
        if self.n_steps <= 0 or self.batch_size <= 0 or not self.lr > 0 or self.log_every <= 0:
            raise ValueError("n_steps, batch_size, lr and log_every must be positive.")
        if not 0.0 <= self.decay_frac <= 1.0:
            raise ValueError(f"decay_frac={self.decay_frac} must lie in [0, 1].")

    def lr_at(self, step: int) -> float:
        """Learning rate of (0-based) ``step``."""
        start = self.n_steps * (1.0 - self.decay_frac)
        if step < start:
            return self.lr
        return self.lr * (self.n_steps - step) / max(self.n_steps - start, 1.0)


def train_toy(sae: ToySAE, stream: ToyStream, cfg: ToyTrainConfig,
              sparsity: Sequence[float] | None = None, progress: bool = True) -> pd.DataFrame:
    """Train every model of the bank on ``stream`` (batch ``step`` at step ``step``). Returns the log.

    ``sparsity``: one S per model (the bank's models may sit at different S; they then see coupled batches,
    see ``ToyStream``); None → the stream's own S for all. The log has one row per (model, logged step).
    """
    if sparsity is not None and len(sparsity) != sae.n_models:
        raise ValueError(f"sparsity has {len(sparsity)} values for {sae.n_models} models.")
    levels = sorted(set(sparsity)) if sparsity is not None else None
    which = (torch.as_tensor([levels.index(s) for s in sparsity], device=stream.device)
             if sparsity is not None else None)
    opt = torch.optim.Adam([p for p in sae.parameters() if p.requires_grad], lr=cfg.lr)
    log = []
    bar = tqdm(range(cfg.n_steps), disable=not progress, desc=f"training {sae.n_models} toy SAEs ({sae.cfg.activation})",
               unit="step", leave=False)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = cfg.lr_at(step)
        if levels is None:
            x_p = stream.sample(cfg.batch_size, step)[1]
        else:
            x_p = stream.sample(cfg.batch_size, step, sparsity=levels)[1][which]
        losses = sae.losses(x_p)
        total = losses["total"].sum()  # independent models: the sum's gradient is each model's own
        if not torch.isfinite(total):
            raise FloatingPointError(f"toy SAE loss became {total.item()} at step {step}; lower the learning rate.")
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.n_steps:
            for i in range(sae.n_models):
                log.append({"model": i, "step": step + 1, "loss": losses["total"][i].item(),
                            "mse": losses["mse"][i].item()})
    return pd.DataFrame(log)


# ------------------------------------------------------------------------------------------------------
# Measures with ground truth
# ------------------------------------------------------------------------------------------------------
def antipodal_fraction(atoms: torch.Tensor, threshold: float = -0.9) -> float:
    """Fraction of atoms with an (almost) antipodal partner: min_j cos(a_i, a_j) < ``threshold``.

    A tied ReLU SAE can reconstruct *linearly* with pairs ±a (relu(aᵀx) a − relu(−aᵀx) a = (aᵀx) a): a high
    fraction says the SAE has built a dense linear code instead of finding the sparse features."""
    if atoms.shape[0] < 2:
        return 0.0
    u = atoms / atoms.norm(dim=1, keepdim=True).clamp_min(1e-12)
    cos = (u @ u.T).fill_diagonal_(1.0)
    return float((cos.min(1).values < threshold).float().mean())


@torch.no_grad()
def toy_metrics(sae: ToySAE, w_p: torch.Tensor, x: torch.Tensor, x_p: torch.Tensor,
                gamma: torch.Tensor | None = None) -> list[dict[str, float]]:
    """Ground-truth measures of every model of the bank on held-out (x, x_p). One dict per model.

    * ``recovered`` — fraction of true features (columns of W_p) whose Hungarian-matched atom (row of W_m;
      ``isae.eval.metrics.match_atoms`` on |cos|) has |cos| > 0.9; unmatched features (n_m < n) count as missed.
    * ``matched_cos`` — mean matched |cos| over the n true features (unmatched count 0).
    * ``features_per_latent`` — the average number of true features that activate a latent (1 =
      monosemantic): for latent m, P[m,i] = E_x[ |x_i · (W_m W_p)[m,i]| · 1(x_m ≠ 0) ] is how much feature i
      drives the latent's pre-activation when the latent fires; its participation ratio (Σ_i P)²/Σ_i P² is
      the effective number of features behind the latent, averaged over live latents (that fire on x).
    * ``isolated_features_per_latent`` — P2's literal count: the number of features i whose isolated input
      (x = 0.5·e_i) makes the latent fire, averaged over latents that fire for at least one of them.
    * ``live_frac`` — fraction of latents that fire on x.
    * ``antipodal_frac`` — fraction of live atoms with an antipodal partner (``antipodal_fraction``).
    * ``mse_rel`` — E‖x_p − x̂_p‖² / E‖x_p‖².
    * ``loss_sae`` — the (weighted) SAE objective, relative: E‖Γ(x_p − x̂_p)‖² / E‖Γx_p‖² (Γ = ``gamma`` or I).
    * ``loss_true`` — reconstruction of the *true* features, relative: E‖x − x̃‖² / E‖x‖², where the SAE's
      estimate of feature i is the coefficient of its matched atom in x̂_p projected on w_i,
      x̃_i = x_m[π(i)] · ‖W_m[π(i)]‖ · cos(W_m[π(i)], w_i) (0 for unmatched features).
    * ``gap`` = loss_true − loss_sae: how far the objective the SAE minimises is from the one we care about.
    """
    x_m, x_hat = sae(x_p)
    pre = sae.preact(x_p)
    rows = []
    probe = activate(sae.preact(PROBE_VALUE * w_p.T), sae.cfg)  # [M, n_features, n_latents]
    g = gamma if gamma is not None else torch.ones(w_p.shape[0], device=w_p.device)
    for i in range(sae.n_models):
        W = sae.W[i]
        fires = x_m[i] != 0  # [N, n_m]
        live = fires.any(0)
        G = W @ w_p  # [n_m, n]: pre-activation of latent m per unit of feature i
        P = G.abs() * (fires.T.to(x.dtype) @ x)  # [n_m, n]
        pr = P.sum(1).pow(2) / P.pow(2).sum(1).clamp_min(1e-30)
        iso = (probe[i] != 0).sum(0)  # features that fire each latent in isolation
        m = match_atoms(w_p.T, W)
        cos = torch.as_tensor(m.cos, dtype=x.dtype, device=x.device)
        feats = torch.as_tensor(m.rows, device=x.device)
        lats = torch.as_tensor(m.perm, device=x.device)
        x_tilde = torch.zeros_like(x)
        x_tilde[:, feats] = x_m[i][:, lats] * W[lats].norm(dim=1) * cos
        err = x_p - x_hat[i]
        loss_sae = float((err * g).pow(2).sum() / (x_p * g).pow(2).sum())
        loss_true = float((x - x_tilde).pow(2).sum() / x.pow(2).sum())
        rows.append({
            "recovered": float((cos.abs() > RECOVERY_THRESHOLD).sum()) / w_p.shape[1],
            "matched_cos": float(cos.abs().sum()) / w_p.shape[1],
            "features_per_latent": float(pr[live].mean()) if bool(live.any()) else float("nan"),
            "isolated_features_per_latent": float(iso[iso > 0].float().mean()) if bool((iso > 0).any()) else float("nan"),
            "live_frac": float(live.float().mean()),
            "antipodal_frac": antipodal_fraction(W[live]),
            "l0": float(fires.sum(1).float().mean()),
            "mse_rel": float(err.pow(2).sum() / x_p.pow(2).sum()),
            "loss_sae": loss_sae,
            "loss_true": loss_true,
            "gap": loss_true - loss_sae,
            "pre_norm": float(pre[i].norm(dim=1).mean()),
        })
    return rows


# ------------------------------------------------------------------------------------------------------
# Experiments
# ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ToyCondition:
    """One cell of an experiment: an SAE configuration, the data sparsity and the loss weighting."""

    sparsity: float
    activation: str = "topk"
    n_latents: int = 200
    alpha: float = 0.0
    """WSAE exponent: γ_j = PR_j^(−α) (0 = uniform weights)."""
    bias: bool = False
    l1_coef: float = 0.0

    @property
    def label(self) -> str:
        name = ACTIVATION_NAMES[self.activation]
        if self.l1_coef > 0:
            name += f" + L1 ({self.l1_coef:g})"
        if self.bias:
            name += " + bias"
        return name


@dataclass
class ToyResult:
    """Per-model metrics (one row per condition × seed), the training log and the trained banks."""

    runs: pd.DataFrame
    log: pd.DataFrame
    banks: dict[tuple, ToySAE] = field(default_factory=dict)
    stream: ToyStream | None = None


def run_toy_experiment(conditions: Sequence[ToyCondition], p: ToyProfile, w_p: str = "gaussian",
                       device: str | torch.device | None = None, progress: bool = True) -> ToyResult:
    """Train ``p.n_seeds`` seeds of every condition on one seeded stream and measure them on held-out data.

    Conditions sharing (activation, n_latents, bias, l1) are trained together as one bank; every model sees
    the same batches (coupled across sparsities). Metrics are computed on held-out inputs at each model's S
    and with its own Γ (``loss_sae`` is the objective it was trained on). ``device``: None → cuda when
    available, else cpu.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    data_cfg = ToyConfig(n_features=p.n_features, n_input=p.n_input, w_p=w_p, seed=p.data_seed)
    stream = ToyStream(data_cfg, p.batch_size, seed=p.data_seed, device=device)
    train_cfg = ToyTrainConfig(n_steps=p.n_steps, batch_size=p.batch_size, lr=p.lr, log_every=p.log_every)
    groups: dict[tuple, list[ToyCondition]] = {}
    for c in dict.fromkeys(conditions):
        groups.setdefault((c.activation, c.n_latents, c.bias, c.l1_coef), []).append(c)
    levels = sorted({c.sparsity for c in conditions})
    x_eval, xp_eval = stream.held_out(p.n_eval, sparsity=levels)
    runs, logs, banks = [], [], {}
    for key, conds in tqdm(groups.items(), desc=f"training {len(conditions)} conditions × {p.n_seeds} seeds",
                           unit="bank", disable=not progress):
        activation, n_latents, bias, l1 = key
        members = [(c, s) for c in conds for s in range(p.n_seeds)]
        sae = ToySAE(ToySAEConfig(n_input=p.n_input, n_latents=n_latents, activation=activation, bias=bias,
                                  l1_coef=l1), seeds=[s for _, s in members]).to(device)
        sae.set_gamma(torch.stack([wsae_weights(stream.w_p, c.alpha) for c, _ in members]))
        log = train_toy(sae, stream, train_cfg, sparsity=[c.sparsity for c, _ in members], progress=False)
        which = [levels.index(c.sparsity) for c, _ in members]
        for (c, s), i in zip(members, range(len(members))):
            one = _slice(sae, i)
            row = toy_metrics(one, stream.w_p, x_eval[which[i]], xp_eval[which[i]], gamma=sae.gamma[i])[0]
            runs.append({**asdict(c), "model": c.label, "seed": s, "w_p": w_p, "bank_index": i, **row})
        log["condition"] = [members[i][0].label for i in log["model"]]
        log["sparsity"] = [members[i][0].sparsity for i in log["model"]]
        log["alpha"] = [members[i][0].alpha for i in log["model"]]
        log["n_latents"] = n_latents
        log["seed"] = [members[i][1] for i in log["model"]]
        logs.append(log.drop(columns="model"))
        banks[key] = sae
    return ToyResult(runs=pd.DataFrame(runs), log=pd.concat(logs, ignore_index=True), banks=banks, stream=stream)


def _slice(sae: ToySAE, i: int) -> ToySAE:
    """Model i of a bank as a one-model bank (shares nothing with the original)."""
    one = ToySAE(sae.cfg, seeds=(sae.seeds[i],)).to(sae.W.device)
    with torch.no_grad():
        one.W.copy_(sae.W[i : i + 1])
        one.b.copy_(sae.b[i : i + 1])
        one.gamma.copy_(sae.gamma[i : i + 1])
    return one


def ground_truth_reference(conditions: Sequence[ToyCondition], p: ToyProfile, w_p: str = "gaussian") -> pd.DataFrame:
    """The same measures for the *ground-truth* SAE (atoms = columns of W_p, no bias) at each condition.

    This is the best a tied SAE can do at the given activation: its ``features_per_latent`` is the floor that
    superposition interference leaves, and comparing its ``loss_sae`` with a trained SAE's shows whether the
    SAE objective prefers the true features at all.
    """
    stream = ToyStream(ToyConfig(n_features=p.n_features, n_input=p.n_input, w_p=w_p, seed=p.data_seed),
                       p.batch_size, seed=p.data_seed)
    keys = list(dict.fromkeys((c.sparsity, c.activation, c.alpha) for c in conditions))
    levels = sorted({k[0] for k in keys})
    x_eval, xp_eval = stream.held_out(p.n_eval, sparsity=levels)
    rows = []
    for s, activation, alpha in keys:
        sae = ToySAE.from_atoms(ToySAEConfig(n_input=p.n_input, activation=activation), stream.w_p.T)
        gamma = wsae_weights(stream.w_p, alpha)
        j = levels.index(s)
        row = toy_metrics(sae, stream.w_p, x_eval[j], xp_eval[j], gamma=gamma)[0]
        rows.append({"sparsity": s, "activation": activation, "alpha": alpha, "n_latents": p.n_features,
                     "model": f"{ACTIVATION_NAMES[activation]} (ground truth)", "w_p": w_p, **row})
    return pd.DataFrame(rows)


TOY_METRICS = ("recovered", "matched_cos", "features_per_latent", "isolated_features_per_latent", "live_frac",
               "antipodal_frac", "mse_rel", "loss_sae", "loss_true", "gap")


def summarise_toy(runs: pd.DataFrame, keys: Sequence[str] = ("model", "activation", "n_latents", "sparsity", "alpha"),
                  metrics: Sequence[str] = TOY_METRICS) -> pd.DataFrame:
    """Mean and sd (``<metric>_sd``) over seeds per condition, with the seed count."""
    keys = [k for k in keys if k in runs]
    cols = [m for m in metrics if m in runs]
    agg = runs.groupby(keys, sort=False)[cols].agg(["mean", "std"])
    agg.columns = [m if stat == "mean" else f"{m}_sd" for m, stat in agg.columns]
    agg["n_seeds"] = runs.groupby(keys, sort=False).size()
    return agg.reset_index()


def gap_under_weights(result: ToyResult, alphas: Sequence[float], n_eval: int) -> pd.DataFrame:
    """The gap loss_true − loss_sae(Γ_α) of every trained model, re-evaluated under each α's weights.

    Holding the SAE fixed isolates P2's claim about the *loss functions*: does the weighted objective sit
    closer to the true-feature loss than the plain one, for the same parameters?
    """
    stream = result.stream
    runs = result.runs
    levels = sorted(set(runs["sparsity"]))
    x_eval, xp_eval = stream.held_out(n_eval, sparsity=levels)
    out = []
    for key, bank in result.banks.items():
        sub = runs[(runs["activation"] == key[0]) & (runs["n_latents"] == key[1]) & (runs["bias"] == key[2])
                    & (runs["l1_coef"] == key[3])]
        for _, row in sub.iterrows():
            one = _slice(bank, int(row["bank_index"]))
            j = levels.index(row["sparsity"])
            for a in alphas:
                m = toy_metrics(one, stream.w_p, x_eval[j], xp_eval[j], gamma=wsae_weights(stream.w_p, a))[0]
                out.append({"model": row["model"], "sparsity": row["sparsity"], "trained_alpha": row["alpha"],
                            "seed": row["seed"], "eval_alpha": a, "loss_true": m["loss_true"],
                            "loss_sae": m["loss_sae"], "gap": m["gap"]})
    return pd.DataFrame(out)


# ------------------------------------------------------------------------------------------------------
# P2's claims, checked
# ------------------------------------------------------------------------------------------------------
def _m(table: pd.DataFrame, metric: str, **where) -> float:
    sel = table
    for k, v in where.items():
        sel = sel[np.isclose(sel[k], v)] if isinstance(v, float) else sel[sel[k] == v]
    return float(sel[metric].iloc[0]) if len(sel) else float("nan")


def check_toy_claims(sweep: pd.DataFrame, hidden: pd.DataFrame, weighted: pd.DataFrame, n_features: int,
                     reference: pd.DataFrame | None = None, gap_fixed: pd.DataFrame | None = None,
                     ablation_sparsity: float = 0.99) -> pd.DataFrame:
    """P2's toy-model claims checked on the summary tables (``summarise_toy`` outputs). Means only.

    ``reference``: the ground-truth SAE's measures (``ground_truth_reference``), the floor that interference
    leaves for "features per latent"."""
    from isae.report.p1 import Claim

    claims = []
    lo, hi = float(sweep["sparsity"].min()), float(sweep["sparsity"].max())
    mid = float(max(s for s in sweep["sparsity"].unique() if s <= 0.8 + 1e-9))
    # (1) extreme sparsity
    r_hi = _m(sweep, "recovered", activation="topk", sparsity=hi)
    r_mid = _m(sweep, "recovered", activation="topk", sparsity=mid)
    claims.append(Claim("(1) extreme sparsity: a TopK SAE with n_m = n recovers most features (>0.8) at the "
                        "sparsest S but few (<0.2) at S ≤ 0.8", "sparsity sweep", r_hi > 0.8 and r_mid < 0.2,
                        f"recovered {r_hi:.2f} at S={hi:g}, {r_mid:.2f} at S={mid:g}"))
    f_hi = _m(sweep, "features_per_latent", activation="topk", sparsity=hi)
    f_lo = _m(sweep, "features_per_latent", activation="topk", sparsity=lo)
    floor = (_m(reference, "features_per_latent", activation="topk", sparsity=hi, alpha=0.0)
             if reference is not None else 1.0)
    claims.append(Claim("(1) features per latent fall as S → 1, to within 25% of the ground-truth SAE's floor "
                        "(TopK)", "sparsity sweep", f_hi < f_lo and f_hi <= 1.25 * floor,
                        f"{f_lo:.2f} at S={lo:g} → {f_hi:.2f} at S={hi:g} (ground-truth SAE: {floor:.2f})"))
    # (2) sparse activation
    r_none = _m(sweep, "recovered", activation="none", sparsity=ablation_sparsity)
    f_none = _m(sweep, "features_per_latent", activation="none", sparsity=ablation_sparsity)
    claims.append(Claim("(2) without an activation the SAE recovers (almost) nothing, even at extreme sparsity",
                        "activation ablation", r_none < 0.05, f"recovered {r_none:.2f} at S={ablation_sparsity:g}"))
    for act in ("relu", "jumprelu", "topk"):
        r = _m(sweep, "recovered", activation=act, sparsity=ablation_sparsity)
        f = _m(sweep, "features_per_latent", activation=act, sparsity=ablation_sparsity)
        claims.append(Claim(f"(2) the sparse activation {ACTIVATION_NAMES[act]} recovers the features at extreme "
                            "sparsity (recovered > 0.5, fewer features per latent than no activation)",
                            "activation ablation", r > 0.5 and f < f_none,
                            f"recovered {r:.2f}, features/latent {f:.1f} (none: {f_none:.1f})"))
    # (3) hidden size
    sizes = sorted(int(s) for s in hidden["n_latents"].unique())
    rec = {s: _m(hidden, "recovered", n_latents=s) for s in sizes}
    below = [s for s in sizes if s < n_features]
    atleast = [s for s in sizes if s >= n_features]
    claims.append(Claim("(3) n_m < n cannot recover all features (recovered < 0.9 for every n_m < n)",
                        "hidden-size ablation", all(rec[s] < 0.9 for s in below),
                        ", ".join(f"n_m={s}: {rec[s]:.2f}" for s in sizes)))
    claims.append(Claim("(3) with n_m ≥ n the SAE recovers nearly all features (≥ 0.9 at the largest n_m)",
                        "hidden-size ablation", bool(atleast) and rec[max(atleast)] >= 0.9,
                        ", ".join(f"n_m={s}: {rec[s]:.2f}" for s in atleast)))
    # (4) weighting
    for s in sorted(weighted["sparsity"].unique()):
        g0 = _m(weighted, "gap", sparsity=float(s), alpha=0.0)
        alphas = sorted(a for a in weighted["alpha"].unique() if a > 0)
        gs = {a: _m(weighted, "gap", sparsity=float(s), alpha=float(a)) for a in alphas}
        claims.append(Claim("(4) WSAE (γ smaller on polysemantic dims) narrows the gap loss_true − loss_sae",
                            f"weighted, S={s:g}", all(g < g0 for g in gs.values()),
                            f"gap α=0: {g0:.3f}; " + ", ".join(f"α={a:g}: {g:.3f}" for a, g in gs.items())))
        t0 = _m(weighted, "loss_true", sparsity=float(s), alpha=0.0)
        ts = {a: _m(weighted, "loss_true", sparsity=float(s), alpha=float(a)) for a in alphas}
        claims.append(Claim("(4) WSAE reconstructs the true features better (lower loss_true)",
                            f"weighted, S={s:g}", all(t < t0 for t in ts.values()),
                            f"loss_true α=0: {t0:.3f}; " + ", ".join(f"α={a:g}: {t:.3f}" for a, t in ts.items())))
        f0 = _m(weighted, "features_per_latent", sparsity=float(s), alpha=0.0)
        fs = {a: _m(weighted, "features_per_latent", sparsity=float(s), alpha=float(a)) for a in alphas}
        i0 = _m(weighted, "isolated_features_per_latent", sparsity=float(s), alpha=0.0)
        is_ = {a: _m(weighted, "isolated_features_per_latent", sparsity=float(s), alpha=float(a)) for a in alphas}
        claims.append(Claim("(4) WSAE latents are more monosemantic (fewer effective features per latent)",
                            f"weighted, S={s:g}", all(f < f0 for f in fs.values()),
                            f"effective α=0: {f0:.1f}; " + ", ".join(f"α={a:g}: {f:.1f}" for a, f in fs.items())
                            + f" (isolated-probe count α=0: {i0:.1f}; "
                            + ", ".join(f"α={a:g}: {v:.1f}" for a, v in is_.items()) + ")"))
    if gap_fixed is not None and len(gap_fixed):
        g = gap_fixed.groupby("eval_alpha")["gap"].mean()
        claims.append(Claim("(4) for the same SAE parameters, the weighted objective is closer to the true-feature "
                            "loss (mean gap falls with α)", "weighted, fixed SAEs",
                            bool(all(np.diff(g.values) < 0)), ", ".join(f"α={a:g}: {v:.3f}" for a, v in g.items())))
    return pd.DataFrame([c.__dict__ for c in claims])


def sweep_conditions(p: ToyProfile) -> list[ToyCondition]:
    """Sparsity sweep × activation ablation (n_m = n), plus the extra ReLU + L1 + bias row at the ablation S."""
    conds = [ToyCondition(sparsity=s, activation=a, n_latents=p.n_latents)
             for a, s in itertools.product(p.activations, p.sparsities)]
    if p.extra_relu_l1 > 0:
        conds.append(ToyCondition(sparsity=p.ablation_sparsity, activation="relu", n_latents=p.n_latents,
                                  bias=True, l1_coef=p.extra_relu_l1))
    return conds


def hidden_conditions(p: ToyProfile, activation: str = "topk") -> list[ToyCondition]:
    """Hidden-size ablation at the ablation sparsity: n_m = ratio · n for each ratio."""
    return [ToyCondition(sparsity=p.ablation_sparsity, activation=activation,
                         n_latents=max(1, int(round(r * p.n_features)))) for r in p.hidden_sizes]


def weighted_conditions(p: ToyProfile, activation: str = "topk") -> list[ToyCondition]:
    """The WSAE experiment: α × S at n_m = n."""
    return [ToyCondition(sparsity=s, activation=activation, n_latents=p.n_latents, alpha=a)
            for s, a in itertools.product(p.weight_sparsities, p.weight_alphas)]


# ------------------------------------------------------------------------------------------------------
# Figures
# ------------------------------------------------------------------------------------------------------
def _palette(names):
    import seaborn as sns

    return dict(zip(names, sns.color_palette("colorblind", len(names))))


def plot_w_p(matrices: dict[str, torch.Tensor]):
    """|W_p| as a heat map and the polysemanticity (participation ratio) of every input dim, per W_p kind."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(matrices), figsize=(5.5 * len(matrices), 5.2), squeeze=False,
                             gridspec_kw={"height_ratios": [1.4, 1]})
    for j, (kind, w) in enumerate(matrices.items()):
        ax = axes[0][j]
        im = ax.imshow(w.abs().numpy(), aspect="auto", cmap="viridis")
        ax.set(title=f"|W_p| ({kind})", xlabel="true feature i", ylabel="input dim j")
        fig.colorbar(im, ax=ax, fraction=0.03)
        pr = polysemanticity(w).numpy()
        axes[1][j].bar(range(len(pr)), pr, color="grey")
        axes[1][j].set(xlabel="input dim j", ylabel="polysemanticity PR_j",
                       yscale="log" if pr.max() > 5 * pr.min() else "linear",
                       title="effective number of features per input dim")
    fig.tight_layout()
    return fig


def _by_sparsity(ax, table, metric, label, color, sparsities, style="-", marker="o", sd=True):
    sub = table.set_index("sparsity").reindex(sparsities)
    xs = np.arange(len(sparsities))
    err = sub.get(f"{metric}_sd") if sd else None
    ax.errorbar(xs, sub[metric], yerr=err, label=label, color=color, linestyle=style, marker=marker,
                markersize=4, capsize=2, linewidth=1.3)


def plot_sparsity_sweep(summary: pd.DataFrame, reference: pd.DataFrame | None = None):
    """Recovered fraction, matched |cos| and features per latent against S, one line per activation
    (mean ± sd over seeds); dashed: the ground-truth SAE with the same activation."""
    import matplotlib.pyplot as plt

    sparsities = sorted(summary["sparsity"].unique())
    acts = [a for a in ACTIVATIONS if a in set(summary["activation"])]
    colors = _palette(acts)
    panels = [("recovered", "features recovered (|cos| > 0.9)", "linear"),
              ("matched_cos", "matched |cos| (atom vs true feature)", "linear"),
              ("features_per_latent", "features per latent (effective) ↓", "log"),
              ("isolated_features_per_latent", "features firing a latent in isolation ↓", "log")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8))
    plain = summary[(summary["l1_coef"] == 0) & (~summary["bias"])] if "l1_coef" in summary else summary
    for ax, (metric, title, scale) in zip(axes, panels):
        for a in acts:
            _by_sparsity(ax, plain[plain["activation"] == a], metric, ACTIVATION_NAMES[a], colors[a], sparsities)
            if reference is not None and metric in ("features_per_latent", "isolated_features_per_latent"):
                ref = reference[(reference["activation"] == a) & (reference["alpha"] == 0)]
                _by_sparsity(ax, ref, metric, f"{ACTIVATION_NAMES[a]}, ground-truth SAE", colors[a], sparsities,
                             style="--", marker="", sd=False)
        ax.set_xticks(range(len(sparsities)), [f"{s:g}" for s in sparsities], rotation=45)
        ax.set(xlabel="sparsity S", title=title, yscale=scale)
    handles, labels = axes[2].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, frameon=False, fontsize=8)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    return fig


def plot_activation_ablation(table: pd.DataFrame, reference: pd.DataFrame | None = None):
    """Bars per activation at one S: recovered, features per latent, relative SAE loss (trained vs ground truth)."""
    import matplotlib.pyplot as plt

    models = list(table["model"])
    xs = np.arange(len(models))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.9))
    for ax, metric, title, scale in [(axes[0], "recovered", "features recovered", "linear"),
                                     (axes[1], "features_per_latent", "features per latent (effective) ↓", "log"),
                                     (axes[2], "mse_rel", "relative SAE loss E‖x_p − x̂_p‖²/E‖x_p‖²", "log")]:
        ax.bar(xs, table[metric], yerr=table.get(f"{metric}_sd"), capsize=3, color="tab:blue", label="trained")
        if reference is not None and metric != "recovered":
            ref = reference.set_index("activation").reindex(table["activation"])[metric].to_numpy()
            ax.scatter(xs, ref, marker="_", s=250, color="black", zorder=3, label="ground-truth SAE")
        ax.set_xticks(xs, models, rotation=30, ha="right", fontsize=8)
        ax.set(title=title, yscale=scale)
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_hidden(table: pd.DataFrame, n_features: int):
    """Recovered fraction against n_m / n, with the bound min(1, n_m/n) that matching imposes."""
    import matplotlib.pyplot as plt

    ratio = table["n_latents"] / n_features
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    axes[0].errorbar(ratio, table["recovered"], yerr=table["recovered_sd"], marker="o", capsize=3, label="trained")
    grid = np.linspace(ratio.min(), ratio.max(), 100)
    axes[0].plot(grid, np.minimum(1, grid), "k--", linewidth=1, label="bound min(1, n_m/n)")
    axes[0].axvline(1.0, color="grey", linewidth=0.8)
    axes[0].set(xscale="log", xlabel="n_m / n", ylabel="features recovered", title="hidden-size ablation")
    axes[0].legend(fontsize=8)
    axes[1].errorbar(ratio, table["features_per_latent"], yerr=table["features_per_latent_sd"], marker="o", capsize=3)
    axes[1].axvline(1.0, color="grey", linewidth=0.8)
    axes[1].set(xscale="log", xlabel="n_m / n", ylabel="features per latent (effective)", title="monosemanticity")
    for ax in axes:
        ax.set_xticks(ratio, [f"{r:g}" for r in ratio])
        ax.minorticks_off()
    fig.tight_layout()
    return fig


def plot_weighted(summary: pd.DataFrame, gap_fixed: pd.DataFrame, w_p: torch.Tensor):
    """The WSAE experiment: the weights, the two losses and their gap against α, and recovery against α."""
    import matplotlib.pyplot as plt

    alphas = sorted(summary["alpha"].unique())
    sparsities = sorted(summary["sparsity"].unique())
    colors = _palette([f"{s:g}" for s in sparsities])
    fig, axes = plt.subplots(1, 5, figsize=(22, 3.9))
    pr = polysemanticity(w_p).numpy()
    order = np.argsort(pr)
    for a in alphas:
        axes[0].plot(pr[order], wsae_weights(w_p, a).numpy()[order], marker="o", markersize=3, label=f"α={a:g}")
    axes[0].set(xscale="log", yscale="log", xlabel="polysemanticity PR_j of input dim j", ylabel="γ_j",
                title="weights γ_j = PR_j^(−α), mean γ² = 1")
    axes[0].legend(fontsize=8)
    for s in sparsities:
        sub = summary[np.isclose(summary["sparsity"], s)].sort_values("alpha")
        c = colors[f"{s:g}"]
        axes[1].errorbar(sub["alpha"], sub["loss_true"], yerr=sub["loss_true_sd"], marker="o", color=c, capsize=2,
                         label=f"loss_true, S={s:g}")
        axes[1].errorbar(sub["alpha"], sub["loss_sae"], yerr=sub["loss_sae_sd"], marker="s", color=c, capsize=2,
                         linestyle=":", label=f"loss_sae, S={s:g}")
        axes[2].errorbar(sub["alpha"], sub["gap"], yerr=sub["gap_sd"], marker="o", color=c, capsize=2, label=f"S={s:g}")
        axes[3].errorbar(sub["alpha"], sub["recovered"], yerr=sub["recovered_sd"], marker="o", color=c, capsize=2,
                         label=f"S={s:g}")
        fixed = gap_fixed[np.isclose(gap_fixed["sparsity"], s) & np.isclose(gap_fixed["trained_alpha"], 0.0)]
        g = fixed.groupby("eval_alpha")["gap"].agg(["mean", "std"]).reset_index()
        axes[4].errorbar(g["eval_alpha"], g["mean"], yerr=g["std"], marker="o", color=c, capsize=2, label=f"S={s:g}")
    axes[1].set(xlabel="α (training weights)", title="relative losses of the trained WSAE")
    axes[1].legend(fontsize=6, ncol=2)
    axes[2].set(xlabel="α (training weights)", title="gap = loss_true − loss_sae")
    axes[3].set(xlabel="α (training weights)", title="features recovered (|cos| > 0.9)")
    axes[4].set(xlabel="α of Γ used to *evaluate* loss_sae", title="gap of the α=0 SAEs under each Γ")
    for ax in axes[2:]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_training(log: pd.DataFrame, activation_col: str = "condition"):
    """Training loss against step (mean over seeds), one panel per condition label, one line per S."""
    import matplotlib.pyplot as plt

    conds = list(dict.fromkeys(log[activation_col]))
    fig, axes = plt.subplots(1, len(conds), figsize=(4 * len(conds), 3.3), squeeze=False)
    for ax, c in zip(axes[0], conds):
        sub = log[log[activation_col] == c]
        for s, g in sub.groupby("sparsity"):
            m = g.groupby("step")["mse"].mean()
            ax.plot(m.index, m.values, label=f"S={s:g}", linewidth=1)
        ax.set(yscale="log", xlabel="step", title=c, ylabel="E‖x_p − x̂_p‖² (batch)")
    axes[0][-1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig
