"""The SAE family of P1 (TopK, AbsTopK, iSAE, iSAE-ME) plus ReLU+L1 and JumpReLU (needed by P2 and P3).

All share x̂ = z D + b and z = σ(W (x − b)) with one bias b (``b_dec``) subtracted before the encoder and
added after the decoder. Layout: ``W_enc`` and ``W_dec`` are both [d_sae, d_in], one row per latent, so
the sparse kernels can gather rows; on disk they are written in SAELens's layout (see ``isae.core.io``).

What distinguishes the architectures is data: one ``Architecture`` per name in ``REGISTRY`` (as SAELens's
architecture registry): ``SAE`` reads its behaviour from the spec of ``cfg.architecture``.

The k-sparse models split the encoder in two. ``SAE._encoder_selection`` makes every discrete choice without
grad, one block of rows at a time: the dense pre-activation (the one unavoidable O(B·K·N) product), the
active latents of each encoder step, the aRIP support and AuxK's dead latents. Everything differentiable —
code values, decoding, AuxK, aRIP — then runs on the selected latents only (``isae.core.sparse_ops``), so no
batch × K tensor is kept for the backward (tested). ``isae.core.reference`` holds a naive dense implementation
that tests and benchmarks compare against.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from isae.core.arip import arip_support, rip_gap_exact, rip_gap_noise, rip_gap_ratio
from isae.core.losses import weighted_mse
from isae.core.seeding import derive_seed
from isae.core.sparse_ops import (
    LatentMajor,
    add_sparse_decode,
    columns_preact,
    gather_preact,
    multistep_values,
    rows_dot,
    sparse_decode,
    topk_indices,
)


@dataclass(frozen=True)
class Architecture:
    """What one architecture does differently from the others."""

    name: str
    """The name in ``SAEConfig.architecture``."""
    display_name: str
    """The paper's name for it."""
    k_sparse: bool
    """Keeps the k largest (signed: largest |·|) pre-activations; otherwise a dense activation with an L1 loss."""
    signed: bool = False
    """AbsTopK family: ranks latents by |pre-activation| and keeps the sign. Unsigned k-sparse (TopK): ranks by
    pre-activation and applies a ReLU to the values."""
    multistep: bool = False
    """iSAE-ME: T encoder steps z ← AbsTopK(S z + W(x − b)) with a learned lateral matrix S."""
    default_arip_coef: float = 0.0
    """aRIP weight when ``SAEConfig.arip_coef`` is None (P1: 0.1 for iSAE and iSAE-ME)."""
    encoder_bias: bool = False
    """Always has a per-latent encoder bias (the dense models); the others only with ``SAEConfig.encoder_bias``."""
    jump: bool = False
    """Dense models: JumpReLU (z = pre · [pre > threshold]) rather than ReLU."""

    def sparse_values(self, vals: torch.Tensor) -> torch.Tensor:
        """Code values from the pre-activations at the selected latents (k-sparse models)."""
        return vals if self.signed else vals.relu()

    def dense_code(self, pre: torch.Tensor, threshold: float) -> torch.Tensor:
        """The dense code from the pre-activation (ReLU+L1 and JumpReLU)."""
        return pre * (pre > threshold) if self.jump else pre.relu()


#: Every architecture, by name.
REGISTRY: dict[str, Architecture] = {a.name: a for a in (
    Architecture("topk", "TopK", k_sparse=True),
    Architecture("abstopk", "AbsTopK", k_sparse=True, signed=True),
    Architecture("isae", "iSAE", k_sparse=True, signed=True, default_arip_coef=0.1),
    Architecture("isae_me", "iSAE-ME", k_sparse=True, signed=True, multistep=True, default_arip_coef=0.1),
    Architecture("relu", "ReLU+L1", k_sparse=False, encoder_bias=True),
    Architecture("jumprelu", "JumpReLU", k_sparse=False, encoder_bias=True, jump=True),
)}


def architecture(name: str) -> Architecture:
    """The ``Architecture`` called ``name``; a ValueError lists the valid names."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"architecture={name!r} is unknown; use one of {sorted(REGISTRY)}.") from None


#: Architecture name → the paper's display name.
ARCHITECTURES: dict[str, str] = {name: a.display_name for name, a in REGISTRY.items()}
K_SPARSE = tuple(name for name, a in REGISTRY.items() if a.k_sparse)
SIGNED = tuple(name for name, a in REGISTRY.items() if a.signed)


ME_INITS = ("zero", "iht", "authors")
ARIP_ESTIMATORS = ("noise", "ratio", "exact")


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
    """"noise" (P1's stochastic estimate ‖G_S n‖²/|S| − 1, one draw per input, averaged), "ratio" (the authors'
    form of the same estimate: |S| · mean‖G_S n‖² / (mean‖D_S n‖²)² − 1 over the batch) or "exact"
    (tr(G_S²)/|S| − 1)."""
    n_steps: int = 5
    """Multistep encoder iterations T (iSAE-ME; P1: 5)."""
    me_init: str = "zero"
    """iSAE-ME init (P1's text is silent). "zero": S = 0, so training starts from AbsTopK (our choice); "iht":
    S = I − μDᵀD and W = μDᵀ with μ = 1/λ_max(DᵀD), T steps of iterative hard thresholding at init; "authors":
    S = I − DᵀD / (1.1 λ_max(DᵀD)) with W = Dᵀ unscaled (the authors' code, ``rsae/rip_topk.py``)."""
    encoder_bias: bool = False
    """Per-latent encoder bias. P1: none; always on for ReLU/JumpReLU (our choice)."""
    l1_coef: float = 1e-3
    """L1 penalty weight for ReLU+L1 and JumpReLU (our choice; tune per data set)."""
    code_l1_coef: float = 0.0
    """k-sparse models: weight of an L1 penalty Σ|z| / (B·k) on the final codes. P1's text has none (0); the
    authors' code gives iSAE and iSAE-ME 0.01 (``configs/model/``)."""
    jump_threshold: float = 0.1
    """Fixed JumpReLU threshold (P2: 0.1). Our choice: fixed, not learned with a straight-through estimator."""
    aux_k: int = 256
    """AuxK: number of dead latents used to reconstruct the residual (Gao et al.: 256; capped at d_sae − k)."""
    aux_coef: float = 1 / 32
    """AuxK loss weight (Gao et al.: 1/32)."""

    def __post_init__(self) -> None:
        spec = architecture(self.architecture)
        for name in ("d_in", "d_sae"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be a positive integer.")
        if spec.k_sparse and not 0 < self.k < self.d_sae:
            raise ValueError(f"k={self.k} must satisfy 0 < k < d_sae={self.d_sae}; lower k or raise d_sae.")
        if self.n_steps < 1:
            raise ValueError(f"n_steps={self.n_steps} must be ≥ 1 (the multistep encoder's T).")
        if self.arip_estimator not in ARIP_ESTIMATORS:
            raise ValueError(f"arip_estimator={self.arip_estimator!r}; use one of {ARIP_ESTIMATORS}.")
        if self.me_init not in ME_INITS:
            raise ValueError(f"me_init={self.me_init!r}; use one of {ME_INITS}.")
        if self.arip_coef is None:
            self.arip_coef = spec.default_arip_coef
        for name in ("arip_coef", "l1_coef", "code_l1_coef", "aux_coef", "jump_threshold"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be ≥ 0.")
        if self.aux_k < 0:
            raise ValueError(f"aux_k={self.aux_k} must be ≥ 0 (0 disables AuxK).")

    @property
    def spec(self) -> Architecture:
        """This architecture's behaviour (``REGISTRY[architecture]``)."""
        return REGISTRY[self.architecture]

    @property
    def display_name(self) -> str:
        return self.spec.display_name

    @property
    def has_encoder_bias(self) -> bool:
        return self.encoder_bias or self.spec.encoder_bias

    @property
    def encoder_steps(self) -> int:
        """Encoder iterations: ``n_steps`` for the multistep encoder, else 1."""
        return self.n_steps if self.spec.multistep else 1

    def to_dict(self) -> dict:
        return asdict(self)


#: Rows per block of the encoder's selection pass on the CPU: d_sae × rows ≈ this many floats (16 MiB), so
#: no batch × K pre-activation is ever allocated whole (our choice, the fastest block size in whole-step
#: timings on the CPU). On a GPU the whole batch is one block.
_SELECTION_BLOCK_ELEMENTS = 1 << 22

#: AuxK uses dense products over the dead latents while n_dead ≤ this × k_aux, else the sparse kernels
#: (our choice: the dense cost grows with n_dead while the sparse one does not).
_AUXK_DENSE_MAX_DEAD_PER_K = 4


@dataclass
class _AuxPlan:
    """AuxK's part of a selection: which latents are dead and how their residual fit will be computed."""

    dead_idx: torch.Tensor
    """[n_dead] the dead latents."""
    k_aux: int
    """Dead latents chosen per input."""
    dense: bool
    """Dense path (products over every dead latent) rather than the sparse kernels over the chosen ones."""


@dataclass
class _Selection:
    """The encoder's discrete choices (``SAE._encoder_selection``), all [B, ·] integer or value tensors."""

    idx: list[torch.Tensor]
    """Per encoder step, [B, k] active latents."""
    pre_at: list[torch.Tensor]
    """Per encoder step, [B, k] pre-activations (float32) at those latents."""
    support: torch.Tensor | None = None
    """[B, 2k] aRIP support of the final step (when asked for)."""
    aux_idx: torch.Tensor | None = None
    """[B, k_aux] AuxK's choice of dead latents."""
    aux_pre: torch.Tensor | None = None
    """[B, k_aux] their pre-activations (sparse AuxK path)."""
    aux_dead_pre: torch.Tensor | None = None
    """[B, n_dead] pre-activations at every dead latent (dense AuxK path)."""

    @staticmethod
    def concat(blocks: list[_Selection]) -> _Selection:
        """One selection from the selections of consecutive row blocks."""
        def cat(name: str) -> torch.Tensor | None:
            parts = [getattr(b, name) for b in blocks]
            return None if parts[0] is None else torch.cat(parts)

        n_steps = len(blocks[0].idx)
        return _Selection(idx=[torch.cat([b.idx[t] for b in blocks]) for t in range(n_steps)],
                          pre_at=[torch.cat([b.pre_at[t] for b in blocks]) for t in range(n_steps)],
                          support=cat("support"), aux_idx=cat("aux_idx"), aux_pre=cat("aux_pre"),
                          aux_dead_pre=cat("aux_dead_pre"))


class _SelectionPass:
    """The weights and reused work buffers of one ``SAE._encoder_selection`` call.

    The block-sized buffers are allocated once per call and reused by every block: a fresh multi-MiB
    allocation per block costs page faults.
    """

    def __init__(self, sae: SAE, x_c: torch.Tensor, rows: int, bf16_selection: bool):
        cfg = sae.cfg
        self.sae, self.bf16 = sae, bf16_selection
        shape = (min(rows, x_c.shape[0]), cfg.d_sae)
        self.pre_buffer = torch.empty(shape, dtype=x_c.dtype, device=x_c.device)
        multistep = cfg.encoder_steps > 1
        self.score_buffer = torch.empty(shape, dtype=x_c.dtype, device=x_c.device) if multistep else None
        self.W_rank = sae.W_enc.to(torch.bfloat16) if bf16_selection else None
        # iSAE-ME's lateral input S z only ranks latents (values are recomputed in float32 afterwards), so with
        # bf16_selection it is bfloat16 as well.
        self.S_rank = (sae.S.to(torch.bfloat16) if bf16_selection else sae.S) if multistep else None

    def ranking_preact(self, block: torch.Tensor) -> torch.Tensor:
        """The block's dense pre-activation that ranks the latents (the O(B·K·N) product), in the pre buffer."""
        sae = self.sae
        pre = self.pre_buffer[: block.shape[0]]
        if not self.bf16:
            return sae.preact(block, out=pre)
        pre.copy_(torch.mm(block.to(torch.bfloat16), self.W_rank.T))
        if sae.cfg.has_encoder_bias:
            pre.add_(sae.b_enc)
        return pre

    def values_at(self, block: torch.Tensor, pre: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """The pre-activations at ``idx`` in float32 (recomputed when the ranking product was bfloat16)."""
        if not self.bf16:
            return pre.gather(1, idx)
        sae = self.sae
        exact = rows_dot(sae.W_enc, idx, block)
        return exact + sae.b_enc[idx] if sae.cfg.has_encoder_bias else exact

    def values_at_columns(self, block: torch.Tensor, ranked: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        """The pre-activations at every latent of ``columns`` in float32; ``ranked`` holds them as ranked."""
        if not self.bf16:
            return ranked
        sae = self.sae
        exact = torch.mm(block, sae.W_enc[columns].T)
        return exact + sae.b_enc[columns] if sae.cfg.has_encoder_bias else exact


class SparseCode(NamedTuple):

    """A k-sparse code (``SAE.encode_sparse``)."""

    vals: torch.Tensor
    """[B, k] values of the active latents, differentiable."""
    idx: torch.Tensor
    """[B, k] indices of the active latents."""
    x_c: torch.Tensor
    """The centred input x − b_dec."""
    support: torch.Tensor | None = None
    """[B, 2k] aRIP support: the 2k largest |pre-activations| of the final encoder step (when asked for)."""
    aux_idx: torch.Tensor | None = None
    """[B, k_aux] AuxK's choice of dead latents (when a dead mask with dead latents was given)."""
    aux_pre: torch.Tensor | None = None
    """[B, k_aux] their pre-activations, detached (when AuxK takes its sparse path)."""
    aux_dead_pre: torch.Tensor | None = None
    """[B, n_dead] the pre-activations at every dead latent, detached (when AuxK takes its dense path)."""
    layout: LatentMajor | None = None
    """``idx`` grouped by latent, shared by the encoder's and the decoder's sparse weight gradients."""


@dataclass
class SAEOutput:
    """One forward pass. For k-sparse models ``vals``/``idx`` hold the code; for dense ones ``z`` and ``pre`` do."""

    x_hat: torch.Tensor
    vals: torch.Tensor | None = None
    idx: torch.Tensor | None = None
    support: torch.Tensor | None = None
    """k-sparse models with an aRIP term: the [B, 2k] support it was computed on."""
    z: torch.Tensor | None = None
    pre: torch.Tensor | None = None
    """Dense models: the pre-activation W(x − b) + b_enc, detached. k-sparse models never keep it."""
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
        # Multiplies the reconstruction term of the training loss (not AuxK, aRIP or L1): 1 by default; the
        # authors' recipe sets 1 / (N · the first batch's per-element variance), see ``TrainConfig.loss_normaliser``.
        self.register_buffer("mse_scale", torch.ones(()))
        if cfg.spec.multistep:
            # Stored so that S·z = z @ S (row j = the contribution of latent j); S is symmetric at init.
            self.S = nn.Parameter(torch.zeros(cfg.d_sae, cfg.d_sae))
            if cfg.me_init != "zero":  # S = I − μ DᵀD (a gradient step on ‖x − zD‖²/2), μ ≤ 1/λ_max(DᵀD)
                with torch.no_grad():
                    lam_max = torch.linalg.matrix_norm(atoms, ord=2) ** 2  # = λ_max(DᵀD) = σ_max(D)²
                    step = 1.0 / lam_max if cfg.me_init == "iht" else 1.0 / (1.1 * lam_max)
                    self.S.copy_(torch.eye(cfg.d_sae) - step * atoms @ atoms.T)
                    if cfg.me_init == "iht":
                        self.W_enc.mul_(step)

    # --- encoder -------------------------------------------------------------------------------------
    def preact(self, x_c: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Dense pre-activation x_c W_encᵀ + b_enc (differentiable; ``out``: a buffer to write it into, no grad)."""
        if self.cfg.has_encoder_bias:
            return torch.addmm(self.b_enc, x_c, self.W_enc.T, out=out)
        return torch.mm(x_c, self.W_enc.T, out=out)  # b_enc is zero and frozen: skip a batch × K addition

    @torch.no_grad()
    def _encoder_selection(self, x_c: torch.Tensor, dead_mask: torch.Tensor | None, with_support: bool,
                           bf16_selection: bool = False) -> _Selection:
        """Every discrete choice of the encoder, made without grad, one block of rows at a time.

        Per block: the dense pre-activation (the one O(B·K·N) product), the k active latents of each
        encoder step (iSAE-ME: T steps of z ← AbsTopK(S z + pre), S z from the sparse z), the pre-activations
        at those latents, the aRIP support of the final score and the AuxK choice among dead latents. Only
        [B, k]-sized results leave the loop, so no batch × K tensor outlives its block.

        ``bf16_selection``: the dense product that ranks the latents is computed in bfloat16 (much faster on
        CPUs with bfloat16 support; tensor cores on a GPU); the pre-activations of the chosen latents are
        then recomputed in float32, so every code value is float32 and only near-ties (within bfloat16's
        ≈ 0.4% rounding) may be ranked differently than in float32.
        """
        aux = self._aux_plan(dead_mask)
        rows = x_c.shape[0] if x_c.is_cuda else max(1, _SELECTION_BLOCK_ELEMENTS // self.cfg.d_sae)
        selection_pass = _SelectionPass(self, x_c, rows, bf16_selection)
        blocks = []
        for start in range(0, x_c.shape[0], rows):
            block = x_c[start : start + rows]
            pre = selection_pass.ranking_preact(block)
            selection = self._select_active(selection_pass, block, pre, with_support)
            if aux is not None:
                self._select_dead(selection_pass, selection, block, pre, aux)
            blocks.append(selection)
        return _Selection.concat(blocks)

    def _aux_plan(self, dead_mask: torch.Tensor | None) -> _AuxPlan | None:
        """AuxK's plan for this batch, or None when AuxK is off or no latent is dead."""
        cfg = self.cfg
        if dead_mask is None or cfg.aux_coef <= 0 or cfg.aux_k <= 0:
            return None
        dead_idx = dead_mask.nonzero().squeeze(1)
        k_aux = min(cfg.aux_k, dead_idx.numel(), cfg.d_sae - cfg.k)
        if not k_aux:
            return None
        return _AuxPlan(dead_idx, k_aux, dense=dead_idx.numel() <= _AUXK_DENSE_MAX_DEAD_PER_K * k_aux)

    def _select_active(self, selection_pass: _SelectionPass, block: torch.Tensor, pre: torch.Tensor,
                       with_support: bool) -> _Selection:
        """The active latents of every encoder step for one block (and the aRIP support of the last step)."""
        cfg, signed = self.cfg, self.cfg.spec.signed
        n_steps = cfg.encoder_steps
        selection = _Selection(idx=[], pre_at=[])
        score = pre
        for t in range(n_steps):
            if t > 0:  # iSAE-ME: score = pre + S z, the lateral input from the previous step's sparse code
                idx = selection.idx[-1]
                z_prev = score.gather(1, idx).to(selection_pass.S_rank.dtype)
                score = add_sparse_decode(pre, z_prev, idx, selection_pass.S_rank,
                                          out=selection_pass.score_buffer[: block.shape[0]])
            if t == n_steps - 1 and with_support:  # the aRIP support: the 2k largest |score|
                selection.support = arip_support(score, cfg.k)
                # the support is sorted descending, so for the AbsTopK family the active set is its first k
                idx = selection.support[:, : cfg.k] if signed else topk_indices(score, cfg.k, sorted=False)
            else:  # the order of the active latents is never used: skip sorting them
                idx = topk_indices(score, cfg.k, sorted=False, magnitude=signed)
            selection.idx.append(idx)
            selection.pre_at.append(selection_pass.values_at(block, pre, idx))
        return selection

    def _select_dead(self, selection_pass: _SelectionPass, selection: _Selection, block: torch.Tensor,
                     pre: torch.Tensor, aux: _AuxPlan) -> None:
        """AuxK's choice of dead latents for one block, by the first step's pre-activation (our choice for
        iSAE-ME), with the pre-activations its loss needs."""
        ranked = pre.index_select(1, aux.dead_idx)
        # unsorted topk: AuxK sums over its choice, so the order is never used
        chosen = (ranked.abs() if self.cfg.spec.signed else ranked).topk(aux.k_aux, dim=1, sorted=False).indices
        selection.aux_idx = aux.dead_idx[chosen]
        if aux.dense:  # the dense AuxK path reads every dead latent's pre-activation
            selection.aux_dead_pre = selection_pass.values_at_columns(block, ranked, aux.dead_idx)
        else:
            selection.aux_pre = selection_pass.values_at(block, pre, selection.aux_idx)

    def _values(self, x: torch.Tensor, pre_at: torch.Tensor, idx: torch.Tensor,
                layout: LatentMajor | None = None) -> torch.Tensor:
        """Code values at the selected latents, differentiable into W_enc, b_enc, b_dec and x through those latents
        only. b_dec's gradient comes from per-latent sums, not from a [B, N] gradient of x − b_dec."""
        vals = gather_preact(x, self.W_enc, pre_at, idx, shift=self.b_dec, layout=layout)  # value includes b_enc
        if self.cfg.has_encoder_bias:  # route the gradient to b_enc without changing the value
            vals = vals + (self.b_enc[idx] - self.b_enc.detach()[idx])
        return self.cfg.spec.sparse_values(vals)

    def encode_sparse(self, x: torch.Tensor, dead_mask: torch.Tensor | None = None,
                      with_support: bool = False, bf16_selection: bool = False) -> SparseCode:
        """k-sparse code of x, differentiable through ``vals`` (see ``SparseCode``).

        ``dead_mask`` (bool [d_sae]) adds AuxK's choice of dead latents; ``with_support`` the aRIP support;
        ``bf16_selection`` ranks the latents with a bfloat16 encoder product (see ``_encoder_selection``).
        """
        if not self.cfg.spec.k_sparse:
            raise ValueError(f"encode_sparse needs a k-sparse architecture, not {self.cfg.architecture!r}.")
        x_c = x - self.b_dec
        sel = self._encoder_selection(x_c.detach(), dead_mask, with_support, bf16_selection)
        # The encoder's and the decoder's weight gradients scatter through the same active latents: one layout
        layout = LatentMajor(sel.idx[-1], self.cfg.d_sae)
        if len(sel.idx) == 1:
            vals = self._values(x, sel.pre_at[0], sel.idx[0], layout)
        else:  # iSAE-ME: every step's encoder values in one sparse gather, then z⁽ᵗ⁾ = those + S z⁽ᵗ⁻¹⁾
            batch, n_steps = x.shape[0], len(sel.idx)
            idx = torch.stack(sel.idx, 1)  # [B, T, k]
            base = self._values(x, torch.stack(sel.pre_at, 1).view(batch, -1), idx.view(batch, -1))
            vals = multistep_values(base.view(batch, n_steps, -1), idx, self.S)
        return SparseCode(vals, sel.idx[-1], x_c, sel.support, sel.aux_idx, sel.aux_pre, sel.aux_dead_pre, layout)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Dense code z [B, d_sae] for any architecture."""
        if self.cfg.spec.k_sparse:
            vals, idx, *_ = self.encode_sparse(x)
            return torch.zeros(x.shape[0], self.cfg.d_sae, dtype=vals.dtype, device=x.device).scatter(1, idx, vals)
        pre = self.preact(x - self.b_dec)
        return self.cfg.spec.dense_code(pre, self.cfg.jump_threshold)

    # --- decoder -------------------------------------------------------------------------------------
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.W_dec + self.b_dec

    def decode_sparse(self, vals: torch.Tensor, idx: torch.Tensor, layout: LatentMajor | None = None) -> torch.Tensor:
        return sparse_decode(vals, idx, self.W_dec, layout) + self.b_dec

    # --- training forward ----------------------------------------------------------------------------
    def forward(
        self,
        x: torch.Tensor,
        dead_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        bf16_selection: bool = False,
    ) -> SAEOutput:
        """Reconstruct x and compute every loss term (``out.losses``; their weighted sum is ``"total"``).

        ``bf16_selection`` (k-sparse models): rank latents with a bfloat16 encoder product, values in float32.
        """
        cfg = self.cfg
        if x.shape[-1] != cfg.d_in:
            raise ValueError(f"input has {x.shape[-1]} features but the SAE has d_in={cfg.d_in}.")
        if not cfg.spec.k_sparse:
            x_c = x - self.b_dec
            pre = self.preact(x_c)
            z = cfg.spec.dense_code(pre, cfg.jump_threshold)
            x_hat = self.decode(z)
            mse = self.reconstruction_loss(x, x_hat)
            l1 = z.abs().sum(1).mean()  # atoms are unit norm, so this is the decoder-norm-weighted L1
            return SAEOutput(x_hat, z=z, pre=pre.detach(), x_c=x_c,
                             losses={"mse": mse, "l1": l1, "total": mse * self.mse_scale + cfg.l1_coef * l1})

        code = self.encode_sparse(x, dead_mask=dead_mask, with_support=cfg.arip_coef > 0, bf16_selection=bf16_selection)
        x_hat = self.decode_sparse(code.vals, code.idx, code.layout)
        mse = self.reconstruction_loss(x, x_hat)
        losses = {"mse": mse}
        total = mse * self.mse_scale
        if code.aux_idx is not None:
            losses["aux"] = self._auxk_loss(x, x_hat, code, dead_mask)
            total = total + cfg.aux_coef * losses["aux"]
        if cfg.code_l1_coef > 0:
            losses["code_l1"] = code.vals.abs().sum() / code.vals.numel()  # Σ|z| / (B·k)
            total = total + cfg.code_l1_coef * losses["code_l1"]
        if cfg.arip_coef > 0:
            if cfg.arip_estimator == "exact":
                losses["arip"] = rip_gap_exact(self.W_dec, code.support).mean()
            elif cfg.arip_estimator == "ratio":
                losses["arip"] = rip_gap_ratio(self.W_dec, code.support, generator)
            else:
                losses["arip"] = rip_gap_noise(self.W_dec, code.support, generator).mean()
            total = total + cfg.arip_coef * losses["arip"]
        losses["total"] = total
        return SAEOutput(x_hat, vals=code.vals, idx=code.idx, support=code.support, x_c=code.x_c, losses=losses)

    def reconstruction_loss(self, x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
        """mean_x ‖Γ(x − x̂)‖², Γ = diag(loss_weight) (P2's weighted loss; Γ = I by default)."""
        if self._unweighted():  # one fused pass forward and backward instead of five
            return F.mse_loss(x_hat, x, reduction="sum") / x.shape[0]
        return weighted_mse(x - x_hat, self.loss_weight)

    def _unweighted(self) -> bool:
        """Whether Γ = I. Cached per storage and in-place version of the buffer, so ``set_loss_weight``,
        ``load_state_dict`` and ``.to()`` are all noticed without a device sync on every step."""
        key = (self.loss_weight.data_ptr(), self.loss_weight._version)
        if getattr(self, "_unweighted_cache", (None, None))[0] != key:
            self._unweighted_cache = (key, bool((self.loss_weight == 1).all()))
        return self._unweighted_cache[1]

    def set_loss_weight(self, gamma: torch.Tensor) -> None:
        """Use the weighted loss ‖Γ(x − x̂)‖² with Γ = diag(gamma) (gamma: positive, [d_in])."""
        if gamma.shape != (self.cfg.d_in,) or not bool((gamma > 0).all()):
            raise ValueError(f"gamma must be positive with shape ({self.cfg.d_in},), got {tuple(gamma.shape)}.")
        self.loss_weight.copy_(gamma)

    def _auxk_loss(self, x: torch.Tensor, x_hat: torch.Tensor, code: SparseCode,
                   dead_mask: torch.Tensor) -> torch.Tensor:
        """Gao et al.'s AuxK: reconstruct the detached residual from the top-k_aux dead latents.

        Dead latents are ranked by pre-activation (TopK) or |pre-activation| (AbsTopK family) of the first
        encoder step (our choice for iSAE-ME; the authors' code ranks them by the last step's). Normalised by the
        residual's variance (as the authors' code; k_aux never exceeds n_dead here, so sparsify's extra factor
        min(n_dead / k_aux, 1) would always be 1).

        Two exact ways to compute it, chosen by cost (our choice, from timing both on the CPU): with few dead
        latents, dense matrix products over the dead latents only ([B, n_dead] codes, BLAS); with many, the
        sparse kernels over the k_aux chosen per input (cost independent of n_dead, but per-element slower).
        """
        dead_idx = dead_mask.nonzero().squeeze(1)
        n_dead = dead_idx.numel()
        if code.aux_dead_pre is not None:  # dense path (the selection chose it and kept pre at the dead latents)
            pre = columns_preact(x, self.W_enc, dead_idx, code.aux_dead_pre, shift=self.b_dec)  # includes b_enc
            if self.cfg.has_encoder_bias:  # route the gradient to b_enc without changing the value
                pre = pre + (self.b_enc[dead_idx] - self.b_enc.detach()[dead_idx])
            position = torch.empty(self.cfg.d_sae, dtype=torch.long, device=dead_idx.device)
            position[dead_idx] = torch.arange(n_dead, device=dead_idx.device)  # latent → column of pre
            chosen = torch.zeros_like(pre, dtype=torch.bool).scatter_(1, position[code.aux_idx], True)
            z = pre * chosen
            residual_hat = self.cfg.spec.sparse_values(z) @ self.W_dec[dead_idx]
        else:
            residual_hat = sparse_decode(self._values(x, code.aux_pre, code.aux_idx), code.aux_idx, self.W_dec)
        residual = (x - x_hat).detach()
        variance = (residual - residual.mean(0)).pow(2).sum().clamp_min(1e-12)
        return (residual_hat - residual).pow(2).sum() / variance

    # --- recipe helpers ------------------------------------------------------------------------------
    @torch.no_grad()
    def normalize_atoms(self) -> None:
        """Rescale every decoder atom to unit norm."""
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def remove_radial_grad(self) -> None:
        """Remove the gradient component parallel to each (unit) atom, so a step moves along the sphere."""
        if self.W_dec.grad is not None:
            g, atoms = self.W_dec.grad, self.W_dec
            # g_i · d_i as a sampled product on the diagonal (rows_dot with idx[i] = [i]): no K × N temporary
            rows = torch.arange(atoms.shape[0], device=atoms.device)[:, None]
            g.addcmul_(rows_dot(atoms, rows, g), atoms, value=-1.0)
