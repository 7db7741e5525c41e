"""The papers' numbers (``data/paper/*.csv``), our tables beside them, and P1's qualitative claims checked."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from isae.core.models import ARCHITECTURES
from isae.core.provenance import repo_root
from isae.experiments.p1_synthetic import TABLE_METRICS
from isae.experiments.profiles import P1_MODELS

PAPER_DIR = repo_root() / "data" / "paper"
#: Direction of improvement of each metric (for the "better" arrows in tables).
HIGHER_IS_BETTER = {"mse": False, "r_s": False, "sae_iou": True, "sae_l2": False, "oracle_iou": True,
                    "oracle_l2": False, "dcs": True}


def paper_table(table: int) -> pd.DataFrame:
    """P1's Table 1 or 2 as published (columns setting, model and ``TABLE_METRICS``)."""
    path = PAPER_DIR / "p1_tables.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; it is part of the repository (git checkout data/paper).")
    df = pd.read_csv(path)
    if table not in set(df["table"]):
        raise ValueError(f"table={table} is not in {path}; available: {sorted(set(df['table']))}.")
    return df[df["table"] == table].drop(columns="table").reset_index(drop=True)


def side_by_side(ours: pd.DataFrame, paper: pd.DataFrame, metrics: tuple[str, ...] = TABLE_METRICS) -> pd.DataFrame:
    """One row per (setting, model) of ``ours``; for each metric an "ours" (mean ± sd) and a "paper" column."""
    merged = ours.merge(paper, on=["setting", "model"], how="left", suffixes=("", "_paper"))
    out = merged[["setting", "model"]].copy()
    for m in metrics:
        sd = merged.get(f"{m}_sd")
        out[(m, "ours")] = [f"{v:.3f} ± {s:.3f}" if pd.notna(s) else f"{v:.3f}"
                            for v, s in zip(merged[m], sd if sd is not None else [float("nan")] * len(merged))]
        out[(m, "paper")] = merged[f"{m}_paper"].map(lambda v: "" if pd.isna(v) else f"{v:.3f}")
    out = out.set_index(["setting", "model"])
    out.columns = pd.MultiIndex.from_tuples(out.columns)
    return out


@dataclass
class Claim:
    """A qualitative claim of a paper, and whether our numbers support it."""

    claim: str
    setting: str
    holds: bool
    evidence: str


def _trained(table: pd.DataFrame) -> pd.Series:
    """Which rows are trained models (a table without a ``trained`` column, e.g. a paper's, has only those)."""
    return table["trained"].astype(bool) if "trained" in table else pd.Series(True, index=table.index)


def _get(table: pd.DataFrame, setting: str, model: str, metric: str) -> float:
    """``metric`` of the trained ``model`` (display name) in ``setting``; NaN when the table lacks it."""
    row = table[(table["setting"] == setting) & (table["model"] == model) & _trained(table)]
    return float(row[metric].iloc[0]) if len(row) else float("nan")


def _get_untrained(table: pd.DataFrame, setting: str, variant: str, metric: str) -> float:
    """``metric`` of the random-init baseline of architecture ``variant`` in ``setting``; NaN when absent."""
    if "variant" not in table:
        return float("nan")
    row = table[(table["setting"] == setting) & (table["variant"] == variant) & ~_trained(table)]
    return float(row[metric].iloc[0]) if len(row) else float("nan")


def _metric_getter(table: pd.DataFrame, setting: str):
    """``get(model, metric)``: ``_get`` for one setting of ``table``."""
    return lambda model, metric: _get(table, setting, model, metric)


def check_synthetic_claims(table: pd.DataFrame) -> pd.DataFrame:
    """P1's qualitative claims on synthetic data, checked on ``table`` (the output of ``summarise``)."""
    claims: list[Claim] = []
    for s in sorted(set(table["setting"])):
        g = _metric_getter(table, s)
        untrained_dcs = _get_untrained(table, s, "topk", "dcs")
        claims += [
            Claim("AbsTopK beats TopK on DCS", s, g("AbsTopK", "dcs") > g("TopK", "dcs"),
                  f"DCS {g('AbsTopK', 'dcs'):.3f} vs {g('TopK', 'dcs'):.3f}"),
            Claim("AbsTopK beats TopK on SAE code IoU", s, g("AbsTopK", "sae_iou") > g("TopK", "sae_iou"),
                  f"IoU {g('AbsTopK', 'sae_iou'):.3f} vs {g('TopK', 'sae_iou'):.3f}"),
            Claim("OMP oracle on AbsTopK dictionaries is more consistent than the AbsTopK encoder", s,
                  g("AbsTopK", "oracle_iou") > g("AbsTopK", "sae_iou"),
                  f"oracle IoU {g('AbsTopK', 'oracle_iou'):.3f} vs SAE IoU {g('AbsTopK', 'sae_iou'):.3f}"),
            Claim("iSAE-ME has the lowest MSE", s,
                  g("iSAE-ME", "mse") <= min(g(m, "mse") for m in ("TopK", "AbsTopK", "iSAE")),
                  f"MSE iSAE-ME {g('iSAE-ME', 'mse'):.3f}, AbsTopK {g('AbsTopK', 'mse'):.3f}, "
                  f"TopK {g('TopK', 'mse'):.3f}"),
            Claim("iSAE-ME closes the gap to the oracle (SAE IoU ≥ AbsTopK's oracle IoU − 0.05)", s,
                  g("iSAE-ME", "sae_iou") >= g("AbsTopK", "oracle_iou") - 0.05,
                  f"iSAE-ME SAE IoU {g('iSAE-ME', 'sae_iou'):.3f} vs AbsTopK oracle IoU "
                  f"{g('AbsTopK', 'oracle_iou'):.3f}"),
            Claim("Trained SAEs are more consistent than untrained ones (DCS above the random-init baseline)", s,
                  g("TopK", "dcs") > untrained_dcs,
                  f"TopK DCS {g('TopK', 'dcs'):.3f} vs untrained {untrained_dcs:.3f}"),
        ]
        if s == "iid":
            claims.append(Claim("iSAE-ME is near-perfectly stable on i.i.d. data (SAE IoU > 0.9)", s,
                                g("iSAE-ME", "sae_iou") > 0.9, f"SAE IoU {g('iSAE-ME', 'sae_iou'):.3f}"))
        if s == "mixture":
            claims.append(Claim("the aRIP term lowers R_S on coherent (mixture) data", s,
                                g("iSAE", "r_s") < g("AbsTopK", "r_s"),
                                f"R_S iSAE {g('iSAE', 'r_s'):.3f} vs AbsTopK {g('AbsTopK', 'r_s'):.3f}"))
    return pd.DataFrame([c.__dict__ for c in claims])


def check_synthetic_claims_by_recipe(table: pd.DataFrame) -> pd.DataFrame:
    """``check_synthetic_claims`` for each recipe of a ``summarise`` table that has a ``recipe`` column (the
    claims table gains that column first)."""
    parts = [check_synthetic_claims(t.drop(columns="recipe")).assign(recipe=r)
             for r, t in table.groupby("recipe", sort=False)]
    out = pd.concat(parts, ignore_index=True)
    return out[["recipe", *(c for c in out if c != "recipe")]]


# --- P1 on real activations (Tables 2 and 3) ---------------------------------------------------------------

P1_MODEL_LABELS = tuple(ARCHITECTURES[a] for a in P1_MODELS)
"""The display names of P1's four models, as the tables' ``model`` column holds them."""


def paper_table3() -> pd.DataFrame:
    """P1's Table 3 (SAEBench on Pythia-160M) as published: model, ce_loss, sparse_probing, scr, tpp."""
    path = PAPER_DIR / "p1_table3.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; it is part of the repository (git checkout data/paper).")
    return pd.read_csv(path)


def check_real_claims(table: pd.DataFrame, downstream: pd.DataFrame | None = None,
                      downstream_setting: str = "downstream") -> pd.DataFrame:
    """P1's claims on real activations (Table 2), checked on ``table`` (``summarise``'s output) per setting.

    With ``downstream`` (one row per model, CE with the SAE spliced in as ``ce_sae`` — our table — or
    ``ce_loss`` — P1's Table 3) the claim "iSAE-ME has the best CE" is checked too, under
    ``downstream_setting``. Claims compare means only; a missing model gives NaN evidence and holds=False.
    """
    claims: list[Claim] = []
    for s in list(dict.fromkeys(table["setting"])):
        g = _metric_getter(table, s)
        untrained_dcs = _get_untrained(table, s, "topk", "dcs")
        others = [m for m in P1_MODEL_LABELS if m != "AbsTopK"]
        best_other_dcs = max(others, key=lambda m: g(m, "dcs") if g(m, "dcs") == g(m, "dcs") else -1)
        best_other_iou = max(others, key=lambda m: g(m, "sae_iou") if g(m, "sae_iou") == g(m, "sae_iou") else -1)
        claims += [
            Claim("AbsTopK is the most stable model by DCS", s, g("AbsTopK", "dcs") > g(best_other_dcs, "dcs"),
                  f"DCS AbsTopK {g('AbsTopK', 'dcs'):.3f} vs best other ({best_other_dcs}) "
                  f"{g(best_other_dcs, 'dcs'):.3f}"),
            Claim("AbsTopK is the most stable model by SAE code IoU", s,
                  g("AbsTopK", "sae_iou") > g(best_other_iou, "sae_iou"),
                  f"SAE IoU AbsTopK {g('AbsTopK', 'sae_iou'):.3f} vs best other ({best_other_iou}) "
                  f"{g(best_other_iou, 'sae_iou'):.3f}"),
            Claim("AbsTopK beats TopK on DCS and SAE code IoU", s,
                  g("AbsTopK", "dcs") > g("TopK", "dcs") and g("AbsTopK", "sae_iou") > g("TopK", "sae_iou"),
                  f"DCS {g('AbsTopK', 'dcs'):.3f} vs {g('TopK', 'dcs'):.3f}; "
                  f"IoU {g('AbsTopK', 'sae_iou'):.3f} vs {g('TopK', 'sae_iou'):.3f}"),
            Claim("the aRIP term lowers R_S (iSAE below AbsTopK)", s, g("iSAE", "r_s") < g("AbsTopK", "r_s"),
                  f"R_S iSAE {g('iSAE', 'r_s'):.3f} vs AbsTopK {g('AbsTopK', 'r_s'):.3f}"),
            Claim("aRIP improves oracle identifiability (iSAE oracle IoU > AbsTopK's)", s,
                  g("iSAE", "oracle_iou") > g("AbsTopK", "oracle_iou"),
                  f"oracle IoU iSAE {g('iSAE', 'oracle_iou'):.3f} vs AbsTopK {g('AbsTopK', 'oracle_iou'):.3f}"),
            Claim("iSAE-ME has the lowest MSE", s,
                  g("iSAE-ME", "mse") < min(g(m, "mse") for m in ("TopK", "AbsTopK", "iSAE")),
                  f"MSE iSAE-ME {g('iSAE-ME', 'mse'):.3f}, TopK {g('TopK', 'mse'):.3f}, "
                  f"AbsTopK {g('AbsTopK', 'mse'):.3f}, iSAE {g('iSAE', 'mse'):.3f}"),
            Claim("iSAE-ME is less stable than AbsTopK (lower DCS and SAE IoU)", s,
                  g("iSAE-ME", "dcs") < g("AbsTopK", "dcs") and g("iSAE-ME", "sae_iou") < g("AbsTopK", "sae_iou"),
                  f"DCS {g('iSAE-ME', 'dcs'):.3f} vs {g('AbsTopK', 'dcs'):.3f}; "
                  f"IoU {g('iSAE-ME', 'sae_iou'):.3f} vs {g('AbsTopK', 'sae_iou'):.3f}"),
        ]
        if untrained_dcs == untrained_dcs:  # not NaN: the table has the random-init baseline
            claims.append(Claim("Trained SAEs are more consistent than untrained ones (TopK DCS above the "
                                "random-init baseline)", s, g("TopK", "dcs") > untrained_dcs,
                                f"TopK DCS {g('TopK', 'dcs'):.3f} vs untrained {untrained_dcs:.3f}"))
    if downstream is not None:
        col = "ce_sae" if "ce_sae" in downstream else "ce_loss"
        ce = downstream.set_index("model")[col]
        c = {m: float(ce.get(m, float("nan"))) for m in P1_MODEL_LABELS}
        claims.append(Claim("iSAE-ME has the lowest CE loss with the SAE spliced in", downstream_setting,
                            c["iSAE-ME"] < min(c[m] for m in ("TopK", "AbsTopK", "iSAE")),
                            ", ".join(f"{m} {v:.3f}" for m, v in c.items())))
    return pd.DataFrame([cl.__dict__ for cl in claims])


# --- convergence: is a claim tested at this budget? ------------------------------------------------------------

#: The convergence-curve metrics, and whether each is a per-run or a per-seed-pair metric.
CURVE_METRICS = {"dcs": "pair", "sae_iou": "pair", "oracle_iou": "pair", "mse": "run", "dead_frac": "run",
                 "r_s": "run"}

#: The metrics each real-data claim of ``check_real_claims`` compares; its verdict needs them to have stopped moving.
CLAIM_METRICS = {
    "AbsTopK is the most stable model by DCS": ("dcs",),
    "AbsTopK is the most stable model by SAE code IoU": ("sae_iou",),
    "AbsTopK beats TopK on DCS and SAE code IoU": ("dcs", "sae_iou"),
    "the aRIP term lowers R_S (iSAE below AbsTopK)": ("r_s",),
    "aRIP improves oracle identifiability (iSAE oracle IoU > AbsTopK's)": ("oracle_iou",),
    "iSAE-ME has the lowest MSE": ("mse",),
    "iSAE-ME is less stable than AbsTopK (lower DCS and SAE IoU)": ("dcs", "sae_iou"),
    "Trained SAEs are more consistent than untrained ones (TopK DCS above the random-init baseline)": ("dcs",),
    "iSAE-ME has the lowest CE loss with the SAE spliced in": ("mse",),
}

NOT_TESTED = "not tested at this budget"


def convergence(curve: pd.DataFrame, last_frac: float = 0.2) -> pd.DataFrame:
    """Per (setting, model, metric) of a convergence curve (``ExperimentResult.curve``): the mean at the last step,
    the mean at the last evaluated step at or before (1 − ``last_frac``) of training, their difference, the seed
    spread at the end (sd over runs or seed pairs) and ``moving`` = |change| > spread (our rule: a metric still
    moving by more than its seed-to-seed spread over the last ``last_frac`` of training has not converged)."""
    rows = []
    for (setting, model), g in curve.groupby(["setting", "model"], sort=False):
        steps = sorted(g["step"].unique())
        end = steps[-1]
        earlier = [s for s in steps if s <= (1 - last_frac) * end and s < end]
        if not earlier:
            raise ValueError(f"the curve of {setting}/{model} has no point before the last {last_frac:.0%} of "
                             "training; use at least 2 curve points.")
        ref = earlier[-1]
        for metric, level in CURVE_METRICS.items():
            h = g[g["level"] == level]
            if metric not in h:
                continue
            final, before = h.loc[h["step"] == end, metric], h.loc[h["step"] == ref, metric]
            spread = float(final.std(ddof=1)) if len(final) > 1 else 0.0
            change = float(final.mean() - before.mean())
            rows.append({"setting": setting, "model": model, "metric": metric, "from_step": int(ref),
                         "to_step": int(end), "start": float(h.loc[h["step"] == steps[0], metric].mean()),
                         "before": float(before.mean()), "final": float(final.mean()), "change": change,
                         "seed_spread": spread, "moving": abs(change) > spread})
    return pd.DataFrame(rows)


def with_verdicts(claims: pd.DataFrame, conv: pd.DataFrame, setting_of: dict[str, str] | None = None) -> pd.DataFrame:
    """``claims`` with a ``verdict``: "holds" / "fails" when every metric the claim compares (``CLAIM_METRICS``)
    has stopped moving for every model of its setting in ``conv`` (``convergence``), else ``NOT_TESTED``; and
    ``still_moving``, the moving (model, metric)s. ``setting_of`` maps a claim's setting to the curve's (e.g. the
    downstream "smollm2 (CE)" to "smollm2"). A claim with no curve keeps holds / fails."""
    setting_of = setting_of or {}
    verdicts, moving_lists = [], []
    for _, c in claims.iterrows():
        rows = conv[(conv["setting"] == setting_of.get(c["setting"], c["setting"]))
                    & conv["metric"].isin(CLAIM_METRICS.get(c["claim"], ()))] if len(conv) else conv
        moving = [f"{r.model} {r.metric} ({r.change:+.3f} vs sd {r.seed_spread:.3f})"
                  for r in rows.itertuples() if r.moving]
        verdicts.append(NOT_TESTED if moving else ("holds" if c["holds"] else "fails"))
        moving_lists.append("; ".join(moving))
    return claims.assign(verdict=verdicts, still_moving=moving_lists)
