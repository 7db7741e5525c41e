"""P1's real-data claims (reporting.check_real_claims), P1's Table 3, and the Table 2 driver on a cached stream."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from isae import pipeline
from isae.core.models import ARCHITECTURES, SAEConfig
from isae.data.activations import heldout_activations
from isae.data.cache import ActivationCache, build_cache
from isae.report import claims as engine
from isae.report import p1 as reporting
from isae.report.claims import VERDICTS, Claim, Compare
from isae.train.trainer import TrainConfig

# A hand-made table in which every claim holds (shaped like P1's Pythia row: AbsTopK most stable, iSAE lowest R_S
# and best oracle IoU, iSAE-ME lowest MSE but less stable).
GOOD = {
    "TopK": dict(mse=0.17, r_s=0.18, sae_iou=0.40, oracle_iou=0.35, dcs=0.81),
    "AbsTopK": dict(mse=0.18, r_s=0.18, sae_iou=0.63, oracle_iou=0.40, dcs=0.87),
    "iSAE": dict(mse=0.18, r_s=0.11, sae_iou=0.53, oracle_iou=0.47, dcs=0.86),
    "iSAE-ME": dict(mse=0.15, r_s=0.13, sae_iou=0.38, oracle_iou=0.34, dcs=0.80),
    "TopK (untrained)": dict(mse=0.9, r_s=0.2, sae_iou=0.05, oracle_iou=0.05, dcs=0.30),
}


VARIANT = {"TopK": "topk", "AbsTopK": "abstopk", "iSAE": "isae", "iSAE-ME": "isae_me"}


def _table(rows: dict, setting: str = "lm", sd: float = 0.001, n_seeds: int = 3) -> pd.DataFrame:
    """A summary table (every metric ± ``sd`` over ``n_seeds`` seeds); "X (untrained)" rows are X's random-init
    baseline (as ``summarise`` keys them)."""
    out = []
    for m, v in rows.items():
        base = m.removesuffix(" (untrained)")
        out.append({"setting": setting, "model": m, "variant": VARIANT[base], "trained": base == m, **v,
                    **{f"{k}_sd": sd for k in v}, "n_seeds": n_seeds})
    return pd.DataFrame(out)


def _verdict(claims: pd.DataFrame, text: str) -> str:
    hit = claims[claims["claim"].str.contains(text, regex=False)]
    assert len(hit) == 1, f"{text!r} matched {len(hit)} claims"
    return hit["verdict"].iloc[0]


def test_every_claim_holds_on_a_table_built_to_satisfy_them():
    claims = reporting.check_real_claims(_table(GOOD), "default")
    assert (claims["verdict"] == "holds").all(), claims
    assert set(claims["setting"]) == {"lm"} and claims["claim"].is_unique


def test_the_same_table_decides_nothing_at_smoke_or_within_the_noise_or_with_two_seeds():
    assert (reporting.check_real_claims(_table(GOOD), "smoke")["verdict"] == "not tested").all()
    noisy = reporting.check_real_claims(_table(GOOD, sd=0.5), "default")
    assert (noisy["verdict"] == "inconclusive").all()
    two = reporting.check_real_claims(_table(GOOD, n_seeds=2), "default")
    assert (two["verdict"] == "inconclusive").all() and two["reason"].str.contains("2 seeds").all()


def test_the_random_init_claim_needs_the_baseline_row_and_reads_it_by_key():
    without = reporting.check_real_claims(_table({m: v for m, v in GOOD.items() if m != "TopK (untrained)"}),
                                          "default")
    assert not without["claim"].str.contains("untrained").any()
    # the baseline is found through variant/trained, not through its label
    relabelled = _table(GOOD).replace({"model": {"TopK (untrained)": "random init"}})
    row = reporting.check_real_claims(relabelled, "default").set_index("claim").filter(like="untrained", axis=0)
    assert len(row) == 1 and "untrained TopK DCS 0.300" in row["ours"].iloc[0]


@pytest.mark.parametrize("model, metric, value, claim", [
    ("iSAE", "dcs", 0.90, "most stable model by DCS"),
    ("TopK", "sae_iou", 0.70, "most stable model by SAE code IoU"),
    ("iSAE", "oracle_iou", 0.39, "oracle identifiability"),
    ("iSAE", "r_s", 0.20, "lowers R_S"),
    ("TopK", "mse", 0.10, "lowest MSE"),
    ("iSAE-ME", "sae_iou", 0.65, "less stable than AbsTopK"),
    ("TopK (untrained)", "dcs", 0.95, "untrained"),
])
def test_each_claim_fails_when_its_numbers_say_so(model, metric, value, claim):
    rows = {m: dict(v) for m, v in GOOD.items()}
    rows[model][metric] = value
    claims = reporting.check_real_claims(_table(rows), "default")
    assert _verdict(claims, claim) == "fails"


def test_claims_are_per_setting_and_the_ce_claim_uses_the_downstream_table():
    table = pd.concat([_table(GOOD, "lm"), _table({**GOOD, "iSAE-ME": {**GOOD["iSAE-ME"], "mse": 0.5}}, "vision")])
    ce = {"TopK": [3.0, 3.01, 3.02], "AbsTopK": [3.1, 3.11, 3.12], "iSAE": [3.2, 3.21, 3.22],
          "iSAE-ME": [3.3, 3.31, 3.32]}
    ours = pd.DataFrame([{"model": m, "ce_sae": v} for m, vs in ce.items() for v in vs])
    claims = reporting.check_real_claims(table, "default", downstream=ours, paper3=reporting.paper_table3(),
                                         downstream_setting="lm (CE)")
    assert list(dict.fromkeys(claims["setting"])) == ["lm", "vision", "lm (CE)"]
    lowest_mse = claims[claims["claim"] == "iSAE-ME has the lowest MSE"].set_index("setting")["verdict"]
    assert lowest_mse.to_dict() == {"lm": "holds", "vision": "fails"}
    ce_row = claims[claims["setting"] == "lm (CE)"].iloc[0]
    assert ce_row["verdict"] == "fails" and ce_row["paper_verdict"] == "holds"  # P1: iSAE-ME 3.906 < TopK 3.974
    one_seed = reporting.check_real_claims(table, "default", downstream=ours.groupby("model").head(1))
    assert one_seed.iloc[-1]["verdict"] == "inconclusive"  # one spliced seed per model decides nothing


def test_missing_models_are_missing_never_failing():
    claims = reporting.check_real_claims(_table({"TopK": GOOD["TopK"]}), "default")
    assert (claims["verdict"] == "missing").all()
    assert claims["reason"].str.contains("AbsTopK").any()


def test_the_moving_rule_reaches_the_real_claims():
    conv = pd.DataFrame([{"setting": "lm", "model": "AbsTopK", "metric": "dcs", "change": 0.05, "moving": True},
                         {"setting": "lm", "model": "TopK", "metric": "dcs", "change": 0.5, "moving": False}])
    claims = reporting.check_real_claims(_table(GOOD), "default", movement=reporting.still_moving(conv))
    assert _verdict(claims, "most stable model by DCS") == "not tested"  # 0.87 vs iSAE 0.86: within the drift
    assert _verdict(claims, "untrained") == "holds"  # TopK DCS is not moving
    assert _verdict(claims, "lowest MSE") == "holds"


def test_paper_table3_and_the_claims_on_the_papers_own_table2():
    t3 = reporting.paper_table3()
    assert list(t3.columns[:3]) == ["model", "ce_loss", "sparse_probing"]
    assert t3.set_index("model").loc["iSAE-ME", "ce_loss"] == 3.906
    paper2 = reporting.paper_table(2)
    claims = reporting.check_real_claims(paper2, "default", paper2=paper2).set_index(["setting", "claim"])
    verdicts = claims["paper_verdict"]
    # P1's own numbers: AbsTopK has the best SAE IoU on Pythia but not on DINOv2 (iSAE 0.585 > 0.524)
    assert verdicts[("pythia-160m", "AbsTopK is the most stable model by SAE code IoU")] == "holds"
    assert verdicts[("dinov2", "AbsTopK is the most stable model by SAE code IoU")] == "fails"
    assert verdicts[("pythia-160m", "aRIP improves oracle identifiability (iSAE oracle IoU > AbsTopK's)")] == "holds"
    assert verdicts[("dinov2", "iSAE-ME has the lowest MSE")] == "holds"
    # the paper's table has no seed spread: judged as our numbers it decides nothing
    assert set(claims["verdict"]) == {"inconclusive"}


# --- the Table 2 driver on a cached stream ------------------------------------------------------------------

def _random_cache(folder, rows: int, d: int, seed: int) -> ActivationCache:
    def shard(i):
        g = torch.Generator().manual_seed(seed * 100 + i)
        atoms = torch.randn(24, d, generator=torch.Generator().manual_seed(seed))
        codes = torch.randn(rows // 2, 24, generator=g) * (torch.rand(rows // 2, 24, generator=g) < 0.15)
        return codes @ atoms + 0.01 * torch.randn(rows // 2, d, generator=g)

    build_cache(folder, {"dtype": "float32", "kind": "toy", "seed": seed}, 2, shard, progress=False)
    return ActivationCache(folder)


def test_table2_driver_on_a_cache_has_the_paper_columns_and_one_row_per_model(tmp_path):
    train = _random_cache(tmp_path / "train", 512, 16, seed=0)
    heldout = _random_cache(tmp_path / "heldout", 256, 16, seed=0)
    stream = train.stream(64, seed=0, buffer_rows=256)
    x_eval = heldout_activations(heldout, 128)
    assert torch.allclose(x_eval.norm(dim=1), torch.ones(len(x_eval)))
    cfg = TrainConfig(n_steps=stream.steps_per_pass, batch_size=64, log_every=2, checkpoint_every=4, device="cpu",
                      geometric_median_samples=min(8192, stream.steps_per_pass * 64))
    sae_cfgs = {a: SAEConfig(d_in=train.d_in, d_sae=32, k=3, architecture=a) for a in ARCHITECTURES
                if a in ("topk", "abstopk", "isae", "isae_me")}
    result = pipeline.train_and_evaluate("toy", stream, x_eval, sae_cfgs, cfg, 3, out_dir=tmp_path / "out",
                                            progress=False)
    table = pipeline.summarise(result.runs, result.pairs)
    required = ["setting", "model"] + [c for m in pipeline.TABLE_METRICS for c in (m, f"{m}_sd")] + ["n_seeds",
                                                                                                       "n_pairs"]
    assert list(table.columns[: len(required)]) == required
    assert set(zip(table["variant"], table["trained"])) == {(a, t) for a in sae_cfgs for t in (True, False)}
    trained = table[table["trained"]]
    assert list(trained["model"]) == list(reporting.P1_MODEL_LABELS)
    assert (trained["n_seeds"] == 3).all() and (trained["n_pairs"] == math.comb(3, 2)).all()
    assert np.isfinite(trained[list(pipeline.TABLE_METRICS)].to_numpy()).all()
    assert stream.steps_per_pass == 512 // 64 and result.log["step"].max() == stream.steps_per_pass
    assert sorted(d.name for d in (tmp_path / "out" / "saes").iterdir()) == sorted(
        f"toy_{a}_seed{s}" for a in sae_cfgs for s in range(3))
    claims = reporting.check_real_claims(table, "default")
    assert set(claims["setting"]) == {"toy"} and set(claims["verdict"]) <= set(VERDICTS)
    trained_only = ~claims["claim"].str.contains("untrained")
    assert (claims.loc[trained_only, "n"].dropna() == 3).all()  # every trained quantity stood on the three seeds
    # the random-init floor is one pair of two untrained seeds: it cannot decide its claim
    assert claims.loc[~trained_only, "verdict"].tolist() == ["inconclusive"]


def _labelled_cache(folder, rows: int, d: int, seed: int) -> ActivationCache:
    """Two shards of rows around one of two centres per label (rows near their own centre share its label)."""
    def shard(i):
        g = torch.Generator().manual_seed(seed * 100 + i)
        centres = torch.randn(2, d, generator=torch.Generator().manual_seed(seed)) * 5
        labels = torch.arange(rows // 2) % 2
        acts = centres[labels] + 0.1 * torch.randn(rows // 2, d, generator=g)
        return {"acts": acts, "labels": labels.to(torch.int32)}

    build_cache(folder, {"dtype": "float32", "kind": "toy-labelled", "seed": seed}, 2, shard, progress=False)
    return ActivationCache(folder)


def _train_lm(caches, p, out):
    """Notebook 03's experiment on the LM setting alone, run in this process."""
    from isae.experiments.executor import execute
    from isae.experiments.p1_real import P1Real

    settings, _ = execute(P1Real(p, caches, settings=("smollm2",)), out, device="cpu", progress=False,
                          results_from=None, log=lambda line: None)
    return settings["smollm2"]


def test_real_driver_trains_a_setting_and_builds_the_floor_and_the_first_seeds(tmp_path):
    from isae.experiments import p1_real
    from isae.experiments.profiles import real_profile

    caches = {"lm_train": _random_cache(tmp_path / "train", 512, 16, seed=0),
              "lm_heldout": _random_cache(tmp_path / "heldout", 256, 16, seed=0)}
    p = real_profile("smoke", d_sae=32, k=3, batch_size=64, n_seeds=2, n_eval=64, models=("topk", "abstopk"),
                     log_every=4, checkpoint_every=8)
    setting = _train_lm(caches, p, tmp_path / "out")
    assert setting.train_cfg.n_steps == setting.stream.steps_per_pass == 512 // 64
    assert setting.n_eval == 64 and "16" in setting.describe(p)
    assert list(setting.first_seeds()) == ["TopK", "AbsTopK"]
    assert all(sae.seed == 0 for sae in setting.first_seeds().values())
    matched = p1_real.matched_cosines_with_floor({"smollm2": setting})
    by_model = matched.groupby("model", sort=False)
    assert list(by_model.groups) == ["TopK", "AbsTopK", "random init (untrained)"]
    assert (by_model.size() == 32).all()  # every atom matched once
    floor = matched[matched["model"] == "random init (untrained)"]
    assert not floor["trained"].any() and set(floor["seed_a"]) == {1000}
    # the matched |cos| of the trained pairs average to the runs' DCS
    dcs = setting.result.pairs.set_index("model")["dcs"]
    assert by_model["abs_cos"].mean()["TopK"] == pytest.approx(dcs["TopK"], abs=1e-5)
    table = pipeline.summarise(setting.result.runs, setting.result.pairs)
    floor_table = p1_real.dcs_above_floor(table)
    topk_floor = table.loc[~table["trained"] & (table["variant"] == "topk"), "dcs"].item()
    assert floor_table.loc["smollm2", "floor"] == topk_floor
    assert floor_table.loc["smollm2", "trained_max"] == table.loc[table["trained"], "dcs"].max()


def test_paper_table2_is_renamed_to_the_settings_that_stand_in_for_it():
    from isae.experiments import p1_real

    renamed = p1_real.paper_table2_as_ours(reporting.paper_table(2))
    assert set(renamed["setting"]) == set(p1_real.PAPER_SETTING)
    assert (renamed["setting"].map(p1_real.PAPER_SETTING) == renamed["paper_setting"]).all()


def test_cache_checks_describe_caches_and_find_same_label_neighbours(tmp_path):
    from isae.experiments import caching

    cache = _labelled_cache(tmp_path / "labelled", 256, 8, seed=1)
    agreement, chance = caching.neighbour_label_agreement(cache, n_queries=20, k=3)
    assert agreement == 1.0 and chance == pytest.approx(0.5)
    described = caching.describe_caches({"vision_train": cache})
    assert described.loc[0, ["cache", "rows", "d_in"]].tolist() == ["vision_train", 256, 8]


def test_real_driver_curve_ends_at_the_final_metrics_and_passes_multiply_the_steps(tmp_path):
    from isae.experiments import p1_real
    from isae.experiments.profiles import real_profile

    caches = {"lm_train": _random_cache(tmp_path / "train", 512, 16, seed=0),
              "lm_heldout": _random_cache(tmp_path / "heldout", 256, 16, seed=0)}
    p = real_profile("smoke", d_sae=32, k=3, batch_size=64, n_seeds=2, n_eval=64, n_curve=64, models=("topk",),
                     log_every=4, checkpoint_every=8, passes=2, curve_points=3, recipe="authors+lr")
    setting = _train_lm(caches, p, tmp_path / "out")
    assert setting.train_cfg.n_steps == 2 * setting.stream.steps_per_pass == 16
    assert setting.train_cfg.warmup_steps == 100 and setting.sae_cfgs["topk"].aux_k == 8  # the authors' recipe
    curve = p1_real.curves({"smollm2": setting})
    assert sorted(curve["step"].unique()) == [0, 8, 16]
    # on the same rows (n_curve = n_eval), the curve's last point is the final evaluation, computed independently
    end_pair = curve[(curve["step"] == 16) & (curve["level"] == "pair")].iloc[0]
    final = setting.result.pairs[setting.result.pairs["trained"].astype(bool)].iloc[0]
    for metric in ("dcs", "sae_iou", "oracle_iou"):
        assert end_pair[metric] == pytest.approx(final[metric], abs=1e-6)


#: Crafted DCS curves at the default profile's six curve steps (0, 20, …, 100% of a run with the authors' decay over
#: the last 20%): the rule compares 40% with 80%.
CURVES = {
    "flat": [0.1, 0.6, 0.70, 0.70, 0.70, 0.70],
    "rising": [0.1, 0.3, 0.40, 0.50, 0.60, 0.70],
    "decay jump": [0.1, 0.6, 0.70, 0.70, 0.70, 0.80],  # moves only while the learning rate decays
    "noisy": [0.1, 0.6, 0.70, 0.69, 0.71, 0.705],  # wiggles by less than the seed spread
}


def _curve(curves: dict[str, list[float]], spread: float, steps=(0, 20, 40, 60, 80, 100)) -> pd.DataFrame:
    """A two-seed-pair curve of one setting: each model's pair metrics follow ``curves[model]``, the two pairs
    ±spread/√2 apart (sd = spread); run metrics flat."""
    rows = []
    for model, values in curves.items():
        for step, base in zip(steps, values):
            for sign in (-1, 1):
                pair = {m: base + sign * spread / math.sqrt(2) for m in ("dcs", "sae_iou", "oracle_iou")}
                rows.append({"setting": "s", "model": model, "step": step, "level": "pair", **pair})
                rows.append({"setting": "s", "model": model, "step": step, "level": "run", "mse": 0.2,
                             "dead_frac": 0.0, "r_s": 0.1})
    return pd.DataFrame(rows)


def test_convergence_flags_a_curve_still_rising_before_the_decay_and_nothing_else():
    conv = reporting.convergence(_curve(CURVES, spread=0.02), decay_frac=0.2)
    dcs = conv[conv["metric"] == "dcs"].set_index("model")
    assert dict(dcs["moving"]) == {"flat": False, "rising": True, "decay jump": False, "noisy": False}
    assert (dcs["from_step"] == 40).all() and (dcs["to_step"] == 80).all() and (dcs["end_step"] == 100).all()
    assert dcs.loc["rising", "change"] == pytest.approx(0.2)
    assert dcs.loc["rising", "seed_spread"] == pytest.approx(0.02)
    assert dcs.loc["decay jump", "decay_change"] == pytest.approx(0.1)
    assert dcs.loc["decay jump", "change"] == pytest.approx(0.0)
    assert not conv[conv["metric"] == "mse"]["moving"].any()


def test_convergence_window_follows_the_learning_rate_schedule():
    steps = [0, 20, 40, 60, 80, 100]
    assert reporting.convergence_window(steps, 0.2) == (40, 80)  # the authors' decay: the last doubling before it
    assert reporting.convergence_window(steps, 0.0) == (40, 100)  # a constant rate: the last doubling of the run
    from isae.pipeline import curve_steps
    n = 18_576  # notebook 03's reference run: 80% of it is 14,860.8, its curve point 14,861
    assert reporting.convergence_window(list(curve_steps(n, 6)), 0.2) == (7430, 14861)  # 40% → 80%, not 20% → 60%
    with pytest.raises(ValueError, match="curve_points"):
        reporting.convergence_window([0, 50, 100], 0.2)  # no two points before the decay


def test_a_moving_metric_leaves_a_far_verdict_standing_and_a_near_one_not_tested():
    # TopK's DCS still rises by 0.2 per doubling: far below its distance from the random-init floor, not from 0.6
    conv = reporting.convergence(_curve({"TopK": CURVES["rising"]}, spread=0.02), decay_frac=0.2)
    movement = reporting.still_moving(conv)
    assert movement == {("s", "TopK", m): pytest.approx(0.2) for m in ("dcs", "sae_iou", "oracle_iou")}
    settled = reporting.settled(conv)  # the other metrics, each with its change: together, every curve metric
    assert set(settled).isdisjoint(movement) and len(settled) + len(movement) == len(conv)
    assert settled[("s", "TopK", "mse")] == pytest.approx(conv.set_index("metric").loc["mse", "change"])
    dcs = engine.from_seeds("TopK DCS", 0.7, 0.02, 3, "pair", ("s", "TopK", "dcs"))
    tests = {"far": Compare(dcs, ">", engine.from_seeds("floor", 0.1, 0.01, 3, "pair")),
             "near": Compare(dcs, ">", engine.from_seeds("other", 0.6, 0.01, 3, "pair"))}
    table = engine.claims_table([Claim("P1", name, "s", test) for name, test in tests.items()], "default", movement)
    assert dict(zip(table["claim"], table["verdict"])) == {"far": "holds", "near": "not tested"}


def test_the_ce_claim_follows_the_lm_mse_while_that_still_moves():
    """The CE loss is measured once, after training: while the same models' MSE ranking on the spliced setting is
    not tested (still moving), neither is the CE claim; once it is decided, the CE numbers decide alone."""
    table = _table(GOOD, "lm")
    ce = {"TopK": [3.3, 3.31, 3.32], "AbsTopK": [3.2, 3.21, 3.22], "iSAE": [3.1, 3.11, 3.12],
          "iSAE-ME": [3.0, 3.01, 3.02]}
    ours = pd.DataFrame([{"model": m, "ce_sae": v} for m, vs in ce.items() for v in vs])

    def ce_row(movement, downstream_of="lm"):
        claims = reporting.check_real_claims(table, "default", downstream=ours, downstream_setting="lm (CE)",
                                             downstream_of=downstream_of, movement=movement)
        return claims[claims["setting"] == "lm (CE)"].iloc[0]

    moving = {("lm", "iSAE-ME", "mse"): -0.5}  # iSAE-ME's MSE still falls by far more than its gaps
    assert _verdict(reporting.check_real_claims(table, "default", movement=moving), "lowest MSE") == "not tested"
    row = ce_row(moving)
    assert row["verdict"] == "not tested" and "follows lm's MSE" in row["reason"] and row["still_moving"]
    assert ce_row({})["verdict"] == "holds"  # the MSE ranking settled: the CE numbers decide
    assert ce_row(moving, downstream_of=None)["verdict"] == "holds"  # no proxy named: the CE alone
