"""The SAE family of P1 (TopK, AbsTopK, iSAE, iSAE-ME) plus ReLU+L1 and JumpReLU (needed by P2 and P3).

All share x̂ = z D + b and z = σ(W (x − b)) with one bias b (``b_dec``) subtracted before the encoder and
added after the decoder. Layout: ``W_enc`` and ``W_dec`` are both [d_sae, d_in], one row per latent, so
the sparse kernels can gather rows; on disk they are written in SAELens's layout (see ``isae.core.io``).

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

from isae.core.arip import arip_support, rip_gap_exact, rip_gap_noise
from isae.core.seeding import derive_seed
from isae.core.sparse_ops import (LatentMajor, add_sparse_decode, columns_preact, gather_preact, multistep_values, rows_dot,
                         sparse_decode, topk_indices)

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


#: Rows per block of the encoder's selection pass on the CPU: d_sae × rows ≈ this many floats (16 MiB), so
#: no batch × K pre-activation is ever allocated whole. Our choice, from whole-step timings of TopK and
#: AbsTopK at B = 2048, K = 4096 on the 2-core CPU with blocks of 128–2048 rows: 1024 rows was fastest
#: (≈ 8% over one 2048-row block, ≈ 10% over 128–256-row blocks). On a GPU the whole batch is one block.
_SELECTION_BLOCK_ELEMENTS = 1 << 22

#: AuxK uses dense products over the dead latents while n_dead ≤ this × k_aux, else the sparse kernels.
#: Our choice: at B = 2048, N = 768, K = 4096, k_aux = 256 on the CPU, 410 dead latents took 80 ms densely
#: against 250 ms sparsely, and the dense cost grows with n_dead while the sparse one does not.
_AUXK_DENSE_MAX_DEAD_PER_K = 4


@dataclass
class _Selection:
    """The encoder's discrete choices (``SAE._encoder_selection``), all [B, ·] integer or value tensors."""

    idx: list[torch.Tensor]
    pre_at: list[torch.Tensor]
    support: torch.Tensor | None
    aux_idx: torch.Tensor | None
    aux_pre: torch.Tensor | None
    aux_dead_pre: torch.Tensor | None


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
        if cfg.architecture == "isae_me":
            # Stored so that S·z = z @ S (row j = the contribution of latent j); S is symmetric at init.
            self.S = nn.Parameter(torch.zeros(cfg.d_sae, cfg.d_sae))
            if cfg.me_init == "iht":
                with torch.no_grad():
                    step = 1.0 / torch.linalg.matrix_norm(atoms, ord=2) ** 2
                    self.S.copy_(torch.eye(cfg.d_sae) - step * atoms @ atoms.T)
                    self.W_enc.mul_(step)

    # --- encoder -------------------------------------------------------------------------------------
    def preact(self, x_c: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Dense pre-activation x_c W_encᵀ + b_enc (differentiable; ``out``: a buffer to write it into, without grad)."""
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
        [B, k]-sized results leave the loop; the block-sized work tensors are allocated once per call and
        reused (a fresh multi-MiB allocation per block costs page faults: writing |score| took 3 ms that way
        against 0.3 ms into a reused buffer, in an earlier version that still wrote it).

        ``bf16_selection``: the dense product that ranks the latents is computed in bfloat16 (4.8× faster than
        float32 on the 2-core CPU here; tensor cores on a GPU); the pre-activations of the chosen latents are
        then recomputed in float32, so every code value is float32 and only near-ties (within bfloat16's
        ≈ 0.4% rounding) may be ranked differently than in float32.
        """
        cfg = self.cfg
        n_steps = cfg.n_steps if cfg.architecture == "isae_me" else 1
        signed = cfg.architecture in SIGNED
        k_aux = 0
        if dead_mask is not None and cfg.aux_coef > 0 and cfg.aux_k > 0:
            dead_idx = dead_mask.nonzero().squeeze(1)
            k_aux = min(cfg.aux_k, dead_idx.numel(), cfg.d_sae - cfg.k)
            aux_dense = dead_idx.numel() <= _AUXK_DENSE_MAX_DEAD_PER_K * k_aux
        rows = x_c.shape[0] if x_c.is_cuda else max(1, _SELECTION_BLOCK_ELEMENTS // cfg.d_sae)
        work = {name: torch.empty(min(rows, x_c.shape[0]), cfg.d_sae, dtype=x_c.dtype, device=x_c.device)
                for name in ("pre",) + (("score",) if n_steps > 1 else ())}
        parts: dict[str, list[torch.Tensor]] = {}

        def keep(name: str, t: torch.Tensor) -> None:
            parts.setdefault(name, []).append(t)

        W_bf16 = self.W_enc.to(torch.bfloat16) if bf16_selection else None
        # iSAE-ME's lateral input S z only ranks latents here (values are recomputed in float32 later), so with
        # bf16_selection it is bfloat16 as well: the embedding-bag over rows of S ran 2.2× faster that way.
        S_rank = None if n_steps == 1 else self.S.to(torch.bfloat16) if bf16_selection else self.S

        def pre_at(block: torch.Tensor, pre: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            """The pre-activations at idx, in float32 (recomputed when the ranking product was bfloat16)."""
            if not bf16_selection:
                return pre.gather(1, idx)
            exact = rows_dot(self.W_enc, idx, block)
            return exact + self.b_enc[idx] if cfg.has_encoder_bias else exact

        for start in range(0, x_c.shape[0], rows):
            block = x_c[start : start + rows]
            n = block.shape[0]
            pre = work["pre"][:n]
            if bf16_selection:
                pre.copy_(torch.mm(block.to(torch.bfloat16), W_bf16.T))
                if cfg.has_encoder_bias:
                    pre.add_(self.b_enc)
            else:
                self.preact(block, out=pre)
            score = pre
            for t in range(n_steps):
                if t > 0:  # iSAE-ME: score = pre + S z, the lateral input from the previous step's sparse code
                    z_prev = score.gather(1, idx).to(S_rank.dtype)
                    score = add_sparse_decode(pre, z_prev, idx, S_rank, out=work["score"][:n])
                if t == n_steps - 1 and with_support:  # the aRIP support: the 2k largest |score|
                    support = arip_support(score, cfg.k)
                    # the support is sorted descending, so for the AbsTopK family the active set is its first k
                    idx = support[:, : cfg.k] if signed else topk_indices(score, cfg.k, sorted=False)
                    keep("support", support)
                else:  # the order of the active latents is never used: skip sorting them
                    idx = topk_indices(score, cfg.k, sorted=False, magnitude=signed)
                keep(f"idx{t}", idx)
                keep(f"pre{t}", pre_at(block, pre, idx))
            if k_aux:  # AuxK ranks dead latents by the first step's pre-activation (our choice for iSAE-ME)
                ranked = pre.index_select(1, dead_idx)  # unsorted topk: AuxK sums over its choice, and this
                chosen = (ranked.abs() if signed else ranked).topk(k_aux, dim=1, sorted=False).indices  # is 2.8× faster
                aux_idx = dead_idx[chosen]
                keep("aux_idx", aux_idx)
                if not aux_dense:
                    keep("aux_pre", pre_at(block, pre, aux_idx))
                elif not bf16_selection:  # the dense AuxK path reads every dead latent's pre-activation
                    keep("aux_dead_pre", ranked)
                else:  # the ranking product was bfloat16: the values in float32
                    exact = torch.mm(block, self.W_enc[dead_idx].T)
                    keep("aux_dead_pre", exact + self.b_enc[dead_idx] if cfg.has_encoder_bias else exact)
        cat = {name: torch.cat(ts) for name, ts in parts.items()}
        return _Selection(idx=[cat[f"idx{t}"] for t in range(n_steps)], pre_at=[cat[f"pre{t}"] for t in range(n_steps)],
                          support=cat.get("support"), aux_idx=cat.get("aux_idx"), aux_pre=cat.get("aux_pre"),
                          aux_dead_pre=cat.get("aux_dead_pre"))

    def _values(self, x: torch.Tensor, pre_at: torch.Tensor, idx: torch.Tensor,
                layout: LatentMajor | None = None) -> torch.Tensor:
        """Code values at the selected latents, differentiable into W_enc, b_enc, b_dec and x through those latents
        only. b_dec's gradient comes from per-latent sums, not from a [B, N] gradient of x − b_dec."""
        vals = gather_preact(x, self.W_enc, pre_at, idx, shift=self.b_dec, layout=layout)  # value includes b_enc
        if self.cfg.has_encoder_bias:  # route the gradient to b_enc without changing the value
            vals = vals + (self.b_enc[idx] - self.b_enc.detach()[idx])
        return vals.relu() if self.cfg.architecture == "topk" else vals

    def encode_sparse(self, x: torch.Tensor, dead_mask: torch.Tensor | None = None,
                      with_support: bool = False, bf16_selection: bool = False) -> SparseCode:
        """k-sparse code of x, differentiable through ``vals`` (see ``SparseCode``).

        ``dead_mask`` (bool [d_sae]) adds AuxK's choice of dead latents; ``with_support`` the aRIP support;
        ``bf16_selection`` ranks the latents with a bfloat16 encoder product (see ``_encoder_selection``).
        """
        if self.cfg.architecture not in K_SPARSE:
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
        if cfg.architecture not in K_SPARSE:
            x_c = x - self.b_dec
            pre = self.preact(x_c)
            z = pre.relu() if cfg.architecture == "relu" else pre * (pre > cfg.jump_threshold)
            x_hat = self.decode(z)
            mse = self.reconstruction_loss(x, x_hat)
            l1 = z.abs().sum(1).mean()  # atoms are unit norm, so this is the decoder-norm-weighted L1
            return SAEOutput(x_hat, z=z, pre=pre.detach(), x_c=x_c,
                             losses={"mse": mse, "l1": l1, "total": mse + cfg.l1_coef * l1})

        code = self.encode_sparse(x, dead_mask=dead_mask, with_support=cfg.arip_coef > 0, bf16_selection=bf16_selection)
        x_hat = self.decode_sparse(code.vals, code.idx, code.layout)
        mse = self.reconstruction_loss(x, x_hat)
        losses = {"mse": mse}
        total = mse
        if code.aux_idx is not None:
            losses["aux"] = self._auxk_loss(x, x_hat, code, dead_mask)
            total = total + cfg.aux_coef * losses["aux"]
        if cfg.arip_coef > 0:
            if cfg.arip_estimator == "exact":
                losses["arip"] = rip_gap_exact(self.W_dec, code.support).mean()
            else:
                losses["arip"] = rip_gap_noise(self.W_dec, code.support, generator).mean()
            total = total + cfg.arip_coef * losses["arip"]
        losses["total"] = total
        return SAEOutput(x_hat, vals=code.vals, idx=code.idx, support=code.support, x_c=code.x_c, losses=losses)

    def reconstruction_loss(self, x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
        """mean_x ‖Γ(x − x̂)‖², Γ = diag(loss_weight) (P2's weighted loss; Γ = I by default)."""
        if self._unweighted():  # one fused pass forward and backward instead of five
            return F.mse_loss(x_hat, x, reduction="sum") / x.shape[0]
        return ((x - x_hat) * self.loss_weight).pow(2).sum(1).mean()

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

    def _auxk_loss(self, x: torch.Tensor, x_hat: torch.Tensor, code: SparseCode, dead_mask: torch.Tensor) -> torch.Tensor:
        """Gao et al.'s AuxK: reconstruct the detached residual from the top-k_aux dead latents.

        Dead latents are ranked by pre-activation (TopK) or |pre-activation| (AbsTopK family) of the first
        encoder step (our choice for iSAE-ME). Normalised by the residual's variance and scaled by
        min(n_dead / k_aux, 1), as in sparsify.

        Two exact ways to compute it, chosen by cost (our choice, from timing both on the CPU): with few dead
        latents, dense matrix products over the dead latents only ([B, n_dead] codes, BLAS); with many, the
        sparse kernels over the k_aux chosen per input (cost independent of n_dead, but per-element slower).
        """
        dead_idx = dead_mask.nonzero().squeeze(1)
        n_dead, k_aux = dead_idx.numel(), code.aux_idx.shape[1]
        if code.aux_dead_pre is not None:  # dense path (the selection chose it and kept pre at the dead latents)
            pre = columns_preact(x, self.W_enc, dead_idx, code.aux_dead_pre, shift=self.b_dec)  # includes b_enc
            if self.cfg.has_encoder_bias:  # route the gradient to b_enc without changing the value
                pre = pre + (self.b_enc[dead_idx] - self.b_enc.detach()[dead_idx])
            position = torch.empty(self.cfg.d_sae, dtype=torch.long, device=dead_idx.device)
            position[dead_idx] = torch.arange(n_dead, device=dead_idx.device)  # latent → column of pre
            chosen = torch.zeros_like(pre, dtype=torch.bool).scatter_(1, position[code.aux_idx], True)
            z = pre * chosen
            residual_hat = (z.relu() if self.cfg.architecture == "topk" else z) @ self.W_dec[dead_idx]
        else:
            residual_hat = sparse_decode(self._values(x, code.aux_pre, code.aux_idx), code.aux_idx, self.W_dec)
        residual = (x - x_hat).detach()
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
            g, atoms = self.W_dec.grad, self.W_dec
            # g_i · d_i as a sampled product on the diagonal (rows_dot with idx[i] = [i]): no K × N temporary,
            # 0.22 against 0.44 ms for torch.linalg.vecdot (a product, then a sum) and 2.0 for a batched bmm here
            rows = torch.arange(atoms.shape[0], device=atoms.device)[:, None]
            g.addcmul_(rows_dot(atoms, rows, g), atoms, value=-1.0)
