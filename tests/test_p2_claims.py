"""P2's claim checks (isae.report.p2) through the claims engine: on tables built so that every claim holds (3
seeds, small spread), each claim fails on its own when its numbers say so, and the others keep holding."""

from __future__ import annotations

import pandas as pd
import pytest

from isae.report import p2 as report

# --- the toy model --------------------------------------------------------------------------------------------
SPARSITIES = (0.5, 0.8, 0.99)
GOOD_SWEEP = {  # activation: per S (recovered, features_per_latent)
    "topk": {0.5: (0.0, 10.0), 0.8: (0.1, 5.0), 0.99: (0.95, 1.2)},
    "none": {0.5: (0.0, 50.0), 0.8: (0.0, 50.0), 0.99: (0.0, 50.0)},
    "relu": {0.5: (0.0, 20.0), 0.8: (0.0, 10.0), 0.99: (0.8, 2.0)},
    "jumprelu": {0.5: (0.0, 20.0), 0.8: (0.0, 10.0), 0.99: (0.8, 2.0)},
}
GOOD_HIDDEN = {100: 0.5, 200: 0.95, 400: 0.97}
GOOD_WEIGHTED = {  # (S, α): (gap, loss_true, features_per_latent)
    (s, a): (0.3 - 0.1 * i, 0.5 - 0.1 * i, 5.0 - i) for s in (0.9, 0.99) for i, a in enumerate((0.0, 0.5, 1.0))}
GOOD_GAP_FIXED = {0.0: 0.3, 0.5: 0.25, 1.0: 0.2}


def _spread(rows: list[dict], metrics: tuple[str, ...]) -> pd.DataFrame:
    """``rows`` as a ``summarise_toy`` table: each metric ± 0.005 over 3 seeds."""
    return pd.DataFrame([r | {f"{m}_sd": 0.005 for m in metrics} | {"n_seeds": 3} for r in rows])


def _toy_tables(sweep=GOOD_SWEEP, hidden=GOOD_HIDDEN, weighted=GOOD_WEIGHTED, gap_fixed=GOOD_GAP_FIXED,
                profile="default"):
    sweep_t = _spread([{"activation": a, "sparsity": s, "recovered": r, "features_per_latent": f}
                       for a, by_s in sweep.items() for s, (r, f) in by_s.items()],
                      ("recovered", "features_per_latent"))
    hidden_t = _spread([{"n_latents": n, "recovered": r} for n, r in hidden.items()], ("recovered",))
    weighted_t = _spread([{"sparsity": s, "alpha": a, "gap": g, "loss_true": t, "features_per_latent": f}
                          for (s, a), (g, t, f) in weighted.items()], ("gap", "loss_true", "features_per_latent"))
    reference = pd.DataFrame([{"activation": "topk", "sparsity": 0.99, "alpha": 0.0, "features_per_latent": 1.1}])
    fixed = pd.DataFrame([{"eval_alpha": a, "gap": g + 0.001 * i} for a, g in gap_fixed.items() for i in range(3)])
    return report.check_toy_claims(sweep_t, hidden_t, weighted_t, n_features=200, reference=reference,
                                   gap_fixed=fixed, ablation_sparsity=0.99, profile=profile)


def _only_failure(claims: pd.DataFrame) -> pd.Series:
    failing = claims[claims["verdict"] != "holds"]
    assert len(failing) == 1, failing[["claim", "setting", "verdict", "reason"]]
    assert failing.iloc[0]["verdict"] == "fails", failing.iloc[0][["claim", "verdict", "reason"]]
    return failing.iloc[0]


def test_every_toy_claim_holds_on_tables_built_to_satisfy_them():
    claims = _toy_tables()
    assert (claims["verdict"] == "holds").all(), claims[["claim", "setting", "reason"]]
    assert (_toy_tables(profile="smoke")["verdict"] == "not tested").all()
    assert {"sparsity sweep", "activation ablation", "hidden-size ablation", "weighted, S=0.9", "weighted, S=0.99",
            "weighted, fixed SAEs"} == set(claims["setting"])


def _with(table: dict, key, value) -> dict:
    return {k: (value if k == key else v) for k, v in table.items()}


@pytest.mark.parametrize("change, claim, setting", [
    (dict(sweep=_with(GOOD_SWEEP, "topk", {**GOOD_SWEEP["topk"], 0.8: (0.5, 5.0)})), "(1) extreme sparsity",
     "sparsity sweep"),
    (dict(sweep=_with(GOOD_SWEEP, "topk", {**GOOD_SWEEP["topk"], 0.99: (0.95, 2.0)})), "(1) features per latent fall",
     "sparsity sweep"),
    (dict(sweep=_with(GOOD_SWEEP, "none", {**GOOD_SWEEP["none"], 0.99: (0.2, 50.0)})), "(2) without an activation",
     "activation ablation"),
    (dict(sweep=_with(GOOD_SWEEP, "relu", {**GOOD_SWEEP["relu"], 0.99: (0.4, 2.0)})), "sparse activation ReLU",
     "activation ablation"),
    (dict(sweep=_with(GOOD_SWEEP, "jumprelu", {**GOOD_SWEEP["jumprelu"], 0.99: (0.8, 60.0)})),
     "sparse activation JumpReLU", "activation ablation"),
    (dict(hidden=_with(GOOD_HIDDEN, 100, 0.95)), "(3) n_m < n cannot", "hidden-size ablation"),
    (dict(hidden=_with(GOOD_HIDDEN, 400, 0.85)), "(3) with n_m ≥ n", "hidden-size ablation"),
    (dict(weighted=_with(GOOD_WEIGHTED, (0.9, 1.0), (0.35, 0.3, 3.0))), "narrows the gap", "weighted, S=0.9"),
    (dict(weighted=_with(GOOD_WEIGHTED, (0.99, 0.5), (0.2, 0.6, 4.0))), "reconstructs the true features better",
     "weighted, S=0.99"),
    (dict(weighted=_with(GOOD_WEIGHTED, (0.9, 0.5), (0.2, 0.4, 6.0))), "more monosemantic", "weighted, S=0.9"),
    (dict(gap_fixed=_with(GOOD_GAP_FIXED, 0.5, 0.35)), "for the same SAE parameters", "weighted, fixed SAEs"),
])
def test_each_toy_claim_fails_alone_when_its_numbers_say_so(change, claim, setting):
    failing = _only_failure(_toy_tables(**change))
    assert claim in failing["claim"] and failing["setting"] == setting


# --- the weighted SAE on real activations ---------------------------------------------------------------------
LAYERS = [f"layer{L}" for L in range(2, 18, 2)]  # 8 layers: 7 of 8 better is beyond a fair coin's 2 se
LM_MEASURES = ("token_purity", "context_purity", "token_pure_frac")
VISION_MEASURES = ("class_purity", "class_pure_frac")


def _gain(setting, alpha, measure, diff):
    return {"setting": setting, "alpha": alpha, "measure": measure, "uniform": 0.5, "weighted": 0.5 + diff,
            "diff": diff, "diff_sd": 0.005, "gain_pct": 200 * diff, "better": diff > 0, "beyond_2se": False,
            "n_seeds": 3}


def _gains(diffs: dict | None = None) -> pd.DataFrame:
    """Every (setting, α, measure) improves by 0.01, except the (setting, α, measure) → diff in ``diffs``."""
    diffs = diffs or {}
    rows = [_gain(s, a, m, diffs.get((s, a, m), 0.01)) for a in (0.5, 1.0)
            for s, ms in [(s, LM_MEASURES) for s in LAYERS] + [("vision", VISION_MEASURES)] for m in ms]
    return pd.DataFrame(rows)


def _frontiers(excess: dict | None = None) -> pd.DataFrame:
    excess = excess or {}
    rows = [{"setting": s, "alpha": a, "measure": m, "excess": excess.get((s, a), 0.01), "excess_sd": 0.005,
             "n_matched": 3}
            for a in (0.5, 1.0) for s, m in [(s, "token_purity") for s in LAYERS] + [("vision", "class_purity")]]
    return pd.DataFrame(rows)


def _wsae_claims(gains=None, frontiers=None, **kw):
    return report.check_claims(_gains() if gains is None else gains, LAYERS, "vision",
                               frontiers=_frontiers() if frontiers is None else frontiers, profile="default", **kw)


def test_every_wsae_claim_holds_on_gains_built_to_satisfy_them():
    claims = _wsae_claims()
    assert (claims["verdict"] == "holds").all(), claims[["claim", "setting", "reason"]]
    assert set(claims["setting"]) == {"LM layers 2, 4, 6, 8, 10, 12, 14, 16", "vision"}
    main = claims[claims["claim"].str.contains("higher than uniform on average")]
    assert (main["paper_verdict"] == "holds").all() and main["paper_value"].str.contains("3.8").all()


def test_most_layers_is_a_sign_test_over_layers():
    few = report.check_claims(_gains(), LAYERS[:3], None, lm_robustness=(), profile="default")
    most = few[few["claim"].str.contains("at most layers")]
    assert (most["verdict"] == "inconclusive").all()  # 3 of 3 layers better is within a fair coin's noise


@pytest.mark.parametrize("gains, frontiers, claim", [
    ({("layer4", 0.5, "token_purity"): -0.1}, None, "α=0.5: token_purity higher than uniform on average"),
    ({("layer2", 1.0, "token_purity"): 0.23, **{(L, 1.0, "token_purity"): -0.01 for L in LAYERS[1:]}}, None,
     "α=1: weighting improves token_purity at most layers"),
    ({("vision", 1.0, "class_purity"): -0.01}, None, "α=1: class_purity of the latents better"),
    ({("layer4", 1.0, "context_purity"): -0.1}, None, "(robustness) LM, variance weights α=1: context_purity"),
    ({("vision", 0.5, "class_pure_frac"): -0.01}, None, "(robustness) vision, semantic-consistency weights α=0.5"),
    (None, {("vision", 0.5): -0.02}, "(matched MSE) α=0.5: class_purity above the uniform sparsity frontier"),
    (None, {("layer4", 1.0): -0.2}, "(matched MSE) α=1: token_purity above the uniform sparsity frontier"),
])
def test_each_wsae_claim_fails_alone_when_its_numbers_say_so(gains, frontiers, claim):
    failing = _only_failure(_wsae_claims(gains=_gains(gains) if gains else None,
                                         frontiers=_frontiers(frontiers) if frontiers else None))
    assert claim in failing["claim"]


def test_a_frontier_claim_without_matched_mse_is_missing_not_failing():
    frontiers = _frontiers()
    frontiers.loc[frontiers["setting"] == "vision", "excess"] = float("nan")
    claims = _wsae_claims(frontiers=frontiers[frontiers["alpha"] == 1.0])
    row = claims[claims["claim"].str.startswith("(matched MSE)") & (claims["setting"] == "vision")].iloc[0]
    assert row["verdict"] == "missing" and "control_k_fractions" in row["reason"]
    assert (claims.drop(row.name)["verdict"] == "holds").all()


def test_wsae_claims_follow_each_measures_direction():
    entropy = pd.DataFrame([_gain(s, 1.0, "token_entropy", -0.1) for s in LAYERS])
    entropy["better"] = True  # lower entropy is better (as paired_gains sets it)
    claims = report.check_claims(entropy, LAYERS, None, lm_measure="token_entropy", lm_robustness=(),
                                 profile="default")
    assert report.WSAE_HIGHER_IS_BETTER["token_entropy"] is False
    assert (claims["verdict"] == "holds").all() and "token_entropy lower than uniform" in claims["claim"].iloc[0]


def test_compare_with_p2_reports_the_papers_numbers_beside_our_average_and_best_layer():
    gains = _gains({("layer8", 0.5, "token_purity"): 0.05})
    table = report.compare_with_p2(gains, LAYERS, measures=("token_purity",))
    assert table.iloc[0]["average gain %"] == report.P2_AVERAGE_GAIN
    assert table.iloc[0]["best layer gain %"] == report.P2_BEST_LAYER_GAIN
    ours = table[(table["source"] != table.iloc[0]["source"]) & (table["alpha"] == "0.5")].iloc[0]
    assert ours["best layer"] == "8" and ours["best layer gain %"] == pytest.approx(10.0)
    assert ours["average gain %"] == pytest.approx((7 * 2 + 10) / 8, abs=0.01) and ours["layers better"] == "8/8"
