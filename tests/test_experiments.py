"""Experiment drivers: tables have the paper's columns, seeds and pairs are counted, profiles validate."""

import math

import pandas as pd
import pytest

from isae.experiments import p1_synthetic as experiments
from isae.report import p1 as reporting
from isae.experiments.profiles import PROFILES, synthetic_profile


@pytest.fixture(scope="module")
def tiny_result():
    p = synthetic_profile("smoke", n_steps=6, n_seeds=3, settings=("iid",), n_eval=128, log_every=3,
                          checkpoint_every=3)
    return p, experiments.run_synthetic_setting("iid", p, device="cpu", progress=False)


def test_summary_has_the_paper_columns_and_counts_every_seed_pair(tiny_result):
    p, result = tiny_result
    table = experiments.summarise(result.runs, result.pairs)
    for metric in experiments.TABLE_METRICS:
        assert {metric, f"{metric}_sd"} <= set(table.columns)
    trained = table[~table["model"].str.contains("untrained")]
    assert set(trained["model"]) == {"TopK", "AbsTopK", "iSAE", "iSAE-ME"}
    assert (trained["n_seeds"] == p.n_seeds).all()
    assert (trained["n_pairs"] == math.comb(p.n_seeds, 2)).all()
    untrained = table[table["model"].str.contains("untrained")]
    assert len(untrained) == 4 and (untrained["n_pairs"] == 1).all()


def test_summary_means_equal_the_per_pair_means(tiny_result):
    _, result = tiny_result
    table = experiments.summarise(result.runs, result.pairs).set_index(["setting", "model"])
    by_hand = result.pairs.groupby(["setting", "model"])["dcs"].agg(["mean", "std"])
    pd.testing.assert_series_equal(table.loc[by_hand.index, "dcs"], by_hand["mean"], check_names=False)
    pd.testing.assert_series_equal(table.loc[by_hand.index, "dcs_sd"], by_hand["std"], check_names=False)


def test_side_by_side_shows_our_value_and_the_papers(tiny_result):
    _, result = tiny_result
    table = experiments.summarise(result.runs, result.pairs)
    shown = reporting.side_by_side(table, reporting.paper_table(1))
    assert shown.loc[("iid", "TopK"), ("dcs", "paper")] == "0.606"
    assert shown.loc[("iid", "TopK"), ("dcs", "ours")].startswith(f"{table.loc[0, 'dcs']:.3f}")


def test_claims_are_checked_for_every_setting(tiny_result):
    _, result = tiny_result
    claims = reporting.check_synthetic_claims(experiments.summarise(result.runs, result.pairs))
    assert len(claims) >= 6 and claims["holds"].dtype == bool and set(claims["setting"]) == {"iid"}


def test_unknown_profile_or_parameter_is_refused_with_the_valid_choices():
    with pytest.raises(ValueError, match="profile='laptop'.*smoke"):
        synthetic_profile("laptop")
    with pytest.raises(ValueError, match="n_stepz"):
        synthetic_profile("smoke", n_stepz=3)
    assert PROFILES == ("smoke", "default", "paper")


def test_paper_table_matches_the_published_numbers():
    t1 = reporting.paper_table(1)
    row = t1[(t1.setting == "iid") & (t1.model == "iSAE-ME")].iloc[0]
    assert (row.mse, row.sae_iou, row.dcs) == (0.001, 0.997, 0.999)
    with pytest.raises(ValueError, match="table=9"):
        reporting.paper_table(9)
