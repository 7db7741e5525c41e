"""Synthetic data of P1: a ground-truth dictionary on the sphere and signed top-k Gaussian codes.

x = z D*, with z ~ N(0, I_M) keeping only its k entries of largest magnitude (signs kept), then x is
normalised to unit norm (the training recipe's input normalisation; the code is rescaled with it).

Every stream is a pure function of (seed, step): ``stream.batch(step)`` returns the same tensor however
often and in whatever order it is asked for, so all models of an experiment see identical data in
identical order, and a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from isae.core.seeding import derive_seed
from isae.core.sparse_ops import sparse_decode
from isae.data.stream import SeededStream

DICTIONARY_KINDS = ("iid", "mixture")
MIXTURE_RECIPES = ("ours", "authors")


@dataclass
class SyntheticConfig:
    """Ground truth of a synthetic experiment. Defaults are P1's sizes unless marked "our choice"."""

    d_in: int = 768
    """Input dimension N."""
    n_atoms: int = 4096
    """Ground-truth dictionary size M."""
    k: int = 40
    """Non-zeros per code."""
    kind: str = "iid"
    """"iid": random unit atoms. "mixture": atoms from a Gaussian mixture projected on the sphere."""
    n_components: int = 32
    """Mixture components (our choice: P1 does not say)."""
    spread: float = 1.0
    """Mixture: atom = normalise(centre + spread · g), g ~ N(0, I/N), centres unit. Our choice; 1.0 puts
    the mean |cos| between atoms of one component near 0.5."""
    mixture_recipe: str = "ours"
    """How the mixture dictionary is drawn. "ours": unit centres, ``n_components`` and ``spread`` as above.
    "authors": max(2, M // 100) centres ~ N(0, s·I), as many atoms per centre (±1), atom = centre +
    N(0, (1 − s)·I), s = ``mixture_scale``, then unit rows (``rsae/synthetic_data.py``; their "i.i.d." is the
    same generator with s = 0)."""
    mixture_scale: float = 0.3
    """s of the authors' mixture (their mixture setting: 0.3)."""
    center_inputs: bool = False
    """Centre every input by its own mean over features before the unit-norm scaling (the authors' input
    normalisation); P1's text only scales to unit norm."""
    seed: int = 0
    """Seed of the ground-truth dictionary."""

    def __post_init__(self) -> None:
        if self.kind not in DICTIONARY_KINDS:
            raise ValueError(f"kind={self.kind!r} is unknown; use one of {DICTIONARY_KINDS}.")
        if self.mixture_recipe not in MIXTURE_RECIPES:
            raise ValueError(f"mixture_recipe={self.mixture_recipe!r}; use one of {MIXTURE_RECIPES}.")
        if not 0.0 <= self.mixture_scale < 1.0:
            raise ValueError(f"mixture_scale={self.mixture_scale} must lie in [0, 1).")
        if not 0 < self.k <= self.n_atoms:
            raise ValueError(f"k={self.k} must satisfy 0 < k ≤ n_atoms={self.n_atoms}.")
        if self.d_in <= 0 or self.n_components <= 0 or self.spread < 0:
            raise ValueError("d_in and n_components must be positive and spread ≥ 0.")

    def to_dict(self) -> dict:
        return asdict(self)


def _unit_rows(a: torch.Tensor) -> torch.Tensor:
    return a / a.norm(dim=1, keepdim=True)


def make_dictionary(cfg: SyntheticConfig) -> torch.Tensor:
    """Ground-truth atoms as unit rows, [n_atoms, d_in]."""
    gen = torch.Generator().manual_seed(derive_seed("dictionary", cfg.seed))
    if cfg.kind == "iid":
        return _unit_rows(torch.randn(cfg.n_atoms, cfg.d_in, generator=gen))
    if cfg.mixture_recipe == "authors":
        s, n_components = cfg.mixture_scale, authors_components(cfg.n_atoms)
        centres = s**0.5 * torch.randn(n_components, cfg.d_in, generator=gen)
        # balanced: every component gets M // n_components or one more atoms, in a random order
        component = (torch.arange(cfg.n_atoms) % n_components)[torch.randperm(cfg.n_atoms, generator=gen)]
        return _unit_rows(centres[component] + (1 - s) ** 0.5 * torch.randn(cfg.n_atoms, cfg.d_in, generator=gen))
    centres = _unit_rows(torch.randn(cfg.n_components, cfg.d_in, generator=gen))
    component = torch.randint(cfg.n_components, (cfg.n_atoms,), generator=gen)
    offsets = torch.randn(cfg.n_atoms, cfg.d_in, generator=gen) / cfg.d_in**0.5
    return _unit_rows(centres[component] + cfg.spread * offsets)


def authors_components(n_atoms: int) -> int:
    """Components of the authors' mixture dictionary: max(2, M // 100)."""
    return max(2, n_atoms // 100)


class SyntheticStream(SeededStream):
    """Batches of unit-norm synthetic inputs; ``batch(step)`` depends only on (seed, step)."""

    name, seed_tag = "synthetic", "stream"

    def __init__(self, cfg: SyntheticConfig, batch_size: int, seed: int = 0, device: str | torch.device = "cpu"):
        super().__init__(cfg, batch_size, seed, device)
        self.dictionary = make_dictionary(cfg).to(self.device)

    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    def _sparse_sample(self, n: int, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(unit-norm x [n, N], code values [n, k] rescaled with x, code indices [n, k]) for seed (seed, step)."""
        gen = self.generator(step)
        dense = torch.randn(n, self.cfg.n_atoms, generator=gen, device=self.device)
        idx = dense.abs().topk(self.cfg.k, dim=1).indices
        vals = dense.gather(1, idx)
        x = sparse_decode(vals, idx, self.dictionary)  # z D* from the k non-zeros (far cheaper than a dense product)
        if self.cfg.center_inputs:  # the ground-truth code then reconstructs x up to a multiple of the ones vector
            x = x - x.mean(1, keepdim=True)
        norm = x.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return x / norm, vals / norm, idx

    def sample(self, n: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """n inputs and their dense ground-truth codes (rescaled with the input), drawn from seed (seed, step)."""
        x, vals, idx = self._sparse_sample(n, step)
        z = torch.zeros(n, self.cfg.n_atoms, device=self.device).scatter(1, idx, vals)
        return x, z

    def batch(self, step: int) -> torch.Tensor:
        """Training batch number ``step`` (unit-norm rows)."""
        return self._sparse_sample(self.batch_size, step)[0]

    def held_out(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Evaluation inputs that no training step sees (drawn from negative step numbers)."""
        return self.sample(n, step=-1)
