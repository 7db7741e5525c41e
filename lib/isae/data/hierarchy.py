"""Synthetic data with hierarchical features, for P3's splitting and absorption (our choice of generator).

Features are unit directions in R^N of three kinds: **parents**; **children**, each tied to one parent, whose
direction is normalise(parent + ``child_offset`` · u) with u a random unit vector orthogonal to the parent; and
**free** features with no hierarchy. A parent fires with probability ``p_parent``; each of its children fires
only when the parent does, with probability ``p_child`` (the co-occurrence knob); a free feature fires with
probability ``p_free``. Active features take magnitudes Uniform(0.5, 1.5) (non-negative, like the codes of a
ReLU SAE); x = Σ magnitude · direction + ``noise`` · N(0, I/N). In the style of the absorption literature
(Chanin et al. 2024), not a generator any of the three papers specifies.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from isae.data.stream import SeededStream


@dataclass(frozen=True)
class HierarchyConfig:
    d_in: int = 32
    n_parents: int = 6
    children_per_parent: int = 2
    n_free: int = 12
    p_parent: float = 0.15
    p_child: float = 0.5
    """P(a given child fires | its parent fires)."""
    p_free: float = 0.08
    child_offset: float = 0.6
    noise: float = 0.01
    seed: int = 0
    """Seed of the feature directions."""

    def __post_init__(self):
        for name in ("d_in", "n_parents", "children_per_parent"):
            if getattr(self, name) < 1:
                raise ValueError(f"hierarchy parameter {name}={getattr(self, name)!r} must be ≥ 1.")
        if self.n_free < 0:
            raise ValueError(f"hierarchy parameter n_free={self.n_free!r} must be ≥ 0.")
        for name in ("p_parent", "p_child", "p_free"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"hierarchy parameter {name}={getattr(self, name)!r} must be a probability in [0, 1].")
        if self.child_offset <= 0 or self.noise < 0:
            raise ValueError(f"hierarchy parameters child_offset={self.child_offset} must be > 0 and "
                             f"noise={self.noise} ≥ 0.")

    @property
    def n_children(self) -> int:
        return self.n_parents * self.children_per_parent

    @property
    def n_features(self) -> int:
        return self.n_parents + self.n_children + self.n_free

    def parent_of(self, child: int) -> int:
        """The parent index of child ``child`` (children numbered 0..n_children-1)."""
        return child // self.children_per_parent

    def to_dict(self) -> dict:
        return asdict(self)


def feature_directions(cfg: HierarchyConfig) -> torch.Tensor:
    """[n_features, N] unit rows: parents, then children (grouped by parent), then free features."""
    gen = torch.Generator().manual_seed(cfg.seed)
    unit = lambda a: a / a.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # noqa: E731
    parents = unit(torch.randn(cfg.n_parents, cfg.d_in, generator=gen))
    u = torch.randn(cfg.n_parents, cfg.children_per_parent, cfg.d_in, generator=gen)
    u = unit(u - (u * parents[:, None]).sum(-1, keepdim=True) * parents[:, None])  # ⊥ its parent
    children = unit(parents[:, None] + cfg.child_offset * u).reshape(cfg.n_children, cfg.d_in)
    free = unit(torch.randn(cfg.n_free, cfg.d_in, generator=gen))
    return torch.cat([parents, children, free])


class HierarchyStream(SeededStream):
    """Batches of hierarchical synthetic inputs; ``batch(step)`` depends only on (seed, step)."""

    name, seed_tag = "hierarchy", "hierarchy"

    def __init__(self, cfg: HierarchyConfig, batch_size: int, seed: int = 0, device: str | torch.device = "cpu"):
        super().__init__(cfg, batch_size, seed, device)
        self.directions = feature_directions(cfg).to(self.device)

    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    def sample(self, n: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """n inputs and their feature magnitudes [n, n_features] (0 where a feature is off)."""
        c, gen = self.cfg, self.generator(step)
        rand = lambda *shape: torch.rand(*shape, generator=gen, device=self.device)  # noqa: E731
        parent_on = rand(n, c.n_parents) < c.p_parent
        child_on = (rand(n, c.n_parents, c.children_per_parent) < c.p_child) & parent_on[..., None]
        free_on = rand(n, c.n_free) < c.p_free
        on = torch.cat([parent_on, child_on.reshape(n, -1), free_on], 1)
        mags = (0.5 + rand(n, c.n_features)) * on
        x = mags @ self.directions
        x = x + c.noise * torch.randn(n, c.d_in, generator=gen, device=self.device) / c.d_in**0.5
        return x, mags

    def batch(self, step: int) -> torch.Tensor:
        return self.sample(self.batch_size, step)[0]

    def held_out(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Evaluation inputs that no training step sees (drawn from a negative step number)."""
        return self.sample(n, step=-1)
