"""Where P1's headline appears: identifiability as the synthetic problem grows at P1's ratios, and with steps.

P1's synthetic sizes are N = 768, M = K = 4096, k = 40 (k/N ≈ 0.052, M/N ≈ 5.33). ``p1_ratio_sizes`` scales N and
keeps both ratios. Every point of the sweep is trained and evaluated exactly as notebook 01's Table 1
(``pipeline.model_unit``), so its numbers stand beside the headline. Training steps are a separate
axis: each step count is its own run, because the authors' learning rate decays over the last 20% of the steps,
so an early checkpoint of a long run is not a short run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import pandas as pd

from isae import pipeline
from isae.experiments import p1_synthetic
from isae.experiments.executor import Context, Experiment, Unit
from isae.experiments.profiles import SyntheticProfile
from isae.report import claims
from isae.report.claims import AllOf, AnyOf, Claim, Compare
from isae.report.p1 import METRIC_LABELS, getters, paper_table
from isae.report.summary import mean_sd
from isae.train.recipe import recipe as get_recipe

P1_D_IN, P1_N_ATOMS, P1_K = 768, 4096, 40
"""P1's synthetic sizes N, M = K and k (Table 1)."""
SCALE_METRICS = ("sae_iou", "oracle_iou", "encoder_gap", "dcs", "mse", "gt_recovered")
"""``encoder_gap``: oracle IoU − SAE IoU of each seed pair, how far the encoder falls below OMP on its own
dictionary (P1's mechanism: AbsTopK 0.914 − 0.487 = 0.427 at N = 768, iSAE-ME 0.997 − 0.997 = 0)."""
#: The goal this project set itself at ``default`` (P1's own headline: ``headline()``).
GOAL = {"sae_iou": 0.95, "dcs": 0.97}


def headline(model: str = "iSAE-ME", setting: str = "iid") -> dict[str, float]:
    """P1's Table 1 numbers for ``model`` on ``setting`` (``data/paper/p1_tables.csv``) for the metrics of
    ``GOAL``."""
    t = paper_table(1)
    row = t[(t["setting"] == setting) & (t["model"] == model)].iloc[0]
    return {m: float(row[m]) for m in GOAL}


def p1_ratio_sizes(d_in: int) -> dict[str, int]:
    """Sizes at P1's ratios for input dimension ``d_in``: M = K = round(N · 4096/768), k = max(1, round(N · 40/768))."""
    if isinstance(d_in, bool) or not isinstance(d_in, int) or d_in < 2:
        raise ValueError(f"scale point d_in={d_in!r} must be an integer ≥ 2.")
    n_atoms = round(d_in * P1_N_ATOMS / P1_D_IN)
    return {"d_in": d_in, "n_atoms": n_atoms, "d_sae": n_atoms, "k": max(1, round(d_in * P1_K / P1_D_IN))}


@dataclass(frozen=True)
class ScalePoint:
    """One point of the sweep: input dimension N (M, K and k follow at P1's ratios) and training steps."""

    d_in: int
    n_steps: int

    def __post_init__(self):
        p1_ratio_sizes(self.d_in)
        if isinstance(self.n_steps, bool) or not isinstance(self.n_steps, int) or self.n_steps < 1:
            raise ValueError(f"scale point n_steps={self.n_steps!r} must be an integer ≥ 1.")

    @property
    def slug(self) -> str:
        return f"N{self.d_in}_T{self.n_steps}"

    def profile(self, base: SyntheticProfile) -> SyntheticProfile:
        """``base`` (batch, seeds, evaluation size, settings, models) at this point's sizes and steps."""
        return replace(base, **p1_ratio_sizes(self.d_in), n_steps=self.n_steps,
                       checkpoint_every=min(base.checkpoint_every, self.n_steps))


def scale_points(points) -> list[ScalePoint]:
    """``ScalePoint``s from (d_in, n_steps) pairs, e.g. a notebook parameter ``[[32, 3000], [64, 3000]]``."""
    try:
        out = [ScalePoint(*pair) for pair in points]
    except TypeError as err:
        raise ValueError(f"scale points={points!r}: pass a list of [d_in, n_steps] pairs ({err}).") from None
    if not out or len(set(out)) != len(out):
        raise ValueError(f"scale points={points!r}: pass a non-empty list of distinct [d_in, n_steps] pairs.")
    return out


def sizes_table(points: list[ScalePoint]) -> pd.DataFrame:
    """The sizes every point trains at, with the cost proxy steps × K (the sweep's rows, before any compute)."""
    rows = [{**p1_ratio_sizes(pt.d_in), "n_steps": pt.n_steps} for pt in points]
    return pd.DataFrame(rows).assign(k_over_n=lambda t: t["k"] / t["d_in"], m_over_n=lambda t: t["n_atoms"] / t["d_in"])


class P1Scale(Experiment):
    """Notebook 07: ``base``'s models on each setting and data seed at every point under each of ``recipes`` (names
    ``isae.train.recipe.recipe`` accepts, e.g. "authors+lr"). A unit is one model at one (recipe, point, setting,
    data seed), trained and evaluated as in Table 1 (``pipeline.model_unit``, no random-init floor) under
    ``scale/<recipe>/<slug>/``. The result is (runs, pairs) with the point's sizes, ``recipe`` and ``wall_s`` (the
    unit's training and evaluation) as columns."""

    name = "p1_scale"

    def __init__(self, base: SyntheticProfile, points: list[ScalePoint], recipes: tuple[str, ...] = ("authors",)):
        for r in recipes:
            get_recipe(r)  # an unknown recipe fails here, before any training
        if not recipes or len(set(recipes)) != len(recipes):
            raise ValueError(f"recipes={recipes!r}: pass a non-empty list of distinct recipe names.")
        self.base, self.points, self.recipes = base, list(points), tuple(recipes)

    def identity(self) -> dict:
        return {"sizes": self.base.to_dict(), "points": [[pt.d_in, pt.n_steps] for pt in self.points],
                "recipes": list(self.recipes)}

    def units(self) -> list[Unit]:
        b = self.base
        return [Unit(f"{r}-{pt.slug}-{p1_synthetic.run_name(s, d)}-{a}", (r, i, s, d, a),
                     pipeline.STEP_COST.get(a, 1.0) * pt.n_steps * b.n_seeds * b.batch_size
                     * p1_ratio_sizes(pt.d_in)["d_sae"] * pt.d_in)
                for r in self.recipes for i, pt in enumerate(self.points) for s in b.settings for d in b.data_seeds()
                for a in b.models]

    def run_unit(self, unit: Unit, ctx: Context) -> dict:
        recipe, i, setting, d, arch = unit.key
        pt = self.points[i]
        p = replace(pt.profile(self.base), data_seed=d)
        si = p1_synthetic.setting_inputs(setting, p, get_recipe(recipe), device=str(ctx.device))
        ctx.log(f"{ctx.label}{recipe}, N={pt.d_in}, {pt.n_steps} steps: training {arch} × {p.n_seeds} seeds on "
                f"{si.run_name}")
        t0 = time.perf_counter()
        tables = p1_synthetic.synthetic_unit(si, p, arch, ctx.out / "scale" / recipe / pt.slug, ctx,
                                             progress=ctx.progress, baseline=False)
        cols = {**p1_ratio_sizes(pt.d_in), "n_steps": pt.n_steps, "recipe": recipe,
                "wall_s": time.perf_counter() - t0}
        return {name: tables[name].assign(**cols) for name in ("runs", "pairs")}

    def merge(self, results: list[dict], ctx: Context) -> tuple[pd.DataFrame, pd.DataFrame]:
        return tuple(pd.concat([r[name] for r in results], ignore_index=True) for name in ("runs", "pairs"))


def summarise_scale(runs: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
    """One row per (recipe, setting, model, point): mean and sd of ``SCALE_METRICS`` in the authors' readings (as
    the headline table), the counts and the point's wall time; rows by setting, model, N, steps."""
    keys = ["recipe", "setting", "model", "d_in", "n_atoms", "k", "n_steps"]
    if {"oracle_iou", "sae_iou"} <= set(pairs):
        pairs = pairs.assign(encoder_gap=pairs["oracle_iou"] - pairs["sae_iou"])
    run_metrics = [m for m in pipeline.RUN_METRICS if m in runs]
    pair_metrics = [m for m in (*pipeline.PAIR_METRICS, "encoder_gap") if m in pairs]
    table = mean_sd(runs, keys, run_metrics, count="n_seeds").merge(
        mean_sd(pairs, keys, pair_metrics, count="n_pairs"), on=keys, how="outer")
    table = pipeline.with_protocol(table, "authors")
    wall = runs.groupby(keys)["wall_s"].first().rename("wall_s").reset_index()
    table = table.merge(wall, on=keys, how="left").sort_values(["recipe", "setting", "model", "d_in", "n_steps"])
    cols = keys + [c for m in SCALE_METRICS if m in table for c in (m, f"{m}_sd")] + ["n_seeds", "n_pairs", "wall_s"]
    return table[cols].reset_index(drop=True)


def smallest_scale(table: pd.DataFrame, model: str = "iSAE-ME", setting: str = "iid",
                   goal: dict[str, float] = GOAL) -> pd.DataFrame:
    """The rows of ``summarise_scale``'s table for ``model`` on ``setting`` that reach every threshold of ``goal``
    (mean ≥ threshold), smallest N first, then fewest steps: the first row is the smallest scale where the
    headline appears; empty when no point reaches it."""
    rows = table[(table["model"] == model) & (table["setting"] == setting)]
    for metric, threshold in goal.items():
        rows = rows[rows[metric] >= threshold]
    return rows.sort_values(["d_in", "n_steps"]).reset_index(drop=True)


def still_rising(table: pd.DataFrame, model: str = "iSAE-ME", setting: str = "iid", metric: str = "sae_iou",
                 spread: float = 2.0) -> list[int]:
    """The N of ``model`` on ``setting`` whose ``metric`` rose between its last two step counts by more than
    ``spread`` times the larger seed sd of the two (our rule for "has not converged"); Ns with one step count
    are not judged."""
    rows = table[(table["model"] == model) & (table["setting"] == setting)]
    out = []
    for d_in, sub in rows.groupby("d_in"):
        sub = sub.sort_values("n_steps")
        if len(sub) < 2:
            continue
        last, prev = sub.iloc[-1], sub.iloc[-2]
        noise = max(last.get(f"{metric}_sd", 0.0), prev.get(f"{metric}_sd", 0.0))
        if last[metric] - prev[metric] > spread * (0.0 if pd.isna(noise) else noise):
            out.append(int(d_in))
    return out


def headline_claims(table: pd.DataFrame, profile: str, model: str = "iSAE-ME",
                    goal: dict[str, float] = GOAL) -> pd.DataFrame:
    """One claim per setting, "``model`` reaches ``goal`` at a swept point", decided by the claims engine: it
    holds where some point's SAE IoU and DCS exceed the goal beyond their uncertainty (seed-pair metrics); a
    point whose longest run still rose with steps (``still_rising``) is not tested unless its verdict would
    survive the same rise again."""
    target = " and ".join(f"{METRIC_LABELS[m]} ≥ {v}" for m, v in goal.items())
    paper = paper_table(1)
    out, movement = [], {}
    for setting in dict.fromkeys(table["setting"]):
        sub = table[(table["model"] == model) & (table["setting"] == setting)].sort_values(["d_in", "n_steps"])
        if sub.empty:
            continue
        longest = sub.groupby("d_in")["n_steps"].transform("max") == sub["n_steps"]
        for metric in goal:
            for d_in in still_rising(table, model, setting, metric):
                runs = sub[sub["d_in"] == d_in]
                movement[(setting, f"{model} N={d_in}", metric)] = float(runs[metric].iloc[-1] - runs[metric].iloc[-2])
        points = []
        for (_, r), last in zip(sub.iterrows(), longest):
            name = f"{model} N={int(r['d_in'])}"
            where = f"N={int(r['d_in'])}, {int(r['n_steps'])} steps"
            points.append(AllOf(*(
                Compare(claims.from_seeds(f"{where}: {METRIC_LABELS[m]}", float(r[m]), float(r[f"{m}_sd"]),
                                          int(r["n_seeds"]), "pair", (setting, name, m) if last else None), ">",
                        claims.exact(f"{v}", v)) for m, v in goal.items())))
        get = getters(paper, setting, paper=True)[0]
        paper_test = AllOf(*(Compare(get(model, m), ">", claims.exact(f"{v}", v)) for m, v in goal.items()))
        out.append(Claim("P1", f"{model} reaches {target} at a swept scale", setting, AnyOf(*points),
                         paper_value=f"{paper_test} (N=768)", paper_test=paper_test))
    return claims.claims_table(out, profile, movement)


def _pair_quantity(row: pd.Series, metric: str, label: str) -> claims.Quantity:
    return claims.from_seeds(label, float(row[metric]), float(row[f"{metric}_sd"]), int(row["n_seeds"]), "pair")


def encoder_gap_claims(table: pd.DataFrame, profile: str, setting: str = "iid", base: str = "AbsTopK",
                       model: str = "iSAE-ME") -> pd.DataFrame:
    """P1's mechanism across the sweep, decided by the claims engine on the longest run of each N: ``base``'s
    encoder gap (oracle IoU − SAE IoU) opens as N grows (largest N against smallest), and at the largest N
    ``model`` closes it (a smaller gap than ``base``'s) and is more identifiable (a higher SAE IoU). Missing when
    the sweep lacks either model or has one N only."""
    sub = table[table["setting"] == setting]
    sub = sub[sub.groupby(["model", "d_in"])["n_steps"].transform("max") == sub["n_steps"]]

    def row(name: str, d_in: int) -> pd.Series | None:
        hit = sub[(sub["model"] == name) & (sub["d_in"] == d_in)]
        return None if hit.empty else hit.iloc[0]

    def quantity(name: str, d_in: int, metric: str) -> claims.Quantity:
        r = row(name, d_in)
        label = f"{name} N={d_in}: {METRIC_LABELS.get(metric, metric)}"
        return claims.missing(label) if r is None else _pair_quantity(r, metric, label)

    sizes = sorted(set(sub["d_in"]))
    small, large = (sizes[0], sizes[-1]) if sizes else (0, 0)
    paper = paper_table(1)
    get = getters(paper, setting, paper=True)[0]
    gap = {m: float(get(m, "oracle_iou").mean - get(m, "sae_iou").mean) for m in (base, model)}
    opens = (Compare(quantity(base, large, "encoder_gap"), ">", quantity(base, small, "encoder_gap"))
             if len(sizes) > 1 else Compare(claims.missing(f"{base} at a second N"), ">", claims.exact("0", 0.0)))
    out = [
        Claim("P1", f"{base}'s encoder gap (oracle IoU − SAE IoU) opens as N grows", setting, opens,
              paper_value=f"{base} gap {gap[base]:.3f} at N=768 (one N)"),
        Claim("P1", f"{model} closes the encoder gap: smaller than {base}'s at the largest N", setting,
              Compare(quantity(model, large, "encoder_gap"), "<", quantity(base, large, "encoder_gap")),
              paper_value=f"{gap[model]:.3f} < {gap[base]:.3f} (N=768)",
              paper_test=Compare(claims.exact(model, gap[model]), "<", claims.exact(base, gap[base]))),
        Claim("P1", f"{model} is more identifiable than {base} at the largest N (SAE IoU)", setting,
              Compare(quantity(model, large, "sae_iou"), ">", quantity(base, large, "sae_iou")),
              paper_value=f"{get(model, 'sae_iou').mean:.3f} > {get(base, 'sae_iou').mean:.3f} (N=768)",
              paper_test=Compare(get(model, "sae_iou"), ">", get(base, "sae_iou"))),
    ]
    return claims.claims_table(out, profile)
