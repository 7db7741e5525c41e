"""Which element of the training recipe makes iSAE-ME identifiable: an ablation P1 does not have.

Starting from each complete recipe (``isae.train.recipe``: ``PAPER``, P1's text, and ``AUTHORS``, the authors'
code), every element where the two differ is switched to the other recipe's value alone, and the models are
trained and evaluated exactly as in Table 1 (``pipeline.model_unit``). A variant trains only the models the
element changes anything for (e.g. the S initialisation only for iSAE-ME).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import pandas as pd

from isae import pipeline
from isae.experiments import p1_synthetic
from isae.experiments.executor import Context, Experiment, Unit
from isae.experiments.profiles import SyntheticProfile
from isae.report import claims
from isae.report.summary import mean_sd
from isae.train.recipe import AUTHORS, ELEMENTS, PAPER, Recipe

#: The metrics the ablation table and figure show (Table 1's columns that decide identifiability, and MSE).
ABLATION_METRICS = ("sae_iou", "oracle_iou", "dcs", "mse")
BASES = {"paper": PAPER, "authors": AUTHORS}


@dataclass(frozen=True)
class Variant:
    """One recipe of the ablation: a base recipe with at most one element taken from the other."""

    base: str
    """"paper" or "authors": the recipe the variant starts from."""
    element: str | None
    """The switched element; None for the base recipe itself."""
    recipe: Recipe

    @property
    def slug(self) -> str:
        """A folder name: "paper", "authors", "paper+lr", ..."""
        return self.base if self.element is None else f"{self.base}+{self.element}"

    def models(self, models: tuple[str, ...], setting: str) -> tuple[str, ...]:
        """The models of ``models`` this variant changes anything for on ``setting``."""
        if self.element is None:
            return models
        return tuple(m for m in models if self.recipe.applies(self.element, m, setting))


def variants(elements: tuple[str, ...] | None = None, bases: tuple[str, ...] = tuple(BASES)) -> list[Variant]:
    """The bases, then for each element where the two recipes differ and each base: the base with that element
    from the other recipe. ``elements`` restricts the switched elements (default: all of ``ELEMENTS``), ``bases``
    the recipes switched from (default: both)."""
    elements = tuple(ELEMENTS) if elements is None else elements
    unknown = [e for e in elements if e not in ELEMENTS]
    if unknown:
        raise ValueError(f"elements={unknown!r} are not recipe elements; use names from {list(ELEMENTS)}.")
    if not bases or any(b not in BASES for b in bases) or len(set(bases)) != len(bases):
        raise ValueError(f"bases={bases!r}: use one or both of {list(BASES)}.")
    other = {"paper": AUTHORS, "authors": PAPER}
    out = [Variant(b, None, BASES[b]) for b in bases]
    for e in elements:
        if getattr(PAPER, e) != getattr(AUTHORS, e):
            out += [Variant(b, e, BASES[b].switch(e, other[b])) for b in bases]
    return out


class P1RecipeAblation(Experiment):
    """Notebook 06: every variant (``variants``) on every setting and data seed of ``p``. A unit is one model of one
    (variant, setting, data seed), trained and evaluated as in Table 1 (``pipeline.model_unit``, no random-init
    floor: it is notebook 01's), under ``ablation/<slug>/``. The result is (runs, pairs), the per-SAE and
    per-seed-pair tables of ``pipeline.evaluate`` with the columns ``base`` and ``element`` ("—" for a
    base)."""

    name = "p1_recipe"

    def __init__(self, p: SyntheticProfile, models: tuple[str, ...] = ("abstopk", "isae_me"),
                 elements: tuple[str, ...] | None = None, bases: tuple[str, ...] = tuple(BASES)):
        self.p, self.models, self.elements, self.bases = p, tuple(models), elements, tuple(bases)
        self.variants = variants(elements, self.bases)

    def identity(self) -> dict:
        ident = {"sizes": self.p.to_dict(), "models": list(self.models),
                 "elements": None if self.elements is None else list(self.elements)}
        # both bases: the identity of runs made before bases was a parameter, so that they still resume
        return ident if self.bases == tuple(BASES) else {**ident, "bases": list(self.bases)}

    def units(self) -> list[Unit]:
        p = self.p
        return [Unit(f"{v.slug}-{p1_synthetic.run_name(s, d)}-{a}", (s, d, i, a),
                     pipeline.STEP_COST.get(a, 1.0) * p.n_steps * p.n_seeds)
                for s in p.settings for d in p.data_seeds() for i, v in enumerate(self.variants)
                for a in v.models(self.models, s)]

    def run_unit(self, unit: Unit, ctx: Context) -> dict:
        setting, d, i, arch = unit.key
        v = self.variants[i]
        p = replace(self.p, data_seed=d)
        si = p1_synthetic.setting_inputs(setting, p, v.recipe, device=str(ctx.device))
        ctx.log(f"{ctx.label}{v.slug}: training {arch} × {self.p.n_seeds} seeds on {si.run_name}")
        tables = p1_synthetic.synthetic_unit(si, p, arch, ctx.out / "ablation" / v.slug, ctx, progress=False,
                                             baseline=False)
        return {name: tables[name].assign(base=v.base, element=v.element or "—") for name in ("runs", "pairs")}

    def merge(self, results: list[dict], ctx: Context) -> tuple[pd.DataFrame, pd.DataFrame]:
        return tuple(pd.concat([r[name] for r in results], ignore_index=True) for name in ("runs", "pairs"))


def summarise_ablation(runs: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
    """One row per (setting, model, base, element): mean and sd of ``ABLATION_METRICS`` (in the authors' readings
    where they differ, as the headline table) and each mean's change from its base recipe (``d_<metric>``)."""
    keys = ["setting", "model", "base", "element"]
    run_metrics = [m for m in pipeline.RUN_METRICS if m in runs]
    pair_metrics = [m for m in pipeline.PAIR_METRICS if m in pairs]
    table = mean_sd(runs, keys, run_metrics, count="n_seeds").merge(
        mean_sd(pairs, keys, pair_metrics, count="n_pairs"), on=keys, how="outer")
    table = pipeline.with_protocol(table, "authors")
    base_rows = table[table["element"] == "—"].set_index(["setting", "model", "base"])
    for m in ABLATION_METRICS:
        base = table.set_index(["setting", "model", "base"]).index.map(base_rows[m].to_dict().get)
        table[f"d_{m}"] = table[m].to_numpy() - pd.array(base, dtype="float64")
    order = {e: i for i, e in enumerate(["—", *ELEMENTS])}
    table = table.assign(_e=table["element"].map(order)).sort_values(["setting", "model", "base", "_e"])
    cols = keys + [c for m in ABLATION_METRICS for c in (m, f"{m}_sd", f"d_{m}")] + ["n_seeds", "n_pairs"]
    return table[cols].reset_index(drop=True)


def effects(table: pd.DataFrame, metric: str = "sae_iou") -> pd.DataFrame:
    """The switched elements that move ``metric``, by the claims engine's rule (``isae.report.claims``): the
    change from the base recipe exceeds twice its standard error over seeds (seed pairs for pair metrics), with
    at least 3 seeds behind each. Largest change first: setting, model, base, element, the change, its standard
    error and the direction."""
    level = "pair" if metric in pipeline.PAIR_METRICS else "run"
    bases = table[table["element"] == "—"].set_index(["setting", "model", "base"])

    def q(r, label: str) -> claims.Quantity:
        return claims.from_seeds(label, float(r[metric]), float(r[f"{metric}_sd"]), int(r["n_seeds"]), level)

    rows = []
    for _, r in table[table["element"] != "—"].iterrows():
        key = (r["setting"], r["model"], r["base"])
        if key not in bases.index:
            continue
        out = claims.Compare(q(r, "variant"), ">", q(bases.loc[key], "base")).decide({})
        if out.verdict in (claims.HOLDS, claims.FAILS):
            rows.append({"setting": r["setting"], "model": r["model"], "base": r["base"], "element": r["element"],
                         f"d_{metric}": out.difference, "se": out.difference_se,
                         "direction": "up" if out.verdict == claims.HOLDS else "down"})
    moved = pd.DataFrame(rows, columns=["setting", "model", "base", "element", f"d_{metric}", "se", "direction"])
    moved = moved.assign(_size=moved[f"d_{metric}"].abs()).sort_values(["setting", "model", "_size"],
                                                                        ascending=[True, True, False])
    return moved.drop(columns="_size").reset_index(drop=True)
