"""The SAE family of P1 (TopK, AbsTopK, iSAE, iSAE-ME) plus ReLU+L1 and JumpReLU (needed by P2 and P3).

All share x̂ = z D + b and z = σ(W (x − b)) with one bias b (``b_dec``) subtracted before the encoder and
added after the decoder. Layout: ``W_enc`` and ``W_dec`` are both [d_sae, d_in], one row per latent, so
the sparse kernels can gather rows; on disk they are written in SAELens's layout (see ``isae.io``).

The k-sparse models compute the dense pre-activation once (the one unavoidable O(B·K·N) product) and do
everything else — selection gradients, decoding, AuxK, aRIP — on the k selected latents of each input.
``isae.reference`` holds a naive dense implementation that tests and benchmarks compare against.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn

from .arip import arip_support, rip_gap_exact, rip_gap_noise
from .seeding import derive_seed
from .sparse_ops import gather_preact, sparse_decode

#: Architecture name → the paper's display name.
ARCHITECTURES: dict[str, str] = {
    "topk": "TopK",
    "abstopk": "AbsTopK",
    "isae": "iSAE",
    "isae_me": "iSAE-ME",
    "relu": "ReLU+L1",
    "jumprelu": "JumpReLU",
}
K_SPARSE = ("topk", "abstopk", "isae", "isae_me")
SIGNED = ("abstopk", "isae", "isae_me")


@dataclass
class SAEConfig:
    """Architecture and loss of one SAE. Defaults are P1's unless marked "our choice"."""

    d_in: int
    """Input dimension N."""
    d_sae: int
    """Number of latents K (dictionary atoms)."""
    k: int = 40
    """Active latents per input for the k-sparse models (P1: 40)."""
    architecture: str = "topk"
    """One of ``ARCHITECTURES``."""
    arip_coef: float | None = None
    """Weight of the aRIP regulariser; None → 0.1 for iSAE/iSAE-ME (P1), 0 otherwise."""
    arip_estimator: str = "noise"
    """"noise" (P1's stochastic estimate, one draw per input) or "exact" (tr(G_S²)/|S| − 1)."""
    n_steps: int = 5
    """Multistep encoder iterations T (iSAE-ME; P1: 5)."""
    me_init: str = "zero"
    """iSAE-ME init. "zero": S = 0, so training starts from AbsTopK (our choice); "iht": S = I − μDᵀD and
    W = μD, T steps of iterative hard thresholding at init (the alternative P1's spec suggests)."""
    encoder_bias: bool = False
    """Per-latent encoder bias. P1: none; always on for ReLU/JumpReLU (our choice)."""
    l1_coef: float = 1e-3
    """L1 penalty weight for ReLU+L1 and JumpReLU (our choice; tune per data set)."""
    jump_threshold: float = 0.1
    """Fixed JumpReLU threshold (P2: 0.1). Our choice: fixed, not learned with a straight-through estimator."""
    aux_k: int = 256
    """AuxK: number of dead latents used to reconstruct the residual (Gao et al.: 256; capped at d_sae − k)."""
    aux_coef: float = 1 / 32
    """AuxK loss weight (Gao et al.: 1/32)."""

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"architecture={self.architecture!r} is unknown; use one of {sorted(ARCHITECTURES)}."
            )
        for name in ("d_in", "d_sae"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be a positive integer.")
        if self.architecture in K_SPARSE and not 0 < self.k < self.d_sae:
            raise ValueError(f"k={self.k} must satisfy 0 < k < d_sae={self.d_sae}; lower k or raise d_sae.")
        if self.n_steps < 1:
            raise ValueError(f"n_steps={self.n_steps} must be ≥ 1 (the multistep encoder's T).")
        if self.arip_estimator not in ("noise", "exact"):
            raise ValueError(f"arip_estimator={self.arip_estimator!r}; use 'noise' or 'exact'.")
        if self.me_init not in ("zero", "iht"):
            raise ValueError(f"me_init={self.me_init!r}; use 'zero' or 'iht'.")
        if self.arip_coef is None:
            self.arip_coef = 0.1 if self.architecture in ("isae", "isae_me") else 0.0
        for name in ("arip_coef", "l1_coef", "aux_coef", "jump_threshold"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be ≥ 0.")
        if self.aux_k < 0:
            raise ValueError(f"aux_k={self.aux_k} must be ≥ 0 (0 disables AuxK).")

    @property
    def display_name(self) -> str:
        return ARCHITECTURES[self.architecture]

    @property
    def has_encoder_bias(self) -> bool:
        return self.encoder_bias or self.architecture in ("relu", "jumprelu")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SAEOutput:
    """One forward pass. For k-sparse models ``vals``/``idx`` hold the code; for dense ones ``z`` does."""

    x_hat: torch.Tensor
    pre: torch.Tensor
    """Dense pre-activation W(x − b) (+ b_enc) of the first step, detached."""
    score: torch.Tensor
    """Pre-activation of the final sparsification (equals ``pre`` except for iSAE-ME), detached."""
    vals: torch.Tensor | None = None
    idx: torch.Tensor | None = None
    z: torch.Tensor | None = None
    x_c: torch.Tensor | None = None
    losses: dict[str, torch.Tensor] = field(default_factory=dict)


class SAE(nn.Module):
    """A sparse autoencoder of any architecture in ``ARCHITECTURES``."""

    def __init__(self, cfg: SAEConfig, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        self.seed = seed
        gen = torch.Generator().manual_seed(derive_seed("sae-init", seed))
        atoms = torch.randn(cfg.d_sae, cfg.d_in, generator=gen)
        atoms = atoms / atoms.norm(dim=1, keepdim=True)  # random unit atoms
        self.W_dec = nn.Parameter(atoms)
        self.W_enc = nn.Parameter(atoms.clone())  # tied init: encoder = decoderᵀ
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae), requires_grad=cfg.has_encoder_bias)
        # Γ of P2's weighted SAE loss ‖Γ(x − x̂)‖²; all ones gives the plain squared error.
        self.register_buffer("loss_weight", torch.ones(cfg.d_in))
        if cfg.architecture == "isae_me":
            # Stored so that S·z = z @ S (row j = the contribution of latent j); S is symmetric at init.
            self.S = nn.Parameter(torch.zeros(cfg.d_sae, cfg.d_sae))
            if cfg.me_init == "iht":
                with torch.no_grad():
                    step = 1.0 / torch.linalg.matrix_norm(atoms, ord=2) ** 2
                    self.S.copy_(torch.eye(cfg.d_sae) - step * atoms @ atoms.T)
                    self.W_enc.mul_(step)

    # --- encoder -------------------------------------------------------------------------------------
    def preact(self, x_c: torch.Tensor) -> torch.Tensor:
        """Dense pre-activation x_c W_encᵀ + b_enc (differentiable)."""
        if self.cfg.has_encoder_bias:
            return torch.addmm(self.b_enc, x_c, self.W_enc.T)
        return x_c @ self.W_enc.T  # b_enc is zero and frozen: skip a batch × K addition

    def _select(self, score: torch.Tensor, k: int) -> torch.Tensor:
        """Indices of the k latents kept: largest values (TopK) or largest |values| (AbsTopK family)."""
        return (score.abs() if self.cfg.architecture in SIGNED else score).topk(k, dim=1).indices

    def _gather(self, x_c: torch.Tensor, pre: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        vals = gather_preact(x_c, self.W_enc, pre, idx)  # value includes b_enc; gradient reaches W_enc, x_c
        if self.cfg.has_encoder_bias:  # route the gradient to b_enc without changing the value
            vals = vals + (self.b_enc[idx] - self.b_enc.detach()[idx])
        return vals.relu() if self.cfg.architecture == "topk" else vals

    def encode_sparse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """k-sparse code of x: (vals [B,k], idx [B,k], x_c, pre, score). Differentiable through vals."""
        if self.cfg.architecture not in K_SPARSE:
            raise ValueError(f"encode_sparse needs a k-sparse architecture, not {self.cfg.architecture!r}.")
        x_c = x - self.b_dec
        with torch.no_grad():
            pre = self.preact(x_c)
        idx = self._select(pre, self.cfg.k)
        vals = self._gather(x_c, pre, idx)
        score = pre
        if self.cfg.architecture == "isae_me":
            for _ in range(self.cfg.n_steps - 1):  # z⁽ⁱ⁾ = AbsTopK(S z⁽ⁱ⁻¹⁾ + W(x − b)); S z from the sparse z
                lateral = sparse_decode(vals, idx, self.S)
                score = pre + lateral.detach()
                idx = self._select(score, self.cfg.k)
                vals = self._gather(x_c, pre, idx) + lateral.gather(1, idx)
        return vals, idx, x_c, pre, score

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Dense code z [B, d_sae] for any architecture."""
        if self.cfg.architecture in K_SPARSE:
            vals, idx, *_ = self.encode_sparse(x)
            return torch.zeros(x.shape[0], self.cfg.d_sae, dtype=vals.dtype, device=x.device).scatter(1, idx, vals)
        pre = self.preact(x - self.b_dec)
        if self.cfg.architecture == "relu":
            return pre.relu()
        return pre * (pre > self.cfg.jump_threshold)

    # --- decoder -------------------------------------------------------------------------------------
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.W_dec + self.b_dec

    def decode_sparse(self, vals: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return sparse_decode(vals, idx, self.W_dec) + self.b_dec

    # --- training forward ----------------------------------------------------------------------------
    def forward(
        self,
        x: torch.Tensor,
        dead_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> SAEOutput:
        """Reconstruct x and compute every loss term (``out.losses``; their weighted sum is ``"total"``)."""
        cfg = self.cfg
        if x.shape[-1] != cfg.d_in:
            raise ValueError(f"input has {x.shape[-1]} features but the SAE has d_in={cfg.d_in}.")
        if cfg.architecture not in K_SPARSE:
            x_c = x - self.b_dec
            pre = self.preact(x_c)
            z = pre.relu() if cfg.architecture == "relu" else pre * (pre > cfg.jump_threshold)
            x_hat = self.decode(z)
            mse = self.reconstruction_loss(x, x_hat)
            l1 = z.abs().sum(1).mean()  # atoms are unit norm, so this is the decoder-norm-weighted L1
            return SAEOutput(x_hat, pre.detach(), pre.detach(), z=z, x_c=x_c,
                             losses={"mse": mse, "l1": l1, "total": mse + cfg.l1_coef * l1})

        vals, idx, x_c, pre, score = self.encode_sparse(x)
        x_hat = self.decode_sparse(vals, idx)
        mse = self.reconstruction_loss(x, x_hat)
        losses = {"mse": mse}
        total = mse
        if cfg.aux_coef > 0 and cfg.aux_k > 0 and dead_mask is not None and bool(dead_mask.any()):
            losses["aux"] = self._auxk_loss(x, x_hat, x_c, pre, dead_mask)
            total = total + cfg.aux_coef * losses["aux"]
        if cfg.arip_coef > 0:
            support = arip_support(score, cfg.k)
            gap = rip_gap_exact if cfg.arip_estimator == "exact" else rip_gap_noise
            losses["arip"] = (gap(self.W_dec, support) if cfg.arip_estimator == "exact"
                              else gap(self.W_dec, support, generator)).mean()
            total = total + cfg.arip_coef * losses["arip"]
        losses["total"] = total
        return SAEOutput(x_hat, pre, score, vals=vals, idx=idx, x_c=x_c, losses=losses)

    def reconstruction_loss(self, x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
        """mean_x ‖Γ(x − x̂)‖², Γ = diag(loss_weight) (P2's weighted loss; Γ = I by default)."""
        return ((x - x_hat) * self.loss_weight).pow(2).sum(1).mean()

    def set_loss_weight(self, gamma: torch.Tensor) -> None:
        """Use the weighted loss ‖Γ(x − x̂)‖² with Γ = diag(gamma) (gamma: positive, [d_in])."""
        if gamma.shape != (self.cfg.d_in,) or not bool((gamma > 0).all()):
            raise ValueError(f"gamma must be positive with shape ({self.cfg.d_in},), got {tuple(gamma.shape)}.")
        self.loss_weight.copy_(gamma)

    def _auxk_loss(self, x, x_hat, x_c, pre, dead_mask) -> torch.Tensor:
        """Gao et al.'s AuxK: reconstruct the detached residual from the top-k_aux dead latents.

        Dead latents are ranked by pre-activation (TopK) or |pre-activation| (AbsTopK family) of the first
        encoder step (our choice for iSAE-ME). Normalised by the residual's variance and scaled by
        min(n_dead / k_aux, 1), as in sparsify.
        """
        n_dead = int(dead_mask.sum())
        k_aux = min(self.cfg.aux_k, n_dead, self.cfg.d_sae - self.cfg.k)
        ranked = pre.abs() if self.cfg.architecture in SIGNED else pre
        aux_idx = ranked.masked_fill(~dead_mask, -math.inf).topk(k_aux, dim=1).indices
        aux_vals = self._gather(x_c, pre, aux_idx)
        residual = (x - x_hat).detach()
        residual_hat = sparse_decode(aux_vals, aux_idx, self.W_dec)
        variance = (residual - residual.mean(0)).pow(2).sum().clamp_min(1e-12)
        return (residual_hat - residual).pow(2).sum() / variance * min(n_dead / k_aux, 1.0)

    # --- recipe helpers ------------------------------------------------------------------------------
    @torch.no_grad()
    def normalize_atoms(self) -> None:
        """Rescale every decoder atom to unit norm."""
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def remove_radial_grad(self) -> None:
        """Remove the gradient component parallel to each (unit) atom, so a step moves along the sphere."""
        if self.W_dec.grad is not None:
            g = self.W_dec.grad
            g.sub_((g * self.W_dec).sum(1, keepdim=True) * self.W_dec)
