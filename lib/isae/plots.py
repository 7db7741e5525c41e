"""Figures: metric bars with seed spread beside the paper's values, and training curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from .experiments import TABLE_METRICS
from .provenance import write_with_provenance

LABELS = {"mse": "MSE ↓", "r_s": "R_S ↓", "sae_iou": "SAE IoU ↑", "sae_l2": "SAE ℓ2 ↓", "oracle_iou": "Oracle IoU ↑",
          "oracle_l2": "Oracle ℓ2 ↓", "dcs": "DCS ↑"}


def metric_bars(table: pd.DataFrame, paper: pd.DataFrame | None = None,
                metrics: tuple[str, ...] = TABLE_METRICS) -> plt.Figure:
    """One panel per metric: bars (mean ± sd over seeds or seed pairs) per model, grouped by setting.

    Untrained (random-init) baselines are drawn hatched; the paper's values, where given, as black ticks.
    """
    settings = list(dict.fromkeys(table["setting"]))
    models = list(dict.fromkeys(table["model"]))
    palette = dict(zip([m for m in models if "untrained" not in m], sns.color_palette("colorblind")))
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.0 * len(metrics), 3.6), squeeze=False)
    width = 0.8 / len(models)
    for ax, metric in zip(axes[0], metrics):
        for i, model in enumerate(models):
            rows = table[table["model"] == model].set_index("setting").reindex(settings)
            xs = [j - 0.4 + width * (i + 0.5) for j in range(len(settings))]
            base = model.replace(" (untrained)", "")
            ax.bar(xs, rows[metric], width, yerr=rows.get(f"{metric}_sd"), capsize=2, label=model,
                   color=palette.get(base, "grey"), hatch="//" if "untrained" in model else None,
                   alpha=0.45 if "untrained" in model else 1.0, edgecolor="black", linewidth=0.3)
            if paper is not None and "untrained" not in model:
                ref = paper[paper["model"] == model].set_index("setting").reindex(settings)
                ax.scatter(xs, ref[metric], marker="_", s=120, color="black", zorder=3,
                           label="paper" if i == 0 else None)
        ax.set_xticks(range(len(settings)), settings)
        ax.set_title(LABELS.get(metric, metric))
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), frameon=False, fontsize=8)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    return fig


def training_curves(log: pd.DataFrame, metric: str = "mse") -> plt.Figure:
    """Logged ``metric`` against step, one line per run, one panel per setting (if the log has settings)."""
    log = log.assign(architecture=log["model"].str.split("/").str[0])
    col = "setting" if "setting" in log else None
    grid = sns.relplot(data=log, x="step", y=metric, hue="architecture", units="model", estimator=None,
                       kind="line", col=col, height=3.2, aspect=1.3, facet_kws={"sharey": False})
    grid.set(yscale="log")
    return grid.figure


def save_figure(fig: plt.Figure, path: str | Path, **params) -> Path:
    """Save a figure atomically (PNG) with a provenance JSON beside it."""
    path = write_with_provenance(path, lambda p: fig.savefig(p, dpi=150, bbox_inches="tight", format="png"), **params)
    return path
