"""P3's figures: absorption against co-occurrence, and the wide-dictionary limit."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

from isae.plots.common import palette


def absorption(table: pd.DataFrame) -> plt.Figure:
    """``p3_optimality.absorption_sweep`` summarised (``summarise``): nested and absorbed rates and the parent
    latent's rate when the parent fires alone, against P(child | parent), one line per model (± sd over seeds)."""
    metrics = {"absorbed_rate": "absorbed: parent latent off", "nested_rate": "nested: parent latent on",
               "parent_alone_rate": "parent latent on, parent alone"}
    models = list(dict.fromkeys(table["model"]))
    colours = palette(models)
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.4 * len(metrics), 3.2), squeeze=False, sharey=True)
    for ax, (metric, title) in zip(axes[0], metrics.items()):
        for m in models:
            rows = table[table["model"] == m].sort_values("p_child")
            ax.errorbar(rows["p_child"], rows[metric], yerr=rows.get(f"{metric}_sd"), marker="o", ms=3.5,
                        capsize=2, color=colours[m], label=m)
        ax.set_xlabel("P(child | parent)")
        ax.set_title(title, fontsize=9)
        ax.set_ylim(-0.05, 1.05)
    axes[0][0].set_ylabel("share of inputs")
    axes[0][-1].legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return fig


def wide_limit(table: pd.DataFrame) -> plt.Figure:
    """``p3_optimality.wide_limit`` summarised: ray alignment, codes per input and C3 against K, per model."""
    metrics = {"ray_alignment": "mean max-cos of an atom to a data point", "l0": "codes per input (L0)",
               "c3_median": "C3 residual (median over latents)"}
    models = list(dict.fromkeys(table["model"]))
    colours = palette(models)
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.4 * len(metrics), 3.2), squeeze=False)
    for ax, (metric, title) in zip(axes[0], metrics.items()):
        for m in models:
            rows = table[table["model"] == m].sort_values("K")
            ax.errorbar(rows["K"], rows[metric], yerr=rows.get(f"{metric}_sd"), marker="o", ms=3.5, capsize=2,
                        color=colours[m], label=m)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("latents K")
        ax.set_title(title, fontsize=9)
    axes[0][0].legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return fig
