"""What every figure shares: one palette and one way to save a figure with its provenance."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import seaborn as sns

from isae.core.provenance import write_with_provenance


def palette(names: Sequence[str]) -> dict:
    """One colour per name, from seaborn's colour-blind palette, in the order given."""
    names = list(names)
    return dict(zip(names, sns.color_palette("colorblind", len(names))))


def save_figure(fig: plt.Figure, path: str | Path, **params) -> Path:
    """Save a figure atomically (PNG) with a provenance JSON beside it."""
    return write_with_provenance(path, lambda p: fig.savefig(p, dpi=150, bbox_inches="tight", format="png"), **params)
