"""P3's checks on real activations (notebook 09): the stream and held-out rows they train and measure on, the
SAEs trained per setting, and the verdict rows they add."""

import numpy as np
import pandas as pd
import pytest
import torch

from isae.data.cache import ActivationCache, build_cache
from isae.experiments import p3_optimality as p3
from isae.experiments.p1_real import SETTINGS
from isae.experiments.profiles import p3_profile


def _caches(tmp_path, d_in: int = 12, rows: int = 300) -> dict[str, ActivationCache]:
    """A small cache per split of every real setting; rows with a common offset (so b has something to take)."""
    out = {}
    for i, name in enumerate(n for pair in SETTINGS.values() for n in pair):
        spec = {"model": "toy", "name": name, "dtype": "float32", "d_in": d_in}
        def shard(j: int, seed: int = i) -> dict:
            g = torch.Generator().manual_seed(100 * seed + j)
            return {"acts": torch.randn(rows // 2, d_in, generator=g) + 2.0}

        build_cache(tmp_path / name, spec, 2, shard, progress=False)
        out[name] = ActivationCache(tmp_path / name)
    return out


def test_real_stream_has_enough_passes_and_unit_norm_heldout_rows(tmp_path):
    caches = _caches(tmp_path)
    p = p3_profile("smoke", batch_size=32, real_steps=25, n_eval=64, n_fit=32)
    stream, x = p3.real_stream(caches, "smollm2", p)
    assert stream.steps_per_pass == 300 // 32 and stream.n_steps >= 25 and stream.passes == 3
    assert x.shape == (64, 12)
    torch.testing.assert_close(x.norm(dim=1), torch.ones(64))
    assert float(stream.batch(24).norm(dim=1).sub(1).abs().max()) < 1e-5  # the last step exists, unit rows


def test_antipodal_table_trains_every_model_on_every_real_setting(tmp_path):
    caches = _caches(tmp_path)
    p = p3_profile("smoke", batch_size=32, real_steps=6, n_eval=64, n_fit=32, real_d_sae=16, real_k=2, n_steps=6,
                   n_seeds=2)
    table = p3.antipodal_table(p, caches=caches)
    real = table[table["data"] != "synthetic, signed codes"]
    expected_models = {f"relu λ={c / 2:g}" for c in p.real_l1_coefs} | {"topk", "abstopk"}
    for setting in SETTINGS:
        rows = real[real["data"] == setting]
        assert set(rows["model"]) == expected_models and sorted(set(rows["seed"])) == [0, 1]
        assert len(rows) == len(expected_models) * 2
    assert (real["antipodal_pairs"] >= 0).all() and real["antipodal_atom_frac"].between(0, 1).all()


def test_real_wide_limit_measures_every_width_with_optimal_lasso_codes(tmp_path):
    caches = _caches(tmp_path)
    p = p3_profile("smoke", batch_size=32, real_steps=6, n_eval=64, n_fit=32, real_width_factors=(0.5, 1.0),
                   real_l1_coefs=(0.05,), real_k=2, n_seeds=2)
    table = p3.real_wide_limit(caches, p)
    assert sorted(set(table["K"])) == [6, 12] and len(table) == 2 * 2
    assert (table["c1_active_mean_dev"] < 1e-3).all()  # exact lasso codes: C1 holds on the active entries
    assert table["ray_alignment"].between(-1, 1).all()


@pytest.mark.parametrize("rising", [True, False])
def test_real_claims_follow_the_measurements(rising):
    empty = pd.DataFrame(columns=["model", "codes", "nested_rate", "absorbed_rate", "absorbed_direction", "seed"])
    wide = pd.DataFrame(columns=["model", "K", "ray_alignment"])
    antipodal = pd.DataFrame([
        row | {"data": "smollm2", "seed": s, "antipodal_pairs": row["antipodal_pairs"] + 0.1 * s}
        for s in range(3) for row in ({"model": "relu λ=0.005", "antipodal_pairs": 7, "density_antipodal": 0.2},
                                      {"model": "topk", "antipodal_pairs": 3, "density_antipodal": 0.1},
                                      {"model": "abstopk", "antipodal_pairs": 0 if rising else 9,
                                       "density_antipodal": np.nan})])
    ray = [0.3, 0.5] if rising else [0.5, 0.3]
    wide_real = pd.DataFrame([{"data": "smollm2", "model": "relu (lasso codes)", "K": k, "seed": s,
                               "ray_alignment": r + 0.01 * s} for k, r in zip((64, 128), ray) for s in range(3)])
    claims = p3.p3_claims(empty, empty, antipodal, wide, "default", wide_real)
    want = "holds" if rising else "fails"
    anti = claims[claims["claim"].str.startswith("dense antipodal")].iloc[0]
    assert anti["setting"] == "smollm2" and anti["verdict"] == want and "ReLU+L1 pairs 7.100" in anti["ours"]
    ray_row = claims[claims["claim"].str.contains("real activations")].iloc[0]
    assert ray_row["verdict"] == want and "K=64" in ray_row["ours"] and "K=128" in ray_row["ours"]
    # with no ReLU+L1 or AbsTopK rows the claims that need them are missing, not failing
    assert set(claims.loc[claims["claim"].str.contains("C3|absorption"), "verdict"]) == {"missing"}


def test_the_wide_limit_is_not_tested_while_an_optimum_has_not_converged():
    empty = pd.DataFrame(columns=["model", "codes", "nested_rate", "absorbed_rate", "absorbed_direction", "seed"])
    wide = pd.DataFrame([{"model": "optimum (alternating)", "K": k, "ray_alignment": r, "converged": c}
                         for k, r, c in ((16, 0.4, True), (64, 0.8, False))])
    row = p3.p3_claims(empty, empty, pd.DataFrame(columns=["data"]), wide, "default").iloc[-1]
    assert row["verdict"] == "not tested" and "K=[64]" in row["reason"]
    row = p3.p3_claims(empty, empty, pd.DataFrame(columns=["data"]), wide.assign(converged=True), "default").iloc[-1]
    assert row["verdict"] == "holds"
