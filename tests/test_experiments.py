"""Experiment drivers: tables have the paper's columns and the run-key columns, seeds and pairs are counted,
profiles validate."""

import math

import pandas as pd
import pytest
import torch

from isae import pipeline
from isae.core.models import ARCHITECTURES
from isae.core.runs import RunKey
from isae.eval import metrics
from isae.experiments import p1_synthetic as experiments
from isae.experiments.profiles import PROFILES, synthetic_profile
from isae.report import p1 as reporting


@pytest.fixture(scope="module")
def tiny_result(tmp_path_factory):
    p = synthetic_profile("smoke", n_steps=6, n_seeds=3, settings=("iid",), n_eval=128, log_every=3,
                          checkpoint_every=3)
    return p, _run(experiments.P1Synthetic(p, ("authors",)), tmp_path_factory.mktemp("tiny"))["authors"]["iid"]


def test_summary_has_the_paper_columns_and_counts_every_seed_pair(tiny_result):
    p, result = tiny_result
    table = pipeline.summarise(result.runs, result.pairs)
    for metric in pipeline.TABLE_METRICS:
        assert {metric, f"{metric}_sd"} <= set(table.columns)
    trained = table[table["trained"]]
    assert list(trained["model"]) == [ARCHITECTURES[a] for a in p.models]
    assert list(trained["variant"]) == list(p.models)
    assert (trained["n_seeds"] == p.n_seeds).all()
    assert (trained["n_pairs"] == math.comb(p.n_seeds, 2)).all()
    untrained = table[~table["trained"]]
    # one random-init floor per architecture (every pair of its seeds), listed after every trained model, labelled
    # from its key
    assert list(untrained["variant"]) == list(p.models)
    assert list(untrained["model"]) == [f"{ARCHITECTURES[a]} (untrained)" for a in p.models]
    n_floor = len(pipeline.RANDOM_INIT_SEEDS)
    assert n_floor >= 3  # the claims engine calls a comparison with fewer than 3 inconclusive
    assert (untrained["n_pairs"] == math.comb(n_floor, 2)).all() and (untrained["n_seeds"] == n_floor).all()
    assert table.index[table["trained"]].max() < table.index[~table["trained"]].min()


def test_run_and_pair_tables_carry_the_run_key(tiny_result):
    p, result = tiny_result
    runs, pairs = result.runs, result.pairs
    assert {"variant", "seed", "trained"} <= set(runs) and {"variant", "seed_a", "seed_b", "trained"} <= set(pairs)
    assert set(result.saes) == {RunKey(a, s) for a in p.models for s in range(p.n_seeds)}
    # the human labels are rendered from the key columns
    assert list(runs["run"]) == [f"{v}/seed{s}" for v, s in zip(runs["variant"], runs["seed"])]
    assert list(pairs["pair"]) == [f"{v}/seed{a} vs {v}/seed{b}"
                                   for v, a, b in zip(pairs["variant"], pairs["seed_a"], pairs["seed_b"])]
    trained = runs[runs["trained"]]
    assert sorted(trained["seed"].unique()) == list(range(p.n_seeds))
    assert (runs.loc[~runs["trained"], "seed"] >= min(pipeline.RANDOM_INIT_SEEDS)).all()
    assert (pairs["seed_a"] < pairs["seed_b"]).all()
    assert set(result.log["variant"]) == set(p.models) and result.log["trained"].all()


def test_seed_pairs_pair_only_runs_of_one_variant_and_training_state():
    keys = [RunKey("topk", 0), RunKey("topk", 1), RunKey("abstopk", 0), RunKey("topk", 1000, trained=False),
            RunKey("topk", 1001, trained=False), RunKey("abstopk", 1)]
    assert pipeline.seed_pairs(keys) == [(RunKey("topk", 0), RunKey("topk", 1)),
                                            (RunKey("abstopk", 0), RunKey("abstopk", 1)),
                                            (RunKey("topk", 1000, False), RunKey("topk", 1001, False))]


def test_untrained_saes_is_keyed_as_untrained(tiny_result):
    p, _ = tiny_result
    from isae.core.models import SAEConfig
    from isae.data.synthetic import SyntheticStream

    stream = SyntheticStream(experiments.synthetic_data_config("iid", p), p.batch_size, seed=p.data_seed)
    saes = pipeline.untrained_saes(SAEConfig(d_in=p.d_in, d_sae=p.d_sae, k=p.k, architecture="isae"), stream,
                                      64, "cpu")
    assert list(saes) == [RunKey("isae", s, trained=False) for s in (1000, 1001, 1002)]
    assert [sae.seed for sae in saes.values()] == [1000, 1001, 1002]


def test_coherence_separates_orthogonal_from_repeated_atoms(tiny_result):
    assert metrics.coherence(torch.eye(4)) == {"mean |cos|": 0.0, "mean max |cos|": 0.0}
    repeated = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])
    assert metrics.coherence(repeated)["mean max |cos|"] == pytest.approx(2 / 3)
    p, _ = tiny_result
    table = experiments.dictionary_coherence(p)
    assert list(table.index) == [(r, s) for r in ("paper", "authors") for s in p.settings]
    assert (table.to_numpy() > 0).all()


def test_summary_means_equal_the_per_pair_means(tiny_result):
    _, result = tiny_result
    table = pipeline.summarise(result.runs, result.pairs).set_index(["setting", "model"])
    by_hand = result.pairs.groupby(["setting", "model"])["dcs"].agg(["mean", "std"])
    pd.testing.assert_series_equal(table.loc[by_hand.index, "dcs"], by_hand["mean"], check_names=False)
    pd.testing.assert_series_equal(table.loc[by_hand.index, "dcs_sd"], by_hand["std"], check_names=False)


def test_side_by_side_shows_our_value_and_the_papers(tiny_result):
    _, result = tiny_result
    table = pipeline.summarise(result.runs, result.pairs)
    shown = reporting.side_by_side(table, reporting.paper_table(1))
    assert shown.loc[("iid", "TopK"), ("dcs", "paper")] == "0.606"
    assert shown.loc[("iid", "TopK"), ("dcs", "ours")].startswith(f"{table.loc[0, 'dcs']:.3f}")


def test_claims_are_checked_for_every_setting(tiny_result):
    _, result = tiny_result
    table = pipeline.summarise(result.runs, result.pairs)
    claims = reporting.check_synthetic_claims(table, "default")
    assert set(claims["setting"]) == {"iid"}
    assert claims["claim"].str.contains("i.i.d.").any() and not claims["claim"].str.contains("mixture").any()
    # the random-init comparison reads the untrained TopK row through the key columns
    floor = table.loc[~table["trained"] & (table["variant"] == "topk"), "dcs"].item()
    row = claims[claims["claim"].str.startswith("Trained SAEs")].iloc[0]
    assert f"untrained TopK DCS {floor:.3f}" in row["ours"]
    # three trained seeds and a floor of three random-init seeds: decided by the difference against 2 se alone
    assert row["n"] == 3
    d, two_se = row["difference"], 2 * row["difference_se"]
    assert row["verdict"] == ("holds" if d > two_se else "fails" if d < -two_se else "inconclusive")
    assert row["paper_verdict"] == "missing"  # P1 reports no random-init baseline
    assert (claims.loc[claims["claim"] == "AbsTopK beats TopK on DCS", "paper_verdict"] == "holds").all()
    assert (reporting.check_synthetic_claims(table, "smoke")["verdict"] == "not tested").all()


def test_unknown_profile_or_parameter_is_refused_with_the_valid_choices():
    with pytest.raises(ValueError, match="profile='laptop'.*smoke"):
        synthetic_profile("laptop")
    with pytest.raises(ValueError, match="n_stepz"):
        synthetic_profile("smoke", n_stepz=3)


@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_builds_and_takes_overrides(profile):
    p = synthetic_profile(profile, n_steps=7, n_seeds=2)
    assert (p.n_steps, p.n_seeds) == (7, 2)


def test_paper_table_matches_the_published_numbers():
    t1 = reporting.paper_table(1)
    row = t1[(t1.setting == "iid") & (t1.model == "iSAE-ME")].iloc[0]
    assert (row.mse, row.sae_iou, row.dcs) == (0.001, 0.997, 0.999)
    with pytest.raises(ValueError, match="table=9"):
        reporting.paper_table(9)


def test_authors_protocol_puts_the_authors_readings_in_the_paper_columns(tiny_result):
    _, result = tiny_result
    table = pipeline.summarise(result.runs, result.pairs)
    assert pipeline.with_protocol(table, "paper") is table
    authors = pipeline.with_protocol(table, "authors")
    for column, reading in pipeline.AUTHORS_READINGS.items():
        assert authors[column].equals(table[reading]) and authors[f"{column}_sd"].equals(table[f"{reading}_sd"])
        assert not table[column].equals(table[reading])  # the readings do differ
    for same in ("sae_iou", "dcs", "r_s", "oracle_iou"):
        assert authors[same].equals(table[same])
    with pytest.raises(ValueError, match="protocol='x'"):
        pipeline.with_protocol(table, "x")


def _run(exp, out):
    """``exp`` run in this process, as a notebook runs it."""
    from isae.experiments.executor import execute

    return execute(exp, out, device="cpu", progress=False, results_from=None, log=lambda line: None)[0]


def test_recipes_are_trained_side_by_side_and_tabulated_per_recipe(tmp_path):
    p = synthetic_profile("smoke", n_steps=4, n_seeds=2, settings=("iid",), models=("abstopk", "isae_me"), n_eval=64,
                          log_every=2, checkpoint_every=2)
    results = _run(experiments.P1Synthetic(p, ("authors", "paper")), tmp_path)
    runs, pairs, log = pipeline.combine(results)
    assert set(runs["recipe"]) == set(pairs["recipe"]) == set(log["recipe"]) == {"authors", "paper"}
    table = pipeline.summarise(runs, pairs)
    assert list(table.columns[:2]) == ["recipe", "setting"]
    assert (table.groupby("recipe").size() == 4).all()  # 2 trained models + 2 random-init baselines per recipe
    # the headline recipe writes to out_dir itself, the other one beside it
    assert (tmp_path / "saes" / "iid_isae_me_seed0").is_dir()
    assert (tmp_path / "recipe-paper" / "saes" / "iid_isae_me_seed0").is_dir()
    # the two recipes trained different models on different (centred vs not) data
    a, b = results["authors"]["iid"], results["paper"]["iid"]
    assert a.saes[RunKey("isae_me", 0)].cfg.me_init == "authors" and b.saes[RunKey("isae_me", 0)].cfg.me_init == "zero"
    assert torch.allclose(a.x_eval.mean(1), torch.zeros(len(a.x_eval)), atol=1e-5)
    assert not torch.allclose(b.x_eval.mean(1), torch.zeros(len(b.x_eval)), atol=1e-3)
    claims = reporting.check_synthetic_claims_by_recipe(table, "smoke")
    assert {s.split(", ")[1] for s in claims["setting"]} == {"authors recipe", "paper recipe"}
    assert set(claims["verdict"]) <= {"not tested", "missing"}  # smoke decides nothing; 2 of 4 models: missing
    with pytest.raises(ValueError, match="recipes="):
        experiments.P1Synthetic(p, ("paper", "paper"))


def test_several_data_seeds_train_on_their_own_dictionaries_and_pool_in_the_summary(tmp_path):
    p = synthetic_profile("smoke", n_steps=4, n_seeds=2, n_data_seeds=2, settings=("iid",), models=("abstopk",),
                          n_eval=64, log_every=2, checkpoint_every=2)
    results = _run(experiments.P1Synthetic(p, ("paper",)), tmp_path)["paper"]
    assert list(results) == ["iid", "iid_data1"]
    assert not torch.equal(results["iid"].x_eval, results["iid_data1"].x_eval)
    assert (tmp_path / "checkpoints" / "iid_data1").is_dir()
    assert (tmp_path / "saes" / "iid_data1_abstopk_seed0").is_dir()
    runs, pairs, _ = pipeline.combine(results)
    assert sorted(set(pairs["data_seed"])) == [0, 1] and set(runs["setting"]) == {"iid"}
    trained = pipeline.summarise(runs, pairs).query("trained")
    assert list(trained["n_seeds"]) == [4] and list(trained["n_pairs"]) == [2]  # one pair per data seed, pooled
