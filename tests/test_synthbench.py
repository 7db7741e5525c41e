"""SynthSAEBench through SAELens (isae.data.synthbench, notebook 10): the data are seeded and cached by content, the
scaled hierarchy keeps the benchmark's share, and the metrics are SAELens's own, checked on known answers."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

pytest.importorskip("sae_lens")

from isae import pipeline  # noqa: E402
from isae.core.models import SAE, SAEConfig  # noqa: E402
from isae.data.synthbench import (  # noqa: E402
    BENCHMARK,
    NODES_PER_TREE,
    SynthBenchConfig,
    SynthBenchData,
    build_model,
    cached_train_rows,
    feature_depths,
    true_directions,
)
from isae.experiments import p1_synthbench  # noqa: E402

CFG = SynthBenchConfig(256, 32, orthogonalization_steps=2)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_model(CFG, tmp_path_factory.mktemp("models"), log=lambda s: None)


def test_the_hierarchy_keeps_the_benchmarks_share_of_features(model):
    share = BENCHMARK["total_root_nodes"] * NODES_PER_TREE / BENCHMARK["num_features"]  # 10,880 / 16,384
    depth = feature_depths(model)
    assert CFG.total_root_nodes == 2 and NODES_PER_TREE == 85
    assert int((depth >= 0).sum()) == 2 * 85 and abs(170 / 256 - share) < 0.01
    assert [int((depth == d).sum()) for d in range(4)] == [2, 8, 32, 128]  # roots, then 4, 16, 64 per root


def test_a_built_model_is_cached_by_content(model, tmp_path):
    again = build_model(CFG, tmp_path, log=lambda s: None)
    assert torch.equal(true_directions(again), true_directions(model))
    read = build_model(CFG, tmp_path, log=lambda s: (_ for _ in ()).throw(AssertionError("rebuilt: " + s)))
    assert torch.equal(true_directions(read), true_directions(model))
    other = SynthBenchConfig(256, 32, orthogonalization_steps=2, seed=7)
    assert not torch.equal(true_directions(build_model(other)), true_directions(model))


def test_rows_are_seeded_scaled_and_held_out(model, tmp_path):
    data = SynthBenchData(model, CFG, seed=0)
    rows = data.train_rows(5000)  # two chunks
    assert torch.equal(rows, SynthBenchData(model, CFG, seed=0).train_rows(5000))
    assert torch.equal(rows[:4096], data.train_rows(4096))  # whole chunks do not depend on n
    assert not torch.equal(rows[:100], SynthBenchData(model, CFG, seed=1).train_rows(100))
    assert rows.norm(dim=1).mean() == pytest.approx(1.0, rel=0.05)  # one constant: mean norm 1
    x, f = data.held_out(512)
    assert f.shape == (512, 256) and (f >= 0).all()
    active = x[(f > 0).any(1)]  # a row with no feature active is the bias alone, in any sample
    assert torch.cdist(active, rows).min() > 0  # no held-out row was trained on
    assert torch.equal(cached_train_rows(data, 5000, tmp_path, log=lambda s: None), rows)
    assert torch.equal(cached_train_rows(data, 5000, tmp_path, log=lambda s: 1 / 0), rows)  # read, not drawn
    assert len(list(tmp_path.glob("train_rows_*.pt"))) == 1
    unit = SynthBenchData(model, CFG, seed=0, input_scaling="unit_rows").train_rows(10)
    torch.testing.assert_close(unit.norm(dim=1), torch.ones(10))
    with pytest.raises(ValueError, match="input_scaling='none'"):
        SynthBenchData(model, CFG, input_scaling="none")


def test_saelens_metrics_are_perfect_for_the_true_dictionary_and_low_at_random(model):
    truth = true_directions(model)
    data = SynthBenchData(model, CFG, seed=0)
    x, f = data.held_out(512)
    sae = SAE(SAEConfig(d_in=32, d_sae=256, k=4, architecture="topk"), seed=0)
    random = p1_synthbench.saelens_metrics(sae, x, f, truth)
    with torch.no_grad():
        sae.W_dec.copy_(truth)
    assert p1_synthbench.saelens_metrics(sae, x, f, truth)["mcc"] == pytest.approx(1.0, abs=1e-5)
    assert p1_synthbench.saelens_metrics(sae, x, f, truth)["uniqueness"] == pytest.approx(1.0)
    assert random["mcc"] < 0.7 and 0 <= random["f1"] <= 1
    assert torch.allclose(p1_synthbench.best_cosines(sae, truth), torch.ones(256), atol=1e-5)


def test_recovery_by_firing_rate_and_depth_counts_every_feature():
    features = pd.DataFrame({"model": "TopK", "seed": [0, 0, 0, 1, 1, 1], "feature": [0, 1, 2, 0, 1, 2],
                             "firing_rate": [0.3, 0.01, 0.0, 0.3, 0.01, 0.0], "depth": [0, 1, -1, 0, 1, -1],
                             "best_cos": [0.95, 0.95, 0.2, 0.95, 0.5, 0.2]})
    depth = p1_synthbench.recovery_by(features, "depth").set_index("group")
    assert depth.loc[0, "recovered"] == 1.0 and depth.loc[1, "recovered"] == 0.5 and depth.loc[1, "every_seed"] == 0
    assert depth.loc[-1, "recovered"] == 0.0 and depth["n_features"].sum() == 3
    assert p1_synthbench.recovery_by(features, "firing_rate", bins=3)["n_features"].sum() == 3
    with pytest.raises(ValueError, match="by='seed'"):
        p1_synthbench.recovery_by(features, "seed")


def test_the_experiment_tabulates_both_kinds_of_metric_and_reads_itself_back(tmp_path):
    from isae.experiments.executor import execute
    from isae.experiments.profiles import synthbench_profile

    p = synthbench_profile("smoke", num_features=64, hidden_dim=16, n_train_rows=1024, passes=1, batch_size=128,
                           n_eval=256, models=["abstopk", "isae_me"])
    res, source = execute(p1_synthbench.P1SynthBench(p), tmp_path, device="cpu", progress=False, results_from="auto",
                          log=lambda s: None)
    assert "in this process" in source
    bench = res["bench"]
    n_floor = len(pipeline.RANDOM_INIT_SEEDS)
    assert len(bench) == 2 * (2 + n_floor) and set(bench["trained"]) == {True, False}  # 2 models × (2 seeds + floor)
    assert bench[list(p1_synthbench.BENCH_METRICS)].apply(lambda c: c.between(0, 1)).all().all()
    assert len(res["features"]) == 2 * 2 * 64  # every true feature, per trained SAE
    summary = p1_synthbench.summarise_bench(res["runs"], res["pairs"], bench)
    assert list(summary["model"][:2]) == ["AbsTopK", "iSAE-ME"] and {"mcc", "dcs", "sae_iou", "mse_fvu"} <= set(summary)
    verdicts = p1_synthbench.bench_claims(summary, "smoke")
    assert set(verdicts["verdict"]) <= {"not tested", "missing"}  # smoke decides nothing; TopK is not in this run
    again, source = execute(p1_synthbench.P1SynthBench(p), tmp_path, device="cpu", progress=False,
                            results_from="auto", log=lambda s: None)
    assert "read from the completed run" in source and again["bench"].equals(bench)
