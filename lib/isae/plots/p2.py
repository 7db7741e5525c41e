"""P2's figures: the toy model's (``plot_w_p`` … ``plot_training``) and the weighted SAE's on real activations
(``plot_weights`` … ``plot_frontier``). Every function returns the figure; saving is ``plots.common.save_figure``."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from isae.plots.common import palette
from isae.report.p2 import P2_AVERAGE_GAIN
from isae.toy.data import polysemanticity, wsae_weights
from isae.toy.model import ACTIVATION_NAMES, ACTIVATIONS


# ------------------------------------------------------------------------------------------------------
# The toy model
# ------------------------------------------------------------------------------------------------------
def plot_w_p(matrices: dict[str, torch.Tensor]):
    """|W_p| as a heat map and the polysemanticity (participation ratio) of every input dim, per W_p kind."""
    fig, axes = plt.subplots(2, len(matrices), figsize=(5.5 * len(matrices), 5.2), squeeze=False,
                             gridspec_kw={"height_ratios": [1.4, 1]})
    for j, (kind, w) in enumerate(matrices.items()):
        ax = axes[0][j]
        im = ax.imshow(w.abs().numpy(), aspect="auto", cmap="viridis")
        ax.set(title=f"|W_p| ({kind})", xlabel="true feature i", ylabel="input dim j")
        fig.colorbar(im, ax=ax, fraction=0.03)
        pr = polysemanticity(w).numpy()
        axes[1][j].bar(range(len(pr)), pr, color="grey")
        axes[1][j].set(xlabel="input dim j", ylabel="polysemanticity PR_j",
                       yscale="log" if pr.max() > 5 * pr.min() else "linear",
                       title="effective number of features per input dim")
    fig.tight_layout()
    return fig


def _by_sparsity(ax, table, metric, label, color, sparsities, style="-", marker="o", sd=True):
    sub = table.set_index("sparsity").reindex(sparsities)
    xs = np.arange(len(sparsities))
    err = sub.get(f"{metric}_sd") if sd else None
    ax.errorbar(xs, sub[metric], yerr=err, label=label, color=color, linestyle=style, marker=marker,
                markersize=4, capsize=2, linewidth=1.3)


def plot_sparsity_sweep(summary: pd.DataFrame, reference: pd.DataFrame | None = None):
    """Recovered fraction, matched |cos| and features per latent against S, one line per activation
    (mean ± sd over seeds); dashed: the ground-truth SAE with the same activation."""
    sparsities = sorted(summary["sparsity"].unique())
    acts = [a for a in ACTIVATIONS if a in set(summary["activation"])]
    colors = palette(acts)
    panels = [("recovered", "features recovered (|cos| > 0.9)", "linear"),
              ("matched_cos", "matched |cos| (atom vs true feature)", "linear"),
              ("features_per_latent", "features per latent (effective) ↓", "log"),
              ("isolated_features_per_latent", "features firing a latent in isolation ↓", "log")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8))
    plain = summary[(summary["l1_coef"] == 0) & (~summary["bias"])] if "l1_coef" in summary else summary
    for ax, (metric, title, scale) in zip(axes, panels):
        for a in acts:
            _by_sparsity(ax, plain[plain["activation"] == a], metric, ACTIVATION_NAMES[a], colors[a], sparsities)
            if reference is not None and metric in ("features_per_latent", "isolated_features_per_latent"):
                ref = reference[(reference["activation"] == a) & (reference["alpha"] == 0)]
                _by_sparsity(ax, ref, metric, f"{ACTIVATION_NAMES[a]}, ground-truth SAE", colors[a], sparsities,
                             style="--", marker="", sd=False)
        ax.set_xticks(range(len(sparsities)), [f"{s:g}" for s in sparsities], rotation=45)
        ax.set(xlabel="sparsity S", title=title, yscale=scale)
    handles, labels = axes[2].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, frameon=False, fontsize=8)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    return fig


def plot_activation_ablation(table: pd.DataFrame, reference: pd.DataFrame | None = None):
    """Bars per activation at one S: recovered, features per latent, relative SAE loss (trained vs ground truth)."""
    models = list(table["model"])
    xs = np.arange(len(models))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.9))
    for ax, metric, title, scale in [(axes[0], "recovered", "features recovered", "linear"),
                                     (axes[1], "features_per_latent", "features per latent (effective) ↓", "log"),
                                     (axes[2], "mse_rel", "relative SAE loss E‖x_p − x̂_p‖²/E‖x_p‖²", "log")]:
        ax.bar(xs, table[metric], yerr=table.get(f"{metric}_sd"), capsize=3, color="tab:blue", label="trained")
        if reference is not None and metric != "recovered":
            ref = reference.set_index("activation").reindex(table["activation"])[metric].to_numpy()
            ax.scatter(xs, ref, marker="_", s=250, color="black", zorder=3, label="ground-truth SAE")
        ax.set_xticks(xs, models, rotation=30, ha="right", fontsize=8)
        ax.set(title=title, yscale=scale)
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_hidden(table: pd.DataFrame, n_features: int):
    """Recovered fraction against n_m / n, with the bound min(1, n_m/n) that matching imposes."""
    ratio = table["n_latents"] / n_features
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    axes[0].errorbar(ratio, table["recovered"], yerr=table["recovered_sd"], marker="o", capsize=3, label="trained")
    grid = np.linspace(ratio.min(), ratio.max(), 100)
    axes[0].plot(grid, np.minimum(1, grid), "k--", linewidth=1, label="bound min(1, n_m/n)")
    axes[0].axvline(1.0, color="grey", linewidth=0.8)
    axes[0].set(xscale="log", xlabel="n_m / n", ylabel="features recovered", title="hidden-size ablation")
    axes[0].legend(fontsize=8)
    axes[1].errorbar(ratio, table["features_per_latent"], yerr=table["features_per_latent_sd"], marker="o", capsize=3)
    axes[1].axvline(1.0, color="grey", linewidth=0.8)
    axes[1].set(xscale="log", xlabel="n_m / n", ylabel="features per latent (effective)", title="monosemanticity")
    for ax in axes:
        ax.set_xticks(ratio, [f"{r:g}" for r in ratio])
        ax.minorticks_off()
    fig.tight_layout()
    return fig


def plot_weighted(summary: pd.DataFrame, gap_fixed: pd.DataFrame, w_p: torch.Tensor):
    """The WSAE experiment: the weights, the two losses and their gap against α, and recovery against α."""
    alphas = sorted(summary["alpha"].unique())
    sparsities = sorted(summary["sparsity"].unique())
    colors = palette([f"{s:g}" for s in sparsities])
    fig, axes = plt.subplots(1, 5, figsize=(22, 3.9))
    pr = polysemanticity(w_p).numpy()
    order = np.argsort(pr)
    for a in alphas:
        axes[0].plot(pr[order], wsae_weights(w_p, a).numpy()[order], marker="o", markersize=3, label=f"α={a:g}")
    axes[0].set(xscale="log", yscale="log", xlabel="polysemanticity PR_j of input dim j", ylabel="γ_j",
                title="weights γ_j = PR_j^(−α), mean γ² = 1")
    axes[0].legend(fontsize=8)
    for s in sparsities:
        sub = summary[np.isclose(summary["sparsity"], s)].sort_values("alpha")
        c = colors[f"{s:g}"]
        axes[1].errorbar(sub["alpha"], sub["loss_true"], yerr=sub["loss_true_sd"], marker="o", color=c, capsize=2,
                         label=f"loss_true, S={s:g}")
        axes[1].errorbar(sub["alpha"], sub["loss_sae"], yerr=sub["loss_sae_sd"], marker="s", color=c, capsize=2,
                         linestyle=":", label=f"loss_sae, S={s:g}")
        axes[2].errorbar(sub["alpha"], sub["gap"], yerr=sub["gap_sd"], marker="o", color=c, capsize=2, label=f"S={s:g}")
        axes[3].errorbar(sub["alpha"], sub["recovered"], yerr=sub["recovered_sd"], marker="o", color=c, capsize=2,
                         label=f"S={s:g}")
        fixed = gap_fixed[np.isclose(gap_fixed["sparsity"], s) & np.isclose(gap_fixed["trained_alpha"], 0.0)]
        g = fixed.groupby("eval_alpha")["gap"].agg(["mean", "std"]).reset_index()
        axes[4].errorbar(g["eval_alpha"], g["mean"], yerr=g["std"], marker="o", color=c, capsize=2, label=f"S={s:g}")
    axes[1].set(xlabel="α (training weights)", title="relative losses of the trained WSAE")
    axes[1].legend(fontsize=6, ncol=2)
    axes[2].set(xlabel="α (training weights)", title="gap = loss_true − loss_sae")
    axes[3].set(xlabel="α (training weights)", title="features recovered (|cos| > 0.9)")
    axes[4].set(xlabel="α of Γ used to *evaluate* loss_sae", title="gap of the α=0 SAEs under each Γ")
    for ax in axes[2:]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_training(log: pd.DataFrame, activation_col: str = "condition"):
    """Training loss against step (mean over seeds), one panel per condition label, one line per S."""
    conds = list(dict.fromkeys(log[activation_col]))
    fig, axes = plt.subplots(1, len(conds), figsize=(4 * len(conds), 3.3), squeeze=False)
    for ax, c in zip(axes[0], conds):
        sub = log[log[activation_col] == c]
        for s, g in sub.groupby("sparsity"):
            m = g.groupby("step")["mse"].mean()
            ax.plot(m.index, m.values, label=f"S={s:g}", linewidth=1)
        ax.set(yscale="log", xlabel="step", title=c, ylabel="E‖x_p − x̂_p‖² (batch)")
    axes[0][-1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------------------
# The weighted SAE on real activations
# ------------------------------------------------------------------------------------------------------
def plot_weights(weights: dict[str, dict[float, torch.Tensor]]) -> plt.Figure:
    """Sorted γ of every setting (one panel each), one line per α > 0 (α = 0 is the flat line at 1)."""
    fig, axes = plt.subplots(1, len(weights), figsize=(3.2 * len(weights), 3.0), squeeze=False, sharey=True)
    for ax, (setting, by_alpha) in zip(axes[0], weights.items()):
        for alpha, g in by_alpha.items():
            v = np.sort(g.numpy())[::-1]
            ax.plot(np.arange(1, len(v) + 1) / len(v), v, label=f"α={alpha:g}", linestyle="--" if alpha == 0 else "-")
        ax.set(yscale="log", xlabel="dimension (sorted, fraction)", title=setting)
    axes[0][0].set_ylabel("γ (mean γ² = 1)")
    axes[0][-1].legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return fig


def plot_by_setting(table: pd.DataFrame, measures: tuple[str, ...], settings: list[str],
                    chance: dict[str, float] | None = None, reference: dict[str, float] | None = None,
                    xlabel: str = "layer") -> plt.Figure:
    """One panel per measure: mean ± sd over seeds against setting (e.g. layer), one line per α.

    ``chance`` (per measure: one value or a dict setting → value) is drawn dotted grey; ``reference`` (the raw
    input dims, same form) dashed black.
    """
    sub = table[table["setting"].isin(settings)]
    if "variant" in sub:
        sub = sub[sub["variant"].str.startswith("alpha=")]  # the uniform controls at smaller k are not drawn here
    alphas = sorted(sub["alpha"].unique())
    colors = palette(alphas)
    xs = np.arange(len(settings))
    ticks = [s.split("layer")[-1] if "layer" in s else s for s in settings]
    fig, axes = plt.subplots(1, len(measures), figsize=(3.4 * len(measures), 3.2), squeeze=False)
    for ax, m in zip(axes[0], measures):
        for j, a in enumerate(alphas):
            rows = sub[sub["alpha"] == a].set_index("setting").reindex(settings)
            ax.errorbar(xs + (j - (len(alphas) - 1) / 2) * 0.08, rows[m], yerr=rows.get(f"{m}_sd"), marker="o",
                        capsize=2, color=colors[a], label=f"α={a:g}" + (" (uniform)" if a == 0 else ""))
        for ref, style, label in ((chance, ":", "chance"), (reference, "--", "input dims")):
            if ref is not None and m in ref:
                v = ref[m]
                ys = [v.get(s, np.nan) for s in settings] if isinstance(v, dict) else [v] * len(settings)
                color = "grey" if style == ":" else "black"
                if len(settings) == 1:  # one x position: a line across the panel
                    ax.axhline(ys[0], linestyle=style, color=color, linewidth=1, label=label)
                else:
                    ax.plot(xs, ys, style, color=color, linewidth=1, label=label)
        ax.set_xticks(xs, ticks)
        ax.set(xlabel=xlabel, title=m)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False, fontsize=8)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return fig


def plot_gains(gains: pd.DataFrame, measure: str, settings: list[str], reference_pct: float | None = P2_AVERAGE_GAIN
               ) -> plt.Figure:
    """Relative change (%) of ``measure``, weighted vs uniform, per setting and α, with the per-seed spread
    (sd of the paired differences, relative to the uniform mean); P2's average gain as a dashed line."""
    sub = gains[(gains["measure"] == measure) & gains["setting"].isin(settings)]
    alphas = sorted(sub["alpha"].unique())
    colors = palette([0.0] + alphas)
    xs = np.arange(len(settings))
    width = 0.8 / max(1, len(alphas))
    fig, ax = plt.subplots(figsize=(1.1 * len(settings) + 2.5, 3.2))
    for j, a in enumerate(alphas):
        rows = sub[sub["alpha"] == a].set_index("setting").reindex(settings)
        ax.bar(xs - 0.4 + width * (j + 0.5), rows["gain_pct"], width, yerr=100 * rows["diff_sd"] / rows["uniform"],
               capsize=2, color=colors[a], label=f"α={a:g}", edgecolor="black", linewidth=0.3)
    ax.axhline(0, color="black", linewidth=0.8)
    if reference_pct is not None:
        ax.axhline(reference_pct, color="black", linestyle="--", linewidth=1,
                   label=f"P2: +{reference_pct}% (auto-interp., Pythia avg.)")
    ax.set_xticks(xs, [s.split("layer")[-1] if "layer" in s else s for s in settings])
    ax.set(ylabel=f"{measure}: weighted vs uniform (%)", xlabel="setting / layer")
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return fig


def plot_latent_distributions(latents: pd.DataFrame, measure: str, settings: list[str], seed: int = 0,
                              bins: int = 20) -> plt.Figure:
    """Histogram of ``measure`` over the live latents of one seed, one panel per setting, one line per α."""
    sub = latents[latents["live"] & latents["setting"].isin(settings) & (latents["seed"] == seed)]
    if "control" in sub:
        sub = sub[~sub["control"].astype(bool)]
    alphas = sorted(sub["alpha"].unique())
    colors = palette(alphas)
    fig, axes = plt.subplots(1, len(settings), figsize=(3.0 * len(settings), 2.8), squeeze=False, sharey=True)
    lo, hi = float(sub[measure].min()), float(sub[measure].max())
    edges = np.linspace(lo, hi if hi > lo else lo + 1, bins + 1)
    for ax, setting in zip(axes[0], settings):
        for a in alphas:
            v = sub[(sub["setting"] == setting) & (sub["alpha"] == a)][measure]
            ax.hist(v, bins=edges, density=True, histtype="step", linewidth=1.5, color=colors[a],
                    label=f"α={a:g} (mean {v.mean():.3f})")
        ax.set(title=setting, xlabel=measure)
        ax.legend(frameon=False, fontsize=7)
    axes[0][0].set_ylabel(f"density over live latents (seed {seed})")
    fig.tight_layout()
    return fig


def plot_frontier(runs: pd.DataFrame, measure: str, settings: list[str]) -> plt.Figure:
    """``measure`` against unweighted MSE, one panel per setting: the uniform SAEs of each seed (α = 0 at the
    setting's k and the sparser controls, labelled by k) as a grey line, the weighted SAEs as coloured points."""
    fig, axes = plt.subplots(1, len(settings), figsize=(3.3 * len(settings), 3.2), squeeze=False)
    alphas = sorted(a for a in runs["alpha"].unique() if a > 0)
    colors = palette([0.0] + alphas)
    markers = ["o", "s", "^", "D", "v"]
    for ax, setting in zip(axes[0], settings):
        sub = runs[runs["setting"] == setting]
        for j, (_, g) in enumerate(sub.groupby("seed")):
            u = g[g["alpha"] == 0].sort_values("mse")
            ax.plot(u["mse"], u[measure], color="grey", marker=markers[j % 5], markersize=4, linewidth=1,
                    label="uniform (k varies)" if j == 0 else None)
            if j == 0:
                for _, r in u.iterrows():
                    ax.annotate(f"k={int(r['k'])}", (r["mse"], r[measure]), fontsize=6, xytext=(2, 2),
                                textcoords="offset points")
            for a in alphas:
                w = g[g["alpha"] == a]
                ax.scatter(w["mse"], w[measure], color=colors[a], marker=markers[j % 5], s=30, zorder=3,
                           label=f"α={a:g}" if j == 0 else None)
        ax.set(xlabel="MSE (unweighted)", title=setting)
    axes[0][0].set_ylabel(measure)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False, fontsize=8)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return fig
