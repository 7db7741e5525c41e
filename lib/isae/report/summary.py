"""One summary for every experiment: mean and sd over seeds (or seed pairs) per group."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd


def mean_sd(df: pd.DataFrame, keys: Sequence[str], metrics: Sequence[str], count: str = "n_seeds") -> pd.DataFrame:
    """One row per group of ``keys`` (in order of first appearance): ``<m>`` the mean and ``<m>_sd`` the sample sd
    of each metric present in ``df``, and ``count`` the group's size. Columns: keys, then (m, m_sd) pairs, count."""
    keys = [k for k in keys if k in df]
    cols = [m for m in metrics if m in df]
    g = df.groupby(keys, sort=False)
    table = g[cols].mean().join(g[cols].std().add_suffix("_sd"))
    table[count] = g.size()
    return table.reset_index()[keys + [c for m in cols for c in (m, f"{m}_sd")] + [count]]
