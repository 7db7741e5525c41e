"""The papers' numbers (``data/paper/*.csv``), our tables beside them, and P1's qualitative claims checked."""

from __future__ import annotations

import pandas as pd

from isae.core.models import ARCHITECTURES
from isae.core.provenance import repo_root
from isae.pipeline import P1_MODELS, PAIR_METRICS, TABLE_METRICS
from isae.report import claims
from isae.report.claims import AllOf, Claim, Compare, Follows, Quantity

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


METRIC_LABELS = {"mse": "MSE", "r_s": "R_S", "sae_iou": "SAE IoU", "sae_l2": "SAE ℓ2", "oracle_iou": "oracle IoU",
                 "oracle_l2": "oracle ℓ2", "dcs": "DCS", "encoder_gap": "encoder gap"}
PAIR_LEVEL = set(PAIR_METRICS)
"""Metrics measured per seed pair (their standard error follows ``claims.RULE``'s pair rule)."""


def _trained(table: pd.DataFrame) -> pd.Series:
    """Which rows are trained models (a table without a ``trained`` column, e.g. a paper's, has only those)."""
    return table["trained"].astype(bool) if "trained" in table else pd.Series(True, index=table.index)


def _quantity(rows: pd.DataFrame, label: str, metric: str, key: tuple[str, str, str], paper: bool) -> Quantity:
    """``metric`` of the one row in ``rows`` as a quantity: exact for the paper's numbers, else mean ± se over
    seeds (``n_seeds``); missing when the row or the metric is absent."""
    if not len(rows) or metric not in rows or pd.isna(rows[metric].iloc[0]):
        return claims.missing(label)
    r = rows.iloc[0]
    if paper:
        return claims.exact(label, float(r[metric]))
    return claims.from_seeds(label, float(r[metric]), float(r.get(f"{metric}_sd", float("nan"))),
                             int(r.get("n_seeds", 1)), "pair" if metric in PAIR_LEVEL else "run", key)


def paper_encoder_gap(setting: str = "iid") -> dict[str, float]:
    """P1's encoder gap (oracle IoU − SAE IoU, Table 1) per model on ``setting``."""
    t = paper_table(1)
    t = t[t["setting"] == setting]
    return dict(zip(t["model"], t["oracle_iou"] - t["sae_iou"]))


def getters(table: pd.DataFrame, setting: str, paper: bool = False):
    """(get, get_untrained) for one setting of a ``summarise`` table (or a paper's table, ``paper=True``):
    ``get(model, metric)`` the trained model's quantity, ``get_untrained(variant, metric)`` the random-init
    baseline's."""
    in_setting = table[table["setting"] == setting]
    trained = _trained(in_setting)

    def get(model: str, metric: str) -> Quantity:
        rows = in_setting[(in_setting["model"] == model) & trained]
        return _quantity(rows, f"{model} {METRIC_LABELS.get(metric, metric)}", metric, (setting, model, metric),
                         paper)

    def get_untrained(variant: str, metric: str) -> Quantity:
        label = f"untrained {ARCHITECTURES.get(variant, variant)} {METRIC_LABELS.get(metric, metric)}"
        if "variant" not in in_setting:
            return claims.missing(label)
        rows = in_setting[(in_setting["variant"] == variant) & ~trained]
        return _quantity(rows, label, metric, (setting, f"untrained {variant}", metric), paper)

    return get, get_untrained


NOT_ISAE_ME = ("TopK", "AbsTopK", "iSAE")
"""The models iSAE-ME is compared with in P1's "iSAE-ME has the lowest …" claims."""


def _lowest(g, model: str, metric: str, others: tuple[str, ...]) -> AllOf:
    return AllOf(*(Compare(g(model, metric), "<", g(o, metric)) for o in others))


def synthetic_tests(g, u, setting: str) -> list[tuple[str, object]]:
    """P1's claims on synthetic data as (statement, test) for one setting; ``g``, ``u`` from ``getters``."""
    out = [
        ("AbsTopK beats TopK on DCS", Compare(g("AbsTopK", "dcs"), ">", g("TopK", "dcs"))),
        ("AbsTopK beats TopK on SAE code IoU", Compare(g("AbsTopK", "sae_iou"), ">", g("TopK", "sae_iou"))),
        ("OMP oracle on AbsTopK dictionaries is more consistent than the AbsTopK encoder",
         Compare(g("AbsTopK", "oracle_iou"), ">", g("AbsTopK", "sae_iou"))),
        ("iSAE-ME has the lowest MSE", _lowest(g, "iSAE-ME", "mse", NOT_ISAE_ME)),
        ("iSAE-ME closes the gap to the oracle (SAE IoU ≥ AbsTopK's oracle IoU − 0.05)",
         Compare(g("iSAE-ME", "sae_iou"), ">", g("AbsTopK", "oracle_iou"), offset=-0.05)),
        ("Trained SAEs are more consistent than untrained ones (DCS above the random-init baseline)",
         Compare(g("TopK", "dcs"), ">", u("topk", "dcs"))),
    ]
    if setting == "iid":
        out.append(("iSAE-ME is near-perfectly stable on i.i.d. data (SAE IoU > 0.9)",
                    Compare(g("iSAE-ME", "sae_iou"), ">", claims.exact("0.9", 0.9))))
    if setting == "mixture":
        out.append(("the aRIP term lowers R_S on coherent (mixture) data",
                    Compare(g("iSAE", "r_s"), "<", g("AbsTopK", "r_s"))))
    return out


def _beside_paper(paper_name: str, ours: list[tuple[str, object]], theirs: list[tuple[str, object]] | None,
                  setting: str) -> list[Claim]:
    """Claims from our tests, each with the same test on the paper's numbers where the paper has that setting."""
    paper_tests = dict(theirs) if theirs is not None else {}
    out = []
    for statement, test in ours:
        pt = paper_tests.get(statement)
        out.append(Claim(paper_name, statement, setting, test, paper_value=str(pt) if pt is not None else "",
                         paper_test=pt))
    return out


def check_synthetic_claims(table: pd.DataFrame, profile: str, paper: pd.DataFrame | None = None,
                           label: str = "") -> pd.DataFrame:
    """P1's qualitative claims on synthetic data, decided by the claims engine on ``table`` (``summarise``'s
    output), each beside the same test on P1's Table 1 (``paper``, default ``paper_table(1)``). ``label`` is
    appended to the setting (e.g. the recipe)."""
    paper = paper_table(1) if paper is None else paper
    out = []
    for s in dict.fromkeys(table["setting"]):
        ours = synthetic_tests(*getters(table, s), s)
        theirs = synthetic_tests(*getters(paper, s, paper=True), s) if s in set(paper["setting"]) else None
        out += _beside_paper("P1", ours, theirs, f"{s}{label}")
    return claims.claims_table(out, profile)


def check_synthetic_claims_by_recipe(table: pd.DataFrame, profile: str) -> pd.DataFrame:
    """``check_synthetic_claims`` for each recipe of a ``summarise`` table with a ``recipe`` column; the recipe
    is named in the setting ("iid, authors recipe")."""
    parts = [check_synthetic_claims(t.drop(columns="recipe"), profile, label=f", {r} recipe")
             for r, t in table.groupby("recipe", sort=False)]
    return pd.concat(parts, ignore_index=True)


# --- P1 on real activations (Tables 2 and 3) ---------------------------------------------------------------

P1_MODEL_LABELS = tuple(ARCHITECTURES[a] for a in P1_MODELS)
"""The display names of P1's four models, as the tables' ``model`` column holds them."""


def paper_table3() -> pd.DataFrame:
    """P1's Table 3 (SAEBench on Pythia-160M) as published: model, ce_loss, sparse_probing, scr, tpp."""
    path = PAPER_DIR / "p1_table3.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; it is part of the repository (git checkout data/paper).")
    return pd.read_csv(path)


def real_tests(g, u, setting: str) -> list[tuple[str, object]]:
    """P1's claims on real activations (Table 2) as (statement, test) for one setting."""
    others = ("TopK", "iSAE", "iSAE-ME")
    out = [
        ("AbsTopK is the most stable model by DCS",
         AllOf(*(Compare(g("AbsTopK", "dcs"), ">", g(o, "dcs")) for o in others))),
        ("AbsTopK is the most stable model by SAE code IoU",
         AllOf(*(Compare(g("AbsTopK", "sae_iou"), ">", g(o, "sae_iou")) for o in others))),
        ("AbsTopK beats TopK on DCS and SAE code IoU",
         AllOf(Compare(g("AbsTopK", "dcs"), ">", g("TopK", "dcs")),
               Compare(g("AbsTopK", "sae_iou"), ">", g("TopK", "sae_iou")))),
        ("the aRIP term lowers R_S (iSAE below AbsTopK)", Compare(g("iSAE", "r_s"), "<", g("AbsTopK", "r_s"))),
        ("aRIP improves oracle identifiability (iSAE oracle IoU > AbsTopK's)",
         Compare(g("iSAE", "oracle_iou"), ">", g("AbsTopK", "oracle_iou"))),
        ("iSAE-ME has the lowest MSE", _lowest(g, "iSAE-ME", "mse", NOT_ISAE_ME)),
        ("iSAE-ME is less stable than AbsTopK (lower DCS and SAE IoU)",
         AllOf(Compare(g("iSAE-ME", "dcs"), "<", g("AbsTopK", "dcs")),
               Compare(g("iSAE-ME", "sae_iou"), "<", g("AbsTopK", "sae_iou")))),
    ]
    if not u("topk", "dcs").missing:  # P1 reports no random-init baseline; tables without one skip the claim
        out.append(("Trained SAEs are more consistent than untrained ones (TopK DCS above the random-init baseline)",
                    Compare(g("TopK", "dcs"), ">", u("topk", "dcs"))))
    return out


def _downstream_getter(downstream: pd.DataFrame, paper: bool):
    """``get(model)``: the CE loss with the SAE spliced in (our ``ce_sae`` over the seeds spliced, or P1's
    Table 3 ``ce_loss``)."""
    col = "ce_sae" if "ce_sae" in downstream else "ce_loss"

    def get(model: str) -> Quantity:
        rows = downstream[downstream["model"] == model]
        label = f"{model} CE"
        if not len(rows):
            return claims.missing(label)
        if paper:
            return claims.exact(label, float(rows[col].iloc[0]))
        return claims.from_values(label, rows[col].tolist())

    return get


def _ce_test(get) -> AllOf:
    return AllOf(*(Compare(get("iSAE-ME"), "<", get(o)) for o in NOT_ISAE_ME))


CE_CLAIM = "iSAE-ME has the lowest CE loss with the SAE spliced in"


def check_real_claims(table: pd.DataFrame, profile: str, paper2: pd.DataFrame | None = None,
                      downstream: pd.DataFrame | None = None, paper3: pd.DataFrame | None = None,
                      downstream_setting: str = "downstream", downstream_of: str | None = None,
                      movement: dict[tuple[str, str, str], float] | None = None,
                      settled: dict[tuple[str, str, str], float] | None = None) -> pd.DataFrame:
    """P1's claims on real activations (Table 2), decided by the claims engine on ``table`` (``summarise``'s
    output) per setting, each beside the same test on ``paper2`` (P1's Table 2 with our setting names,
    ``p1_real.paper_table2_as_ours``). With ``downstream`` (one row per spliced SAE: model, ``ce_sae``) the CE
    claim too, beside P1's Table 3 (``paper3``); with ``downstream_of`` (the setting of the spliced SAEs) it follows
    that setting's MSE ranking (``claims.Follows``: not tested while that still moves). ``movement``, ``settled``:
    ``still_moving`` and ``settled`` of ``convergence(curve)``."""
    out = []
    for s in dict.fromkeys(table["setting"]):
        ours = real_tests(*getters(table, s), s)
        theirs = (real_tests(*getters(paper2, s, paper=True), s)
                  if paper2 is not None and s in set(paper2["setting"]) else None)
        out += _beside_paper("P1", ours, theirs, s)
    if downstream is not None:
        pt = _ce_test(_downstream_getter(paper3, paper=True)) if paper3 is not None else None
        test = _ce_test(_downstream_getter(downstream, paper=False))
        if downstream_of is not None:
            g, _ = getters(table, downstream_of)
            test = Follows(test, _lowest(g, "iSAE-ME", "mse", NOT_ISAE_ME), f"{downstream_of}'s MSE")
        out.append(Claim("P1", CE_CLAIM, downstream_setting, test, paper_value=str(pt) if pt is not None else "",
                         paper_test=pt))
    return claims.claims_table(out, profile, movement, settled)


# --- convergence: is a claim tested at this budget? ------------------------------------------------------------

#: The convergence-curve metrics, and whether each is a per-run or a per-seed-pair metric.
CURVE_METRICS = {"dcs": "pair", "sae_iou": "pair", "oracle_iou": "pair", "mse": "run", "dead_frac": "run",
                 "r_s": "run"}


def convergence_window(steps: list[int], decay_frac: float) -> tuple[int, int]:
    """The two curve steps the convergence rule compares: the last doubling of training before the learning-rate
    decay, i.e. the last evaluated steps after 0 and at or before (1 − ``decay_frac``)/2, and at or before
    (1 − ``decay_frac``) of the run (with the authors' decay over the last 20% and six curve points: 40% → 80%;
    without decay: 40% → the end)."""
    end = steps[-1]
    # ``curve_steps`` rounds each point to a whole step, so the point meant for the decay's start may land half a
    # step past it (e.g. 80% of 18,576 steps: 14,861 > 14,860.8); it still ran at the constant rate.
    plateau_end = max(s for s in steps if s <= round((1.0 - decay_frac) * end))
    earlier = [s for s in steps if 0 < s <= plateau_end / 2]  # step 0 (init) is no budget
    if not earlier:
        raise ValueError(f"a convergence curve with steps {steps} has no two points before the learning-rate decay "
                         f"(decay_frac={decay_frac}); evaluate more curve points (curve_points ≥ 4).")
    return earlier[-1], plateau_end


def convergence(curve: pd.DataFrame, decay_frac: float) -> pd.DataFrame:
    """Per (setting, model, metric) of a convergence curve (``ExperimentResult.curve``): how far the metric still
    moved over the last doubling of training before the learning-rate decay (``convergence_window``), against the
    seed spread at the end.

    The rule (our choice): ``change`` = mean at the window's end − mean at its start, at a constant learning rate,
    so it measures training, not the decay; ``moving`` = |change| > ``seed_spread`` (the sd over runs or seed pairs
    at the last step). Read as: one more doubling of the steps would move the metric by about as much again, so
    the claims engine (``still_moving``) keeps a verdict only if it survives that movement. ``decay_change`` (the
    last step against the window's end) is the decay's own effect, reported, not judged. ``decay_frac``: the
    recipe's (``Recipe.decay_frac``; 0 for a constant learning rate)."""
    rows = []
    for (setting, model), g in curve.groupby(["setting", "model"], sort=False):
        steps = sorted(int(s) for s in g["step"].unique())
        start, stop = convergence_window(steps, decay_frac)
        end = steps[-1]
        for metric, level in CURVE_METRICS.items():
            h = g[g["level"] == level]
            if metric not in h:
                continue

            def at(step: int, h=h, metric=metric) -> pd.Series:
                return h.loc[h["step"] == step, metric]

            final = at(end)
            spread = float(final.std(ddof=1)) if len(final) > 1 else 0.0
            change = float(at(stop).mean() - at(start).mean())
            rows.append({"setting": setting, "model": model, "metric": metric, "from_step": start, "to_step": stop,
                         "end_step": end, "start": float(at(steps[0]).mean()), "before": float(at(start).mean()),
                         "plateau": float(at(stop).mean()), "final": float(final.mean()), "change": change,
                         "decay_change": float(final.mean() - at(stop).mean()), "seed_spread": spread,
                         "moving": abs(change) > spread})
    return pd.DataFrame(rows)


def still_moving(conv: pd.DataFrame) -> dict[tuple[str, str, str], float]:
    """(setting, model, metric) → change over the last doubling of training before the decay, for the metrics
    ``convergence`` judges still moving: the claims engine's ``movement``."""
    if conv is None or not len(conv):
        return {}
    return {(r.setting, r.model, r.metric): float(r.change) for r in conv.itertuples() if r.moving}


def settled(conv: pd.DataFrame) -> dict[tuple[str, str, str], float]:
    """(setting, model, metric) → the same change for the metrics ``convergence`` judges settled (within their seed
    spread): the claims engine counts it in a compared difference's movement when the other side still moves."""
    if conv is None or not len(conv):
        return {}
    return {(r.setting, r.model, r.metric): float(r.change) for r in conv.itertuples() if not r.moving}
