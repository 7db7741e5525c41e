"""The seeded ground-truth streams' common part: batch ``step`` is a pure function of (seed, step)."""

from __future__ import annotations

import torch

from isae.core.seeding import derive_seed


class SeededStream:
    """An endless stream (``steps_per_pass`` None) of data drawn with a generator seeded by (seed, step); negative
    steps are held out. Subclasses name themselves (``name``, ``seed_tag``) and draw from ``generator(step)``."""

    name: str
    """The stream's name in its ``identity``."""
    seed_tag: str
    """The tag that makes this stream's per-step seeds distinct from other streams'."""
    steps_per_pass = None
    """An endless stream: no step repeats an earlier batch."""

    def __init__(self, cfg, batch_size: int, seed: int = 0, device: str | torch.device = "cpu"):
        if batch_size <= 0:
            raise ValueError(f"batch_size={batch_size} must be positive.")
        self.cfg = cfg
        self.batch_size = batch_size
        self.seed = seed
        self.device = torch.device(device)

    def generator(self, step: int) -> torch.Generator:
        """A generator with a distinct, reproducible seed for (stream seed, step)."""
        return torch.Generator(self.device).manual_seed(derive_seed(self.seed_tag, self.seed, step))

    def identity(self) -> dict:
        """What determines the stream's batches (a checkpoint records it and refuses another stream)."""
        return {"stream": self.name, **self.cfg.to_dict(), "stream_seed": self.seed, "batch_size": self.batch_size}


class TensorStream:
    """Batches of the rows of an in-memory [n, d] tensor (your own activations): each pass visits every row once in
    an order seeded by (seed, pass), so ``batch(step)`` is a pure function of (seed, step); rows are scaled to unit
    norm when ``normalize`` (the training recipes' input scaling). Rows that do not fill a last batch are skipped."""

    def __init__(self, rows: torch.Tensor, batch_size: int, seed: int = 0, passes: int = 1, normalize: bool = True,
                 device: str | torch.device = "cpu"):
        if rows.ndim != 2:
            raise ValueError(f"rows has shape {tuple(rows.shape)}; pass an [n, d] matrix of activations.")
        if batch_size <= 0 or batch_size > len(rows):
            raise ValueError(f"batch_size={batch_size} must be in 1..{len(rows)} (the rows given).")
        if isinstance(passes, bool) or not isinstance(passes, int) or passes < 1:
            raise ValueError(f"passes={passes!r} must be an integer ≥ 1.")
        self.rows, self.batch_size, self.seed, self.passes = rows.float(), batch_size, seed, passes
        self.normalize, self.device = normalize, torch.device(device)
        self.d_in = rows.shape[1]
        self.steps_per_pass = len(rows) // batch_size
        self._order: tuple[int, torch.Tensor] | None = None

    @property
    def n_steps(self) -> int:
        """Batches in all ``passes``."""
        return self.passes * self.steps_per_pass

    def identity(self) -> dict:
        return {"stream": "tensor", "rows": list(self.rows.shape), "checksum": float(self.rows.double().sum()),
                "seed": self.seed, "batch_size": self.batch_size, "passes": self.passes, "normalize": self.normalize}

    def batch(self, step: int) -> torch.Tensor:
        if not 0 <= step < self.n_steps:
            raise ValueError(f"step {step} is past the stream's {self.passes} pass(es) of {self.steps_per_pass} "
                             f"batches; raise passes or train fewer steps.")
        pass_, j = divmod(step, self.steps_per_pass)
        if self._order is None or self._order[0] != pass_:
            g = torch.Generator().manual_seed(derive_seed("tensor-rows", self.seed, pass_))
            self._order = (pass_, torch.randperm(len(self.rows), generator=g))
        x = self.rows[self._order[1][j * self.batch_size:(j + 1) * self.batch_size]].to(self.device)
        return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12) if self.normalize else x
