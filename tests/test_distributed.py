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
    assert distributed.part_name(plan[0][:2]) != distributed.part_name(plan[1][:2])
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
    distributed.write_synthetic_tables(single / "tables", runs, pairs, RECIPES)

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
