"""The recipe ablation: which variants are trained, how the table measures each switch against its base."""

from __future__ import annotations

import pandas as pd
import pytest

from isae.experiments import p1_recipe
from isae.experiments.profiles import synthetic_profile
from isae.train.recipe import AUTHORS, ELEMENTS, PAPER


def test_variants_are_the_two_bases_and_each_element_switched_both_ways():
    variants = p1_recipe.variants()
    assert [(v.base, v.element) for v in variants[:2]] == [("paper", None), ("authors", None)]
    differing = [e for e in ELEMENTS if getattr(PAPER, e) != getattr(AUTHORS, e)]
    assert [(v.base, v.element) for v in variants[2:]] == [(b, e) for e in differing for b in ("paper", "authors")]
    for v in variants[2:]:
        other = AUTHORS if v.base == "paper" else PAPER
        assert getattr(v.recipe, v.element) == getattr(other, v.element)
    with pytest.raises(ValueError, match="not recipe elements"):
        p1_recipe.variants(("lr", "colour"))


def test_variants_from_one_base_switch_only_from_it():
    variants = p1_recipe.variants(("lr", "me_init"), bases=("paper",))
    assert [(v.base, v.element) for v in variants] == [("paper", None), ("paper", "lr"), ("paper", "me_init")]
    assert variants[1].recipe == PAPER.switch("lr", AUTHORS)
    for bad in ((), ("text",), ("paper", "paper")):
        with pytest.raises(ValueError, match="bases="):
            p1_recipe.variants(bases=bad)


def test_the_ablation_grid_per_profile_and_its_overrides():
    from isae.experiments.profiles import ABLATION_GRIDS, ablation_grid

    assert ablation_grid("paper") == ABLATION_GRIDS["paper"] and ablation_grid("paper").elements is None
    small = ablation_grid("default")
    assert len(p1_recipe.variants(small.elements, small.bases)) == 1 + len(small.elements) < len(p1_recipe.variants())
    assert ablation_grid("default", elements="all").elements is None
    assert ablation_grid("default", elements=["lr"], bases=["paper", "authors"]).bases == ("paper", "authors")
    with pytest.raises(ValueError, match="elements"):
        ablation_grid("default", elements=["colour"])
    with pytest.raises(ValueError, match="bases"):
        ablation_grid("default", bases=["text"])
    with pytest.raises(ValueError, match="unknown recipe-ablation parameter"):
        ablation_grid("default", element=["lr"])


def test_a_variant_trains_only_the_models_its_element_changes():
    v = {(x.base, x.element): x for x in p1_recipe.variants()}
    assert v[("paper", "me_init")].models(("abstopk", "isae_me"), "iid") == ("isae_me",)
    assert v[("paper", "mixture")].models(("abstopk", "isae_me"), "iid") == ()
    assert v[("paper", "mixture")].models(("abstopk", "isae_me"), "mixture") == ("abstopk", "isae_me")
    assert v[("paper", None)].models(("abstopk",), "iid") == ("abstopk",)


def _table(rows):
    runs = pd.DataFrame([{"setting": "iid", "model": "iSAE-ME", "base": b, "element": e, "mse": m, "mse_fvu": m,
                          "seed": s} for b, e, m, s in rows])
    pairs = pd.DataFrame([{"setting": "iid", "model": "iSAE-ME", "base": b, "element": e, "sae_iou": iou,
                           "oracle_iou": iou, "dcs": iou, "sae_l2": 0.1, "sae_l2_authors": 0.1}
                          for b, e, iou, _ in rows])
    return runs, pairs


def test_summary_measures_each_switch_against_its_own_base():
    runs, pairs = _table([(b, e, v + 0.01 * s, s) for b, e, v in (("paper", "—", 0.5), ("paper", "lr", 0.9),
                                                                   ("authors", "—", 0.95), ("authors", "lr", 0.6))
                          for s in range(3)])
    table = p1_recipe.summarise_ablation(runs, pairs).set_index(["base", "element"])
    assert table.loc[("paper", "lr"), "d_sae_iou"] == pytest.approx(0.4)
    assert table.loc[("authors", "lr"), "d_sae_iou"] == pytest.approx(-0.35)
    assert table.loc[("paper", "—"), "d_sae_iou"] == 0.0
    assert table.loc[("paper", "lr"), "d_mse"] == pytest.approx(0.4)  # mse in the authors' reading (FVU)
    moved = p1_recipe.effects(table.reset_index(), "sae_iou")
    assert list(moved["element"]) == ["lr", "lr"] and list(moved["base"]) == ["paper", "authors"]
    assert list(moved["direction"]) == ["up", "down"]
    two_seeds = p1_recipe.summarise_ablation(runs[runs["seed"] < 2], pairs[runs["seed"] < 2])
    assert p1_recipe.effects(two_seeds, "sae_iou").empty  # 2 seeds decide nothing


def test_effects_ignore_a_change_within_the_seed_spread():
    runs, pairs = _table([("paper", "—", 0.5, 0), ("paper", "—", 0.7, 1), ("paper", "—", 0.6, 2),
                          ("paper", "lr", 0.6, 0), ("paper", "lr", 0.75, 1), ("paper", "lr", 0.7, 2)])
    table = p1_recipe.summarise_ablation(runs, pairs)
    assert p1_recipe.effects(table, "sae_iou").empty


def test_ablation_runs_end_to_end_and_resumes(tmp_path):
    import shutil

    from isae.experiments.executor import execute, run_dir

    def run(models, elements):
        return execute(p1_recipe.P1RecipeAblation(p, models, elements), tmp_path, device="cpu", progress=False,
                       results_from=None, log=lambda line: None)[0]

    p = synthetic_profile("smoke", n_steps=4, n_seeds=2, settings=("iid",), n_eval=64, log_every=2,
                          checkpoint_every=2)
    runs, pairs = run(("abstopk", "isae_me"), ("me_init", "lr"))
    keys = set(zip(pairs["base"], pairs["element"], pairs["variant"]))
    assert keys == {(b, "—", m) for b in ("paper", "authors") for m in ("abstopk", "isae_me")} | \
        {(b, "lr", m) for b in ("paper", "authors") for m in ("abstopk", "isae_me")} | \
        {(b, "me_init", "isae_me") for b in ("paper", "authors")}
    assert pairs["trained"].all()
    assert (tmp_path / "ablation" / "paper+lr" / "checkpoints" / "iid" / "abstopk" / "checkpoint.pt").exists()
    shutil.rmtree(run_dir(tmp_path, "p1_recipe"))  # forget the finished units: training resumes from checkpoints
    again, _ = run(("abstopk", "isae_me"), ("me_init", "lr"))
    pd.testing.assert_frame_equal(again, runs)  # resumed from the finished checkpoints: the same numbers
    # another set of models meets the same model's checkpoints: the same numbers for it
    alone, _ = run(("isae_me",), ("lr",))
    assert set(alone["variant"]) == {"isae_me"}
    mine = runs[(runs["variant"] == "isae_me") & runs["element"].isin(["—", "lr"])].reset_index(drop=True)
    pd.testing.assert_frame_equal(alone, mine)
