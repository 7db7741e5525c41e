"""The scale sweep: sizes at P1's ratios, the points' validation, the summary and the smallest-scale rule."""

from __future__ import annotations

import pandas as pd
import pytest

from isae.experiments import p1_scale
from isae.experiments.profiles import SCALE_POINTS, SCALE_RECIPES, synthetic_profile
from isae.train.recipe import recipe


def test_p1_sizes_are_reproduced_at_n_768_and_the_ratios_kept_below():
    assert p1_scale.p1_ratio_sizes(768) == {"d_in": 768, "n_atoms": 4096, "d_sae": 4096, "k": 40}
    assert p1_scale.p1_ratio_sizes(96) == {"d_in": 96, "n_atoms": 512, "d_sae": 512, "k": 5}
    assert p1_scale.p1_ratio_sizes(16)["k"] == 1  # k never rounds to 0
    with pytest.raises(ValueError, match="d_in=1"):
        p1_scale.p1_ratio_sizes(1)


def test_points_are_checked_before_any_training():
    pts = p1_scale.scale_points([[32, 100], [64, 300]])
    assert [(p.d_in, p.n_steps, p.slug) for p in pts] == [(32, 100, "N32_T100"), (64, 300, "N64_T300")]
    with pytest.raises(ValueError, match="n_steps=0"):
        p1_scale.scale_points([[32, 0]])
    with pytest.raises(ValueError, match="distinct"):
        p1_scale.scale_points([[32, 10], [32, 10]])
    with pytest.raises(ValueError, match=r"\[d_in, n_steps\] pairs"):
        p1_scale.scale_points([[32]])
    prof = pts[1].profile(synthetic_profile("smoke"))
    assert (prof.d_in, prof.n_atoms, prof.d_sae, prof.k, prof.n_steps) == (64, 341, 341, 3, 300)
    assert prof.batch_size == synthetic_profile("smoke").batch_size


def test_every_profile_has_valid_points_and_recipes():
    for profile, points in SCALE_POINTS.items():
        assert p1_scale.scale_points(points)
        for name in SCALE_RECIPES[profile]:
            recipe(name)


def _cols(d, t):
    return {"recipe": "authors", "setting": "iid", "model": "iSAE-ME", "d_in": d, "n_atoms": 5 * d, "k": 2,
            "n_steps": t, "wall_s": 1.0}


def _tables():
    rows = [(32, 1000, 0.90, 0.93), (32, 3000, 0.96, 0.98), (64, 1000, 0.97, 0.99), (64, 3000, 0.5, 0.5)]
    runs = pd.DataFrame([{**_cols(d, t), "mse": 0.1, "mse_fvu": 0.2, "gt_recovered": 0.9, "seed": s}
                         for d, t, _, _ in rows for s in (0, 1, 2)])
    pairs = pd.DataFrame([{**_cols(d, t), "sae_iou": iou + e, "oracle_iou": iou, "dcs": dcs, "sae_l2": 0.1,
                           "sae_l2_authors": 0.1} for d, t, iou, dcs in rows for e in (-0.01, 0.0, 0.01)])
    return runs, pairs


def test_summary_and_the_smallest_point_reaching_the_goal():
    table = p1_scale.summarise_scale(*_tables())
    assert len(table) == 4 and list(table["d_in"]) == [32, 32, 64, 64]
    row = table[(table["d_in"] == 32) & (table["n_steps"] == 3000)].iloc[0]
    assert row["sae_iou"] == pytest.approx(0.96) and row["sae_iou_sd"] == pytest.approx(0.01)
    assert row["mse"] == pytest.approx(0.2)  # the authors' reading (FVU), as the headline table
    reached = p1_scale.smallest_scale(table)
    assert [(int(r.d_in), int(r.n_steps)) for r in reached.itertuples()] == [(32, 3000), (64, 1000)]
    assert p1_scale.smallest_scale(table, goal={"sae_iou": 0.99}).empty


def test_a_goal_not_reached_while_still_rising_is_not_tested():
    table = p1_scale.summarise_scale(*_tables())
    claims = p1_scale.headline_claims(table, "default").set_index("setting")
    # N=64 at 1000 steps: SAE IoU 0.97 ± 0.008 and DCS 0.99 clear 0.95 / 0.97 beyond 2 se
    assert claims.loc["iid", "verdict"] == "holds" and "N=64" in claims.loc["iid", "ours"]
    assert claims.loc["iid", "paper_verdict"] == "holds"  # P1's iSAE-ME: 0.997 / 0.999
    strict = p1_scale.headline_claims(table, "default", goal={"sae_iou": 0.99}).set_index("setting")
    # N=32 rose 0.90 → 0.96 (sd 0.01): still rising by more than its distance to the goal, so no verdict
    assert p1_scale.still_rising(table) == [32]
    assert strict.loc["iid", "verdict"] == "not tested" and "still moving" in strict.loc["iid", "reason"]
    flat = table[table["d_in"] == 64]  # fell with steps: a fail, not "not tested"
    assert p1_scale.headline_claims(flat, "default", goal={"sae_iou": 0.99})["verdict"].iloc[0] == "fails"
    assert p1_scale.headline_claims(table, "smoke")["verdict"].iloc[0] == "not tested"
