"""The toy data of P2's superposition model: x_p = W_p x, sparse non-negative true features x.

See ``isae.experiments.p2_toy`` for the model and the choices P2 leaves open (W_p kinds, feature values).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from isae.core.losses import unit_mean_square
from isae.core.seeding import derive_seed
from isae.data.stream import SeededStream

W_P_KINDS = ("gaussian", "heterogeneous")


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
    """P2's principle on the toy: γ_j = PR_j^(−α) (smaller for more polysemantic dims), scaled so mean γ² = 1
    (``isae.core.losses.unit_mean_square``). α = 0 gives uniform weights (the plain SAE)."""
    return unit_mean_square(polysemanticity(w_p).pow(-float(alpha)))


class ToyStream(SeededStream):
    """Seeded batches of the toy model (the trainer's ``Stream`` protocol: ``batch(step)`` is a pure function of
    (seed, step), ``held_out(n)``, unbounded: ``steps_per_pass`` is None); ``sample(n, step)`` likewise.

    Two uniforms per feature and input are drawn: u decides whether the feature is on (u ≥ S) and v is its
    value. Because the draws do not depend on S, streams with the same seed and different S are *coupled*:
    ``sample(n, step, sparsity=(0.5, 0.9))`` returns both from the same draws (a feature on at S = 0.9 is
    also on at 0.5), which is how a sparsity sweep trains all its models from one stream.
    """

    name, seed_tag = "toy", "toy-stream"

    def __init__(self, cfg: ToyConfig, batch_size: int, seed: int = 0, device: str | torch.device = "cpu"):
        super().__init__(cfg, batch_size, seed, device)
        self.w_p = make_w_p(cfg).to(self.device)

    @property
    def d_in(self) -> int:
        return self.cfg.n_input

    def sample(self, n: int, step: int, sparsity: float | Sequence[float] | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x [n, n_features], x_p [n, n_input]) drawn from seed (seed, step); negative steps are held out.

        With a sequence of sparsities both gain a leading axis, one slice per sparsity, from the same draws.
        """
        gen = self.generator(step)
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

    def coupled(self, sparsity: Sequence[float]) -> CoupledToyStream:
        """A stream for a bank whose model i sits at ``sparsity[i]``: batch(step) is [n_models, batch, n_input],
        all models' batches from the same draws (see ``sample``)."""
        return CoupledToyStream(self, sparsity)


class CoupledToyStream:
    """The training batches of a bank whose models sit at different sparsities (``ToyStream.coupled``)."""

    steps_per_pass = None

    def __init__(self, stream: ToyStream, sparsity: Sequence[float]):
        self.stream = stream
        self.sparsity = tuple(float(s) for s in sparsity)
        self.levels = sorted(set(self.sparsity))
        self.which = torch.as_tensor([self.levels.index(s) for s in self.sparsity], device=stream.device)

    @property
    def d_in(self) -> int:
        return self.stream.d_in

    def identity(self) -> dict:
        return {**self.stream.identity(), "sparsity": list(self.sparsity)}

    def batch(self, step: int) -> torch.Tensor:
        """x_p of batch ``step`` for every model, [n_models, batch, n_input]."""
        return self.stream.sample(self.stream.batch_size, step, sparsity=self.levels)[1][self.which]

    def held_out(self, n: int) -> torch.Tensor:
        """Held-out x_p for every model, [n_models, n, n_input]."""
        return self.stream.held_out(n, sparsity=self.levels)[1][self.which]
