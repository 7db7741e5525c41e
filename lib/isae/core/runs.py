"""Run identity as data: which variant, which seed, trained or the random-init baseline.

Dicts of SAEs are keyed by ``RunKey``; tables carry its fields as columns (``RunKey.columns``). ``str(key)`` is
for display and logs only: no code parses it back.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, order=True)
class RunKey:
    """One trained (or untrained baseline) model of an experiment."""

    variant: str
    """What distinguishes the model apart from its seed: an architecture ("topk") or a P2 variant ("alpha=0.5")."""
    seed: int
    """The model's initialisation seed."""
    trained: bool = True
    """False for the random-init baseline models."""

    def __str__(self) -> str:
        return f"{self.variant}/seed{self.seed}" + ("" if self.trained else " (untrained)")

    def columns(self) -> dict:
        """The key as table columns."""
        return {"variant": self.variant, "seed": self.seed, "trained": self.trained}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a torch device (None: cuda when available, else cpu); refuses a device this machine lacks."""
    dev = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} but torch sees no CUDA device here; pass device=None (auto) or "
                         "device='cpu'.")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={str(device)!r} but MPS is not available here; pass device=None or device='cpu'.")
    return dev
