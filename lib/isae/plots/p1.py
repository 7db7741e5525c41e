"""Figures: metric bars with seed spread beside the paper's values, and training curves."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from isae.pipeline import TABLE_METRICS
from isae.plots.common import palette, save_figure

# save_figure is re-exported: notebook 05 calls it from this module.
__all__ = ["LABELS", "activation_sanity", "matched_cos_distributions", "metric_bars",
           "recipe_ablation", "rip_constants", "save_figure", "scale_sweep", "tradeoff_scatter",
           "training_curves"]

LABELS = {"mse": "MSE ↓", "r_s": "R_S ↓", "sae_iou": "SAE IoU ↑", "sae_l2": "SAE ℓ2 ↓",
          "oracle_iou": "Oracle IoU ↑", "oracle_l2": "Oracle ℓ2 ↓", "dcs": "DCS ↑"}


def metric_bars(table: pd.DataFrame, paper: pd.DataFrame | None = None,
                metrics: tuple[str, ...] = TABLE_METRICS) -> plt.Figure:
    """One panel per metric: bars (mean ± sd over seeds or seed pairs) per model, grouped by setting.

    Untrained (random-init) baselines (``trained`` False) are drawn hatched in their architecture's colour; the
    paper's values, where given, as black ticks.
    """
    settings = list(dict.fromkeys(table["setting"]))
    models = list(dict.fromkeys(table["model"]))
    first = table.drop_duplicates("model").set_index("model")
    trained = first["trained"].astype(bool) if "trained" in first else pd.Series(True, index=first.index)
    variant = first["variant"] if "variant" in first else pd.Series(first.index, index=first.index)
    palette = dict(zip([variant[m] for m in models if trained[m]], sns.color_palette("colorblind")))
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.0 * len(metrics), 3.6), squeeze=False)
    width = 0.8 / len(models)
    for ax, metric in zip(axes[0], metrics):
        for i, model in enumerate(models):
            rows = table[table["model"] == model].set_index("setting").reindex(settings)
            xs = [j - 0.4 + width * (i + 0.5) for j in range(len(settings))]
            ax.bar(xs, rows[metric], width, yerr=rows.get(f"{metric}_sd"), capsize=2, label=model,
                   color=palette.get(variant[model], "grey"), hatch=None if trained[model] else "//",
                   alpha=1.0 if trained[model] else 0.45, edgecolor="black", linewidth=0.3)
            if paper is not None and trained[model]:
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
    log = log.assign(architecture=log["variant"])
    col = "setting" if "setting" in log else None
    grid = sns.relplot(data=log, x="step", y=metric, hue="architecture", units="model", estimator=None,
                       kind="line", col=col, height=3.2, aspect=1.3, facet_kws={"sharey": False})
    grid.set(yscale="log")
    return grid.figure


def convergence_curves(curve: pd.DataFrame, floor: pd.DataFrame | None = None,
                       metrics: tuple[str, ...] = ("dcs", "sae_iou", "oracle_iou", "mse", "dead_frac")) -> plt.Figure:
    """Each ``metric`` of a convergence curve (``ExperimentResult.curve``) against activations seen, one line per
    model (mean over seeds or seed pairs, band: ±1 sd), one row of panels per setting. ``floor`` (a ``summarise``
    table) adds each setting's random-init TopK pair as a dashed line on the pair metrics."""
    from isae.report.p1 import CURVE_METRICS

    settings = list(dict.fromkeys(curve["setting"]))
    fig, axes = plt.subplots(len(settings), len(metrics), figsize=(3.1 * len(metrics), 2.7 * len(settings)),
                             squeeze=False)
    for i, setting in enumerate(settings):
        g = curve[curve["setting"] == setting]
        for j, metric in enumerate(metrics):
            ax = axes[i, j]
            h = g[g["level"] == CURVE_METRICS[metric]]
            for model, m in h.groupby("model", sort=False):
                stats = m.groupby("tokens")[metric].agg(["mean", "std"]).fillna(0.0)
                ax.plot(stats.index, stats["mean"], marker="o", ms=3, label=model)
                ax.fill_between(stats.index, stats["mean"] - stats["std"], stats["mean"] + stats["std"], alpha=0.2)
            if floor is not None and CURVE_METRICS[metric] == "pair" and metric in floor:
                base = floor[(floor["setting"] == setting) & ~floor["trained"].astype(bool)
                             & (floor["variant"] == "topk")]
                if len(base):
                    ax.axhline(float(base[metric].iloc[0]), color="grey", ls="--", lw=1, label="random init")
            ax.set(title=f"{setting}: {metric}" if len(settings) > 1 else metric, xlabel="activations seen")
            if metric == "mse":
                ax.set_yscale("log")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    return fig


# --- P1 on real activations: matched-cosine distributions and the reconstruction/stability trade-off ----------

def matched_cos_distributions(frame: pd.DataFrame, bins: int = 40) -> plt.Figure:
    """Histogram (density, step lines) of matched |cos| per model, one panel per setting.

    Random-init pairs (``trained`` False) are drawn dashed in grey: the floor a trained dictionary has to beat.
    Each legend entry gives the mean (= DCS).
    """
    settings = list(dict.fromkeys(frame["setting"]))
    models = list(dict.fromkeys(frame.loc[frame["trained"].astype(bool), "model"]))
    palette = dict(zip(models, sns.color_palette("colorblind")))
    fig, axes = plt.subplots(1, len(settings), figsize=(5.0 * len(settings), 3.6), squeeze=False)
    edges = [i / bins for i in range(bins + 1)]
    for ax, setting in zip(axes[0], settings):
        sub = frame[frame["setting"] == setting]
        for model, rows in sub.groupby("model", sort=False):
            untrained = not rows["trained"].astype(bool).iloc[0]
            ax.hist(rows["abs_cos"], bins=edges, density=True, histtype="step", linewidth=1.6,
                    linestyle="--" if untrained else "-",
                    color="grey" if untrained else palette.get(model),
                    label=f"{model} (mean {rows['abs_cos'].mean():.3f})")
        ax.set(xlim=(0, 1), xlabel="|cos| of matched atoms (seed 0 vs seed 1)", ylabel="density", title=setting)
        ax.legend(fontsize=7, frameon=False, loc="upper left")
    fig.tight_layout()
    return fig


def tradeoff_scatter(table: pd.DataFrame, paper: pd.DataFrame | None = None,
                     stability: tuple[str, ...] = ("dcs", "sae_iou")) -> plt.Figure:
    """Reconstruction (MSE, x) against stability (y), one panel per stability metric.

    Filled markers: our means with ± sd bars (seeds for MSE, seed pairs for stability); colour = model,
    marker = setting. Untrained baselines (``trained`` False) are left out. With ``paper`` (same setting names
    as ``table``), the paper's values are drawn as hollow markers of the same colour and shape.
    """
    ours = table[table["trained"].astype(bool)]
    settings = list(dict.fromkeys(ours["setting"]))
    models = list(dict.fromkeys(ours["model"]))
    palette = dict(zip(models, sns.color_palette("colorblind")))
    markers = dict(zip(settings, ["o", "s", "^", "D", "v"]))
    fig, axes = plt.subplots(1, len(stability), figsize=(4.6 * len(stability), 3.8), squeeze=False)
    for ax, metric in zip(axes[0], stability):
        for _, r in ours.iterrows():
            ax.errorbar(r["mse"], r[metric], xerr=r.get("mse_sd"), yerr=r.get(f"{metric}_sd"),
                        marker=markers[r["setting"]], color=palette[r["model"]], linestyle="none", capsize=2,
                        markersize=7)
        if paper is not None:
            ref = paper[paper["setting"].isin(settings) & paper["model"].isin(models)]
            for _, r in ref.iterrows():
                ax.scatter(r["mse"], r[metric], marker=markers[r["setting"]], facecolors="none",
                           edgecolors=palette[r["model"]], s=50, linewidths=1.4)
        ax.set(xlabel=LABELS["mse"], ylabel=LABELS.get(metric, metric), title=f"{LABELS.get(metric, metric)} vs MSE")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=palette[m], marker="o", linestyle="none", label=m) for m in models]
    handles += [Line2D([], [], color="black", marker=markers[s], linestyle="none", label=s) for s in settings]
    if paper is not None:
        handles.append(Line2D([], [], color="black", marker="o", markerfacecolor="none", linestyle="none",
                              label="paper (hollow)"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 7), frameon=False, fontsize=8)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return fig


# --- activation caches (notebook 02) ---------------------------------------------------------------------------

def activation_sanity(caches: dict, names: tuple[str, ...] = ("lm_train", "vision_train"),
                      max_rows: int = 20_000) -> plt.Figure:
    """Two panels for the first ``max_rows`` rows of each cache in ``names``: the density of activation norms,
    and the share of variance per dimension (sorted, on a log scale)."""
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
    for name in names:
        x = caches[name].rows(0, min(len(caches[name]), max_rows)).astype(np.float32)
        axes[0].hist(np.linalg.norm(x, axis=1), bins=60, alpha=0.6, label=name, density=True)
        var = np.sort(x.var(0))[::-1]
        axes[1].plot(np.arange(1, len(var) + 1) / len(var), var / var.sum(), label=name)
    axes[0].set(xlabel="‖x‖", ylabel="density", title="activation norms")
    axes[0].legend()
    axes[1].set(xlabel="dimension (fraction, sorted)", ylabel="share of variance", yscale="log",
                title="per-dimension variance")
    axes[1].legend()
    fig.tight_layout()
    return fig


def recipe_ablation(table: pd.DataFrame, metrics: tuple[str, ...] = ("sae_iou", "oracle_iou", "dcs", "mse")
                    ) -> plt.Figure:
    """The recipe ablation (``p1_recipe.summarise_ablation``): one row of panels per (setting, model), one panel
    per metric; per switched element, its change from the base recipe (mean over seeds, error bar: the
    variant's sd), "paper + element from authors" and "authors + element from paper" side by side."""
    groups = list(dict.fromkeys(zip(table["setting"], table["model"])))
    elements = [e for e in dict.fromkeys(table["element"]) if e != "—"]
    fig, axes = plt.subplots(len(groups), len(metrics), figsize=(3.1 * len(metrics), 0.32 * len(elements) * len(groups)
                                                                 + 1.2 * len(groups)), squeeze=False, sharey=True)
    colours = {"paper": sns.color_palette("colorblind")[0], "authors": sns.color_palette("colorblind")[1]}
    for (setting, model), row in zip(groups, axes):
        sub = table[(table["setting"] == setting) & (table["model"] == model) & (table["element"] != "—")]
        for ax, metric in zip(row, metrics):
            for offset, base in ((-0.18, "paper"), (0.18, "authors")):
                rows = sub[sub["base"] == base].set_index("element").reindex(elements)
                ax.errorbar(rows[f"d_{metric}"], [i + offset for i in range(len(elements))], xerr=rows[f"{metric}_sd"],
                            fmt="o", ms=3.5, capsize=2, color=colours[base],
                            label=f"{base} + element from {'authors' if base == 'paper' else 'paper'}")
            ax.axvline(0, color="black", lw=0.6)
            ax.set_yticks(range(len(elements)), elements, fontsize=7)
            ax.set_title(f"{setting} · {model}: Δ {LABELS.get(metric, metric)}", fontsize=8)
            ax.tick_params(axis="x", labelsize=7)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, frameon=False, fontsize=8)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig


def scale_sweep(table: pd.DataFrame, metrics: tuple[str, ...] = ("sae_iou", "oracle_iou", "dcs", "mse"),
                headline: dict | None = None, goal: dict | None = None) -> plt.Figure:
    """The scale sweep (``p1_scale.summarise_scale``): one panel per metric, the metric (mean ± sd) against
    training steps, one line per (model, N); P1's headline value as a dotted line, the goal as a dashed one."""
    table = table.assign(line=[f"{m} · N={n}, K={a}, k={k}" for m, n, a, k in
                               zip(table["model"], table["d_in"], table["n_atoms"], table["k"])])
    lines = list(dict.fromkeys(table["line"]))
    colours = dict(zip(lines, sns.color_palette("viridis", len(lines))))
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.3 * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for line in lines:
            rows = table[table["line"] == line].sort_values("n_steps")
            ax.errorbar(rows["n_steps"], rows[metric], yerr=rows.get(f"{metric}_sd"), marker="o", ms=3.5,
                        capsize=2, color=colours[line], label=line)
        for values, style, what in ((headline or {}, ":", "P1 (iSAE-ME, i.i.d.)"), (goal or {}, "--", "goal")):
            if metric in values:
                ax.axhline(values[metric], color="black", ls=style, lw=0.8, label=what)
        ax.set_xscale("log")
        steps = sorted(set(table["n_steps"]))
        ax.set_xticks(steps, [f"{t / 1000:g}K" if t >= 1000 else str(t) for t in steps], fontsize=7)
        ax.minorticks_off()
        ax.set_xlabel("training steps")
        ax.set_title(LABELS.get(metric, metric), fontsize=9)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), frameon=False, fontsize=7)
    fig.tight_layout(rect=(0, 0.06 + 0.03 * (len(labels) // 4), 1, 1))
    return fig


def encoder_gap(table: pd.DataFrame, setting: str = "iid", paper: dict[str, float] | None = None) -> plt.Figure:
    """P1's mechanism across the sweep (``p1_scale.summarise_scale``, each N's longest run): left, each model's SAE
    IoU (solid) and oracle IoU (dashed) against N; right, the encoder gap oracle − SAE IoU against N (mean ± sd
    over seed pairs). ``paper``: P1's gap per model at N = 768, drawn as a marker."""
    sub = table[table["setting"] == setting]
    sub = sub[sub.groupby(["recipe", "model", "d_in"])["n_steps"].transform("max") == sub["n_steps"]]
    models = list(dict.fromkeys(sub["model"]))
    colours = palette(models)
    fig, (left, right) = plt.subplots(1, 2, figsize=(8.4, 3.4))
    for model in models:
        rows = sub[sub["model"] == model].sort_values("d_in")
        c = colours[model]
        left.errorbar(rows["d_in"], rows["sae_iou"], yerr=rows["sae_iou_sd"], marker="o", ms=3.5, capsize=2, color=c,
                      label=f"{model} SAE")
        left.errorbar(rows["d_in"], rows["oracle_iou"], yerr=rows["oracle_iou_sd"], marker="s", ms=3, capsize=2,
                      color=c, ls="--", label=f"{model} oracle")
        right.errorbar(rows["d_in"], rows["encoder_gap"], yerr=rows["encoder_gap_sd"], marker="o", ms=3.5,
                       capsize=2, color=c, label=model)
        if paper and model in paper:
            right.plot([768], [paper[model]], marker="*", ms=9, color=c, ls="none", label=f"{model}, P1 (N=768)")
    sizes = sorted(set(sub["d_in"]) | ({768} if paper else set()))
    for ax, title in ((left, "code IoU between seeds"), (right, "encoder gap: oracle − SAE IoU")):
        ax.set_xscale("log")
        ax.set_xticks(sizes, [str(n) for n in sizes], fontsize=8)
        ax.minorticks_off()
        ax.set_xlabel("N (K = M = 5.33 N, k = 0.052 N)")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7, frameon=False)
    right.axhline(0.0, color="black", lw=0.6)
    fig.tight_layout()
    return fig


def synthbench_recovery(by_rate: pd.DataFrame, by_depth: pd.DataFrame, summary: pd.DataFrame) -> plt.Figure:
    """Notebook 10: which true features each model recovers (``p1_synthbench.recovery_by``), by firing rate and by
    depth in the hierarchy (solid: recovered by a seed on average; dashed: by every seed), and each model's SAELens
    MCC against its FVU (mean ± sd over seeds; the random-init floor hollow)."""
    models = list(dict.fromkeys(by_rate["model"]))
    colours = palette(models)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, table, title in ((axes[0], by_rate, "by firing rate (held-out rows)"),
                             (axes[1], by_depth, "by depth in the hierarchy (−1: outside)")):
        groups = [str(g) for g in dict.fromkeys(table["group"])]
        for model in models:
            rows = table[table["model"] == model]
            x = [groups.index(str(g)) for g in rows["group"]]
            ax.plot(x, rows["recovered"], marker="o", ms=3.5, color=colours[model], label=model)
            ax.plot(x, rows["every_seed"], ls="--", lw=0.9, color=colours[model])
        ax.set_xticks(range(len(groups)), groups, fontsize=7, rotation=30 if table is by_rate else 0)
        ax.set_ylim(-0.03, 1.03)
        ax.set_ylabel("share of true features recovered")
        ax.set_title(title, fontsize=9)
    axes[0].legend(fontsize=7, frameon=False)
    ax = axes[2]
    for _, r in summary.iterrows():
        base = r["model"].replace(" (untrained)", "")
        ax.errorbar(r["mse_fvu"], r["mcc"], xerr=r.get("mse_fvu_sd"), yerr=r.get("mcc_sd"), marker="o", ms=5,
                    color=colours.get(base, "grey"), mfc="none" if not r["trained"] else colours.get(base, "grey"),
                    capsize=2, ls="none")
    ax.set_xscale("log")
    ax.set_xlabel("FVU (held-out rows)")
    ax.set_ylabel("SAELens MCC")
    ax.set_title("recovery against reconstruction (hollow: random init)", fontsize=9)
    fig.tight_layout()
    return fig


def rip_constants(deltas: pd.DataFrame) -> plt.Figure:
    """δ_S on the data's supports (``p1_theory.delta_table``): one panel per (setting, kind of support), one row per
    dictionary; the dot is the median, the thick bar q50–q90, the thin bar up to q99; aRIP needs δ_S < 1 (line)."""
    panels = list(dict.fromkeys(zip(deltas["setting"], deltas["kind"])))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 0.5 * deltas.groupby(
        ["setting", "kind"]).size().max() + 1.4), squeeze=False)
    colours = {"learned": sns.color_palette("colorblind")[0], "random": "grey",
               "ground truth": sns.color_palette("colorblind")[2]}
    for ax, (setting, kind) in zip(axes[0], panels):
        rows = deltas[(deltas["setting"] == setting) & (deltas["kind"] == kind)].reset_index(drop=True)
        labels = [m if d == "learned" else d for m, d in zip(rows["model"], rows["dictionary"])]
        for i, r in rows.iterrows():
            c = colours.get(r["dictionary"], "black")
            ax.plot([r["q50"], r["q99"]], [i, i], color=c, lw=1)
            ax.plot([r["q50"], r["q90"]], [i, i], color=c, lw=4, alpha=0.6)
            ax.plot(r["q50"], i, "o", color=c, ms=4)
        ax.axvline(1.0, color="black", ls="--", lw=0.8)
        ax.set_yticks(range(len(rows)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("δ_S = max |λ(G_S) − 1|", fontsize=8)
        ax.set_title(f"{setting} · {kind} supports", fontsize=9)
    fig.tight_layout()
    return fig
