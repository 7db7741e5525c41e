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
