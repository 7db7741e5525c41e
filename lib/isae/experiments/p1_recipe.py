"""Which element of the training recipe makes iSAE-ME identifiable: an ablation P1 does not have.

Starting from each complete recipe (``isae.train.recipe``: ``PAPER``, P1's text, and ``AUTHORS``, the authors'
code), every element where the two differ is switched to the other recipe's value alone, and the models are
trained and evaluated exactly as in Table 1 (``p1_synthetic.run_synthetic_setting``). A variant trains only the
models the element changes anything for (e.g. the S initialisation only for iSAE-ME).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from isae.experiments import p1_synthetic
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


def variants(elements: tuple[str, ...] | None = None) -> list[Variant]:
    """The two bases, then for each element where they differ: paper with it from authors, authors with it from
    paper. ``elements`` restricts the switched elements (default: all of ``ELEMENTS``)."""
    elements = tuple(ELEMENTS) if elements is None else elements
    unknown = [e for e in elements if e not in ELEMENTS]
    if unknown:
        raise ValueError(f"elements={unknown!r} are not recipe elements; use names from {list(ELEMENTS)}.")
    out = [Variant("paper", None, PAPER), Variant("authors", None, AUTHORS)]
    for e in elements:
        if getattr(PAPER, e) != getattr(AUTHORS, e):
            out += [Variant("paper", e, PAPER.switch(e, AUTHORS)), Variant("authors", e, AUTHORS.switch(e, PAPER))]
    return out


def run_ablation(p: SyntheticProfile, models: tuple[str, ...] = ("abstopk", "isae_me"),
                 elements: tuple[str, ...] | None = None, out_dir: str | Path | None = None,
                 device: str | None = None, progress: bool = True, **provenance_params
                 ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train and evaluate every variant (``variants``) on every setting of ``p``; returns (runs, pairs), the
    per-SAE and per-seed-pair tables of ``p1_synthetic.evaluate`` with the columns ``base`` and ``element``
    ("—" for a base); trained SAEs only (the random-init floor is notebook 01's). Each variant checkpoints under
    ``out_dir/ablation/<slug>/<models>/`` (e.g. ``ablation/paper+lr/abstopk-isae_me/``), so a re-run resumes;
    one progress bar counts the variants."""
    jobs = [(setting, data_seed, v, v.models(models, setting)) for setting in p.settings
            for data_seed in p.data_seeds() for v in variants(elements)]
    jobs = [job for job in jobs if job[3]]
    runs, pairs = [], []
    for setting, data_seed, v, archs in tqdm(jobs, desc="recipe variants", unit="variant", disable=not progress):
        # one folder per variant and set of models: a run that trains other models never meets these checkpoints
        sub = Path(out_dir) / "ablation" / v.slug / "-".join(archs) if out_dir is not None else None
        res = p1_synthetic.run_synthetic_setting(setting, replace(p, models=archs, data_seed=data_seed), v.recipe,
                                                 out_dir=sub, device=device, progress=False, baseline=False,
                                                 **provenance_params)
        runs.append(res.runs.assign(base=v.base, element=v.element or "—"))
        pairs.append(res.pairs.assign(base=v.base, element=v.element or "—"))
    return pd.concat(runs, ignore_index=True), pd.concat(pairs, ignore_index=True)


def summarise_ablation(runs: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
    """One row per (setting, model, base, element): mean and sd of ``ABLATION_METRICS`` (in the authors' readings
    where they differ, as the headline table) and each mean's change from its base recipe (``d_<metric>``)."""
    keys = ["setting", "model", "base", "element"]
    run_metrics = [m for m in p1_synthetic.RUN_METRICS if m in runs]
    pair_metrics = [m for m in p1_synthetic.PAIR_METRICS if m in pairs]
    table = mean_sd(runs, keys, run_metrics, count="n_seeds").merge(
        mean_sd(pairs, keys, pair_metrics, count="n_pairs"), on=keys, how="outer")
    table = p1_synthetic.with_protocol(table, "authors")
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
    level = "pair" if metric in p1_synthetic.PAIR_METRICS else "run"
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
