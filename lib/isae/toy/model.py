"""The tied toy SAE of P2: x_m = σ(W_m x_p + b), x̂_p = W_mᵀ x_m, as a bank of independent models.

Many SAEs (seeds × conditions) with the same activation and width are trained together as one *bank*: one
parameter tensor [n_models, n_m, n_p] and the sum of their losses. Their gradients do not interact and Adam
is element-wise, so each model trains exactly as it would alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn as nn

from isae.core.losses import weighted_mse
from isae.core.seeding import derive_seed

ACTIVATIONS = ("none", "relu", "jumprelu", "topk")
"""The toy SAE's activations σ."""
ACTIVATION_NAMES = {"none": "none", "relu": "ReLU", "jumprelu": "JumpReLU (0.1)", "topk": "TopK (k=2)"}


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
    def from_atoms(cls, cfg: ToySAEConfig, atoms: torch.Tensor) -> ToySAE:
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
            raise ValueError(f"x_p must be [batch, n_input] or [{self.n_models}, batch, n_input]; "
                             f"got {tuple(x_p.shape)}.")
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
        weighted = weighted_mse(err, self.gamma)
        out = {"weighted": weighted, "mse": err.pow(2).sum(-1).mean(-1), "total": weighted}
        if self.cfg.l1_coef > 0:
            out["l1"] = (x_m.abs() * self.W.norm(dim=-1)[:, None, :]).sum(-1).mean(-1)
            out["total"] = weighted + self.cfg.l1_coef * out["l1"]
        return out
