"""One setup call per notebook: profile → sizes, output folders, device and threads, and provenance params."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from isae.core.provenance import repo_root, write_with_provenance
from isae.core.runs import resolve_device
from isae.experiments.profiles import check_profile
from isae.plots.common import save_figure


@dataclass
class NotebookSetup:
    """What a notebook needs after its parameters cell: where to write, on what device, with which params."""

    notebook: str
    profile: str
    sizes: Any
    """The profile's sizes (a frozen dataclass with ``to_dict``), overrides applied."""
    out: Path
    """``outputs/<profile>`` (or the notebook's ``output_root``)."""
    device: torch.device
    n_threads: int
    params: dict = field(default_factory=dict)
    """Provenance parameters written beside every table and figure (the device among them)."""

    @property
    def tables(self) -> Path:
        return self.out / "tables"

    @property
    def figures(self) -> Path:
        return self.out / "figures"

    def save_table(self, df: pd.DataFrame, name: str, **extra) -> Path:
        """``df`` as ``tables/<name>`` (atomic), with a provenance JSON beside it."""
        return write_with_provenance(self.tables / name, lambda f: df.to_csv(f, index=False), **self.params, **extra)

    def save_figure(self, fig, name: str, **extra) -> Path:
        """``fig`` as ``figures/<name>`` (atomic), with a provenance JSON beside it."""
        return save_figure(fig, self.figures / name, **self.params, **extra)

    def show(self) -> pd.DataFrame:
        """The sizes as a one-column table, for the notebook's first output."""
        return pd.Series(self.sizes.to_dict(), name=f"profile '{self.profile}'").to_frame()


def notebook_setup(notebook: str, profile: str, sizes: Any, n_threads: int | None = None,
                   device: str | None = None, output_root: str | Path | None = None) -> NotebookSetup:
    """Check the parameters, set torch's threads, create the output folders; before any compute."""
    check_profile(profile)
    if n_threads is not None:
        if int(n_threads) < 1:
            raise ValueError(f"n_threads={n_threads} must be ≥ 1 (or None for torch's default).")
        torch.set_num_threads(int(n_threads))
    dev = resolve_device(device)
    out = Path(output_root) if output_root else repo_root() / "outputs" / profile
    for sub in ("tables", "figures"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    params = {"notebook": notebook, "profile": profile, **sizes.to_dict(), "device": str(dev)}
    return NotebookSetup(notebook=notebook, profile=profile, sizes=sizes, out=out, device=dev,
                         n_threads=torch.get_num_threads(), params=params)
