"""The hierarchical generator and the absorption measurement of P3's notebook."""

from __future__ import annotations

import pytest
import torch

from isae.data.hierarchy import HierarchyConfig, HierarchyStream, feature_directions
from isae.experiments.p3_optimality import absorption


def test_children_fire_only_with_their_parent_and_point_near_it():
    cfg = HierarchyConfig(d_in=16, n_parents=3, children_per_parent=2, n_free=4, p_parent=0.3, p_child=0.5)
    stream = HierarchyStream(cfg, batch_size=64, seed=1)
    x, mags = stream.sample(5000, step=0)
    for c in range(cfg.n_children):
        child_on = mags[:, cfg.n_parents + c] > 0
        assert (mags[child_on, cfg.parent_of(c)] > 0).all()
        rate = child_on.float().mean() / (mags[:, cfg.parent_of(c)] > 0).float().mean()
        assert rate == pytest.approx(0.5, abs=0.05)  # P(child | parent)
    dirs = feature_directions(cfg)
    assert torch.allclose(dirs.norm(dim=1), torch.ones(cfg.n_features))
    cos_child_parent = dirs[cfg.n_parents] @ dirs[0]
    assert cos_child_parent == pytest.approx(1 / (1 + 0.6**2) ** 0.5, abs=1e-5)  # parent + 0.6 · orthogonal unit
    assert torch.equal(stream.batch(3), stream.batch(3))
    with pytest.raises(ValueError, match="p_child"):
        HierarchyConfig(p_child=1.5)


def test_absorption_reads_an_absorbing_and_a_nested_dictionary():
    cfg = HierarchyConfig(d_in=16, n_parents=1, children_per_parent=1, n_free=0, p_parent=0.5, p_child=0.5)
    stream = HierarchyStream(cfg, batch_size=64, seed=0)
    x, mags = stream.sample(2000, step=0)
    atoms = stream.directions.clone()  # latent 0 = parent, latent 1 = child
    nested = (mags > 0).float()  # the parent latent fires whenever the parent does
    out = absorption(atoms, nested, stream, mags)
    assert out["nested_rate"] == 1.0 and out["absorbed_rate"] == 0.0 and out["parent_alone_rate"] == 1.0
    absorbed = nested.clone()
    absorbed[mags[:, 1] > 0, 0] = 0.0  # the parent latent goes silent when the child fires
    out = absorption(atoms, absorbed, stream, mags)
    assert out["absorbed_rate"] == 1.0 and out["nested_rate"] == 0.0 and out["distinct_latents"] == 1.0


def test_an_unconverged_optimum_is_not_a_verdict_on_p3():
    import pandas as pd

    from isae.experiments.p3_optimality import p3_claims

    row = {"model": "optimum (alternating)", "codes": "lasso", "c1_active_mean_dev": 0.0, "c2": 0.001,
           "c3_median": 1.5, "outer_steps": 30, "converged": False}
    empty = pd.DataFrame(columns=["model", "nested_rate", "absorbed_rate", "absorbed_direction"])
    none, wide = pd.DataFrame(columns=["data"]), pd.DataFrame(columns=["model", "K", "ray_alignment"])
    claims = p3_claims(pd.DataFrame([row]), empty, none, wide, "default")
    assert claims["verdict"].iloc[0] == "not tested" and "not converged" in claims["reason"].iloc[0]
    claims = p3_claims(pd.DataFrame([row | {"converged": True}]), empty, none, wide, "default")
    assert claims["verdict"].iloc[0] == "fails"  # converged, C3 too large
