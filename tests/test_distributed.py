"""Experiments across ranks (torchrun, gloo on the CPU): the same saved weights and tables, bit for bit, as one process;
the shards of a cache built by several ranks are those of a one-process build."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np  # noqa: F401 (used by CACHE_HELPERS, exec-ed below)
import pandas as pd
import pytest
import torch

from isae.data.cache import ActivationCache, build_caches
from isae.experiments import distributed, p1_synthetic
from isae.experiments.profiles import synthetic_profile

RECIPES = ("authors", "paper")
#: The smoke profile cut to what the comparison needs: both recipes, two data seeds (folders "iid", "iid_data1"),
#: a cheap and the most expensive model (so the cost balance splits every setting across the ranks), 4 steps.
OVERRIDES = {"n_steps": 4, "n_eval": 64, "settings": ["iid"], "models": ["topk", "isae_me"], "n_data_seeds": 2,
             "log_every": 2, "checkpoint_every": 2}


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _can_listen_locally() -> bool:
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
        return True
    except OSError:
        return False


def _torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """2 local ranks under torch.distributed.run (a TCP rendezvous on localhost)."""
    if not _can_listen_locally():
        pytest.skip("torch.distributed.run needs a TCP port on 127.0.0.1, which this sandbox refuses")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2", *args]
    done = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"torchrun failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def _files(root: Path, pattern: str) -> dict[str, bytes]:
    return {str(f.relative_to(root)): f.read_bytes() for f in sorted(root.glob(pattern))}


def test_shares_cover_every_item_once_and_balance_the_cost():
    assert distributed.shares(5, 2) == [[0, 2, 4], [1, 3]]
    cost = [3.65, 1.0] * 4
    parts = distributed.shares(len(cost), 2, cost)
    assert sorted(i for part in parts for i in part) == list(range(len(cost)))
    assert [sum(cost[i] for i in part) for part in parts] == [2 * 4.65, 2 * 4.65]
    assert distributed.shares(3, 1, [1.0, 2.0, 3.0]) == [[0, 1, 2]]  # world size 1: one process, everything
    with pytest.raises(ValueError, match="world_size=0"):
        distributed.shares(3, 0)


def test_training_plan_is_the_grid_split_by_rank_and_named_by_its_models():
    p = synthetic_profile("smoke", **OVERRIDES)
    grid = distributed.synthetic_grid(p, RECIPES)
    assert len(grid) == 2 * 1 * 2 * 2 * p.n_seeds  # recipes × settings × data seeds × models × seeds
    plan = distributed.training_plan(p, RECIPES, 2)
    assert sorted(r for share in plan for r in share) == sorted(grid)
    assert distributed.training_plan(p, RECIPES, 2) == plan  # a pure function: a relaunch resumes the same parts
    assert all({r.variant for r in share} == {"topk", "isae_me"} for share in plan)
    assert distributed.part_name(r.key for r in plan[0][:2]) != distributed.part_name(r.key for r in plan[1][:2])
    with pytest.raises(ValueError, match="recipes="):
        distributed.synthetic_grid(p, ("paper", "paper"))


def test_two_ranks_give_the_weights_and_tables_of_one_process_bit_for_bit(tmp_path):
    p = synthetic_profile("smoke", **OVERRIDES)
    # one process: the notebook's own path (run_recipes), one torch thread as each rank has
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = tmp_path / "single"
        results = p1_synthetic.run_recipes(p, RECIPES, out_dir=single, device="cpu", progress=False)
    finally:
        torch.set_num_threads(threads)
    runs, pairs, log = p1_synthetic.combine(results)
    distributed.write_synthetic_tables(single / "tables", runs, pairs, RECIPES, profile="smoke")

    dist = tmp_path / "dist"
    sets = [a for k, v in OVERRIDES.items() for a in ("--set", f"{k}={json.dumps(v)}")]
    done = _torchrun(["-m", "isae.experiments.launch", "p1_synthetic", "--profile", "smoke", *sets,
                      "--recipes", *RECIPES, "--output-root", str(dist), "--device", "cpu", "--threads", "1",
                      "--no-progress"], cwd=tmp_path)
    assert "[rank 1/2]" in done.stdout

    weights = "**/saes/*/sae_weights.safetensors"
    assert len(_files(single, weights)) == len(distributed.synthetic_grid(p, RECIPES))
    assert _files(dist, weights) == _files(single, weights)
    assert _files(dist, "**/saes/*/cfg.json") == _files(single, "**/saes/*/cfg.json")
    assert _files(dist, "tables/*.csv") == _files(single, "tables/*.csv")
    assert len(_files(single, "tables/*.csv")) == 5

    record = json.loads(distributed.marker_path(dist).read_text())
    assert record["world_size"] == 2 and [r["rank"] for r in record["ranks"]] == [0, 1]
    table_prov = json.loads((dist / "tables" / "table1_synthetic.csv.provenance.json").read_text())
    assert table_prov["distributed"]["world_size"] == 2 and len(table_prov["distributed"]["ranks"]) == 2
    # a part of a setting was checkpointed in its own folder, named by its models
    assert list((dist / "checkpoints" / "iid").glob("part-*/checkpoint.pt"))

    # notebook 01's reader: the same results object, the training log in train_many's order included
    loaded, source = distributed.synthetic_results(p, RECIPES, out_dir=dist, results_from="auto", device="cpu")
    assert source.startswith("read from the distributed run")
    for got, want in zip(p1_synthetic.combine(loaded), (runs, pairs, log)):
        pd.testing.assert_frame_equal(got, want, check_exact=True)
    key = next(iter(results["authors"]["iid"].saes))
    assert torch.equal(loaded["authors"]["iid"].x_eval, results["authors"]["iid"].x_eval)
    assert torch.equal(loaded["authors"]["iid"].saes[key].W_dec, results["authors"]["iid"].saes[key].W_dec)
    # other sizes: "auto" trains here (not exercised), an explicit folder is refused, naming what differs
    with pytest.raises(ValueError, match="n_steps: run 4, here 5"):
        distributed.synthetic_results(synthetic_profile("smoke", **{**OVERRIDES, "n_steps": 5}), RECIPES,
                                      out_dir=tmp_path / "x", results_from=dist)
    assert distributed.completed_run(dist, synthetic_profile("smoke", **{**OVERRIDES, "n_steps": 5}), RECIPES) is None
    with pytest.raises(ValueError, match="no completed distributed run"):
        distributed.synthetic_results(p, RECIPES, out_dir=tmp_path / "x", results_from=tmp_path / "nothing")


CACHE_HELPERS = """
def cache_targets(root):
    \"\"\"Two caches of one computation with different shard counts (5 and 3), dtypes and a per-row extra.\"\"\"
    spec = {"kind": "test", "dtype": "float32"}
    return {root / "a": ({**spec, "hook": "a"}, 5), root / "b": ({**spec, "hook": "b", "dtype": "float16"}, 3)}


def make_shards(i, folders):
    \"\"\"Shard i of every folder: a pure function of (folder, i), as a real model's forward is.\"\"\"
    out = {}
    for d in folders:
        g = np.random.default_rng([i, ord(d.name)])
        out[d] = {"acts": g.standard_normal((7 + i, 4)).astype(np.float32), "labels": np.arange(7 + i) + i}
    return out
"""
exec(CACHE_HELPERS)  # defines cache_targets and make_shards here, as in the ranks' script

CACHE_SCRIPT = """
import sys
from pathlib import Path
import numpy as np  # noqa: F401 (used by CACHE_HELPERS, exec-ed below)
import torch.distributed as dist
from isae.data.cache import build_caches, partitioned_builds
""" + CACHE_HELPERS + """
dist.init_process_group("gloo")
with partitioned_builds(dist.get_rank(), dist.get_world_size(), dist.barrier):
    build_caches(cache_targets(Path(sys.argv[1])), make_shards, progress=False)
dist.destroy_process_group()
"""


def _manifest_without_timing(d: Path) -> dict:
    m = json.loads((d / "manifest.json").read_text())
    for s in m["shards"]:
        s.pop("seconds")
    return m


def test_two_ranks_build_the_shards_of_a_one_process_cache(tmp_path):
    build_caches(cache_targets(tmp_path / "single"), make_shards, progress=False)  # noqa: F821 (CACHE_HELPERS)
    script = tmp_path / "build.py"
    script.write_text(CACHE_SCRIPT)
    _torchrun([str(script), str(tmp_path / "dist")], cwd=tmp_path)
    for name in ("a", "b"):
        single, dist = tmp_path / "single" / name, tmp_path / "dist" / name
        assert _files(dist, "*.npy") == _files(single, "*.npy")  # every shard and extra, byte for byte
        assert not list(dist.glob("*.part.json"))  # the per-shard records are gone once the manifest is written
        assert _manifest_without_timing(dist) == _manifest_without_timing(single)
        ActivationCache(dist).verify()
    assert len(ActivationCache(tmp_path / "dist" / "a")) == sum(7 + i for i in range(5))


#: The real-data smoke profile cut to seconds: a cheap and the most expensive model, and a vision cache twice the
#: LM's, so that the cost balance splits the vision setting across the ranks and keeps the LM setting whole.
REAL_OVERRIDES = {"d_sae": 32, "k": 4, "batch_size": 64, "n_seeds": 2, "n_eval": 64, "n_curve": 32,
                  "curve_points": 3, "models": ["topk", "isae_me"], "log_every": 2, "checkpoint_every": 4, "passes": 1}
DATA_HELPERS = """
def sparse_cache(folder, rows, d, seed, extras=None, spec=None):
    \"\"\"A cache of two shards of sparse codes of 24 random atoms plus noise (built once), with the per-row extras
    ``extras(rng, first_row, n)`` returns and ``spec`` in its spec.\"\"\"
    import numpy as np
    from isae.data.cache import ActivationCache, build_cache

    if not (folder / "manifest.json").exists():
        def shard(i):
            g, n = np.random.default_rng([seed, i]), rows // 2
            atoms = np.random.default_rng(seed).standard_normal((24, d))
            codes = g.standard_normal((n, 24)) * (g.random((n, 24)) < 0.15)
            acts = (codes @ atoms + 0.01 * g.standard_normal((n, d))).astype(np.float32)
            return {"acts": acts, **(extras(g, i * n, n) if extras else {})}
        build_cache(folder, {"dtype": "float32", "kind": "toy", "seed": seed, **(spec or {})}, 2, shard,
                    progress=False)
    return ActivationCache(folder)


def random_caches(root):
    \"\"\"The four caches notebook 03 reads (LM rows 16-dim, vision 12-dim, the vision cache twice the LM's).\"\"\"
    return {"lm_train": sparse_cache(root / "lm_train", 512, 16, 0),
            "lm_heldout": sparse_cache(root / "lm_heldout", 128, 16, 1),
            "vision_train": sparse_cache(root / "vision_train", 1024, 12, 2),
            "vision_heldout": sparse_cache(root / "vision_heldout", 128, 12, 3)}


def weighted_sources(root):
    \"\"\"Notebook 05's settings on such caches with the extras its measures read: two LM layers (token ids and
    positions) and a vision model (4 patch tokens per image, class labels).\"\"\"
    import numpy as np

    def text(g, first, n):
        return {"tokens": g.integers(0, 40, n), "positions": (np.arange(n) + first) % 16}

    def vision(g, first, n):
        image = (np.arange(n) + first) // 4
        return {"image": image, "labels": image % 5}

    def vision_cache(name, seed):
        return sparse_cache(root / name, 512 if seed == 3 else 128, 12, seed, vision, {"tokens_per_image": 4})

    text_heldout = sparse_cache(root / "text_heldout", 128, 16, 9, text)
    return {"layer1": (sparse_cache(root / "layer1", 512, 16, 11, text), 512, text_heldout),
            "layer2": (sparse_cache(root / "layer2", 512, 16, 12, text), 384, text_heldout),
            "vision": (vision_cache("vision", 3), 512, vision_cache("vision_heldout", 4))}
"""
exec(DATA_HELPERS)  # defines sparse_cache, random_caches and weighted_sources here, as in the ranks' scripts

REAL_SCRIPT = """
import json, sys
from pathlib import Path
import torch
from isae.experiments import distributed
from isae.experiments.profiles import real_profile
""" + DATA_HELPERS + """
torch.set_num_threads(1)
world = distributed.init_world()
p = real_profile("smoke", **json.loads(sys.argv[3]))
caches = random_caches(Path(sys.argv[1]))
distributed.run_real_distributed(world, p, caches, Path(sys.argv[2]), device="cpu", progress=False,
                                 command="test")
distributed.close_world(world)
"""


def test_real_plan_splits_by_setting_and_model_and_balances_the_steps():
    from isae.experiments.profiles import real_profile

    p = real_profile("smoke", **REAL_OVERRIDES)
    plan = distributed.real_plan(p, {"smollm2": 8, "efficientnet-lite0": 16}, 2)
    units = sorted(u for share in plan for u in share)
    assert units == sorted(distributed.RealUnit(s, a) for s in ("smollm2", "efficientnet-lite0")
                           for a in ("topk", "isae_me"))
    assert plan[0] == [distributed.RealUnit("efficientnet-lite0", "isae_me")]  # the costliest unit, alone
    assert distributed.real_plan(p, {"smollm2": 8, "efficientnet-lite0": 16}, 1) == [
        [distributed.RealUnit(s, a) for s in ("smollm2", "efficientnet-lite0") for a in ("topk", "isae_me")]]


def test_two_ranks_train_notebook_03s_saes_and_tables_of_one_process_bit_for_bit(tmp_path):
    from isae.experiments import p1_real
    from isae.experiments.profiles import real_profile

    p = real_profile("smoke", **REAL_OVERRIDES)
    caches = random_caches(tmp_path / "activations")  # noqa: F821 (DATA_HELPERS)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = tmp_path / "single"
        settings = p1_real.train_real_settings(caches, p, single, progress=False)
    finally:
        torch.set_num_threads(threads)
    runs, pairs, log = p1_synthetic.combine({n: s.result for n, s in settings.items()})
    p1_real.write_table2(single / "tables", runs, pairs)

    script = tmp_path / "real.py"
    script.write_text(REAL_SCRIPT)
    dist = tmp_path / "dist"
    _torchrun([str(script), str(tmp_path / "activations"), str(dist), json.dumps(REAL_OVERRIDES)], cwd=tmp_path)

    weights = "saes/*/sae_weights.safetensors"
    assert len(_files(single, weights)) == 2 * 2 * p.n_seeds
    assert _files(dist, weights) == _files(single, weights)
    assert _files(dist, "saes/*/cfg.json") == _files(single, "saes/*/cfg.json")
    assert _files(dist, "tables/*.csv") == _files(single, "tables/*.csv")
    assert list((dist / "checkpoints" / "efficientnet-lite0").glob("part-*/checkpoint.pt"))  # split setting
    assert (dist / "checkpoints" / "smollm2" / "checkpoint.pt").exists()  # a setting one rank held whole

    # notebook 03's reader: every table, the convergence curve and the training log in one-process order
    loaded, source = distributed.real_results(caches, p, out_dir=dist, results_from="auto")
    assert source.startswith("read from the distributed run") and "world size 2" in source
    for got, want in zip(p1_synthetic.combine({n: s.result for n, s in loaded.items()}), (runs, pairs, log)):
        pd.testing.assert_frame_equal(got, want, check_exact=True)
    pd.testing.assert_frame_equal(p1_real.curves(loaded), p1_real.curves(settings), check_exact=True)
    key = next(iter(settings["smollm2"].result.saes))
    assert torch.equal(loaded["smollm2"].result.saes[key].W_dec, settings["smollm2"].result.saes[key].W_dec)
    assert torch.equal(loaded["smollm2"].result.x_eval, settings["smollm2"].result.x_eval)
    with pytest.raises(ValueError, match="passes: run 1, here 2"):
        distributed.real_results(caches, real_profile("smoke", **{**REAL_OVERRIDES, "passes": 2}),
                                 out_dir=tmp_path / "x", results_from=dist)


WEIGHTED_OVERRIDES = {"lm_d_sae": 32, "lm_k": 4, "vision_d_sae": 32, "vision_k": 4, "batch_size": 64, "n_top": 5,
                      "consistency_top": 5, "log_every": 2, "control_k_fractions": [0.5]}

WEIGHTED_SCRIPT = """
import json, sys
from pathlib import Path
import torch
from isae.experiments import distributed, p2_weighted
from isae.experiments.profiles import real_profile, weighted_profile
""" + DATA_HELPERS + """
torch.set_num_threads(1)
world = distributed.init_world()
wp = weighted_profile("smoke", **json.loads(sys.argv[3]))
sources = weighted_sources(Path(sys.argv[1]))
_, weights = p2_weighted.setting_weights(sources, wp)
distributed.run_weighted_distributed(world, sources, weights, wp, real_profile("smoke"), "positive", Path(sys.argv[2]),
                                     device="cpu", progress=False, command="test")
distributed.close_world(world)
"""


def test_two_ranks_give_notebook_05s_weighted_sae_tables_of_one_process_bit_for_bit(tmp_path):
    from isae.experiments import p2_weighted
    from isae.experiments.profiles import real_profile, weighted_profile

    wp = weighted_profile("smoke", **WEIGHTED_OVERRIDES)
    sources = weighted_sources(tmp_path / "activations")  # noqa: F821 (DATA_HELPERS)
    _, weights = p2_weighted.setting_weights(sources, wp)
    plan = distributed.weighted_plan(sources, wp, 2)
    assert sorted(s for share in plan for s in share) == sorted(sources) and all(plan)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = p2_weighted.run_settings(sources, weights, wp, progress=False, log=lambda line: None)
    finally:
        torch.set_num_threads(threads)

    script = tmp_path / "weighted.py"
    script.write_text(WEIGHTED_SCRIPT)
    dist = tmp_path / "dist"
    done = _torchrun([str(script), str(tmp_path / "activations"), str(dist), json.dumps(WEIGHTED_OVERRIDES)],
                     cwd=tmp_path)
    assert "[rank 1/2]" in done.stdout
    again = _torchrun([str(script), str(tmp_path / "activations"), str(dist), json.dumps(WEIGHTED_OVERRIDES)],
                      cwd=tmp_path)  # a relaunch: every setting is on disk at these sizes
    assert again.stdout.count("already done") == 2 and "SAEs (K=" not in again.stdout

    loaded, source = distributed.weighted_results(sources, weights, wp, real_profile("smoke"), "positive",
                                                  out_dir=dist)
    assert source.startswith("read from the distributed run") and list(loaded) == list(single)
    timing = ["train_seconds", "eval_seconds"]
    for setting, want in single.items():
        got = loaded[setting]
        for name in ("runs", "latents", "log"):
            pd.testing.assert_frame_equal(getattr(got, name), getattr(want, name), check_exact=True)
        assert got.chance == want.chance and got.inputs == want.inputs
        assert {k: v for k, v in got.info.items() if k not in timing} == \
            {k: v for k, v in want.info.items() if k not in timing}
    # other sizes or another tail: refused by name when asked for explicitly, trained here under "auto"
    with pytest.raises(ValueError, match="consistency_tail: run positive, here negative"):
        distributed.weighted_results(sources, weights, wp, real_profile("smoke"), "negative", out_dir=tmp_path / "x",
                                     results_from=dist)
    assert distributed.completed_record(dist, "p2_weighted", {"sizes": distributed._sizes(
        weighted_profile("smoke", **{**WEIGHTED_OVERRIDES, "n_seeds": 3}))}) is None


def test_two_ranks_give_notebook_04s_toy_banks_of_one_process_bit_for_bit(tmp_path):
    from isae.experiments import p2_toy
    from isae.experiments.profiles import toy_profile

    overrides = {"n_steps": 20, "log_every": 5}
    p = toy_profile("smoke", **overrides)
    plan = distributed.toy_plan(p, 2)
    assert all(plan) and sorted(u for share in plan for u in share) == sorted(
        (name, key) for name in p2_toy.TOY_EXPERIMENTS
        for key in p2_toy.toy_banks(p2_toy.experiment_conditions(name, p)[0]))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = {name: p2_toy.run_toy_experiment(*p2_toy.experiment_conditions(name, p)[:1], p,
                                                  w_p=p2_toy.experiment_conditions(name, p)[1], device="cpu",
                                                  progress=False) for name in p2_toy.TOY_EXPERIMENTS}
    finally:
        torch.set_num_threads(threads)

    dist = tmp_path / "dist"
    sets = [a for k, v in overrides.items() for a in ("--set", f"{k}={v}")]
    done = _torchrun(["-m", "isae.experiments.launch", "p2_toy", "--profile", "smoke", *sets, "--output-root",
                      str(dist), "--device", "cpu", "--threads", "1", "--no-progress"], cwd=tmp_path)
    assert "[rank 1/2]" in done.stdout
    for name, want in single.items():
        got, source = distributed.toy_results(name, p, dist, device="cpu")
        assert source.startswith("read from the distributed run")
        pd.testing.assert_frame_equal(got.runs, want.runs, check_exact=True)
        pd.testing.assert_frame_equal(got.log, want.log, check_exact=True)
        assert list(got.banks) == list(want.banks)
        for key, bank in want.banks.items():
            assert all(torch.equal(a, b) for a, b in zip(got.banks[key].state_dict().values(),
                                                         bank.state_dict().values()))
        # what the notebook computes from the banks afterwards is the same too
        if name == "weighted":
            pd.testing.assert_frame_equal(p2_toy.gap_under_weights(got, p.weight_alphas, p.n_eval),
                                          p2_toy.gap_under_weights(want, p.weight_alphas, p.n_eval), check_exact=True)
