"""The executor (isae.experiments.executor): every experiment run by 2 torchrun ranks (gloo on the CPU) or as a
2-task SLURM array gives the saved weights and merged results of one process, bit for bit; a relaunch resumes;
completed runs are read back or refused by name; the shards of a cache built by several ranks are those of a
one-process build."""

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
from isae.experiments import executor

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


def _torchrun(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """2 local ranks under torch.distributed.run (a TCP rendezvous on localhost)."""
    if not _can_listen_locally():
        pytest.skip("torch.distributed.run needs a TCP port on 127.0.0.1, which this sandbox refuses")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2", *args]
    done = subprocess.run(cmd, cwd=cwd, env=env or _env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"torchrun failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def _files(root: Path, pattern: str) -> dict[str, bytes]:
    return {str(f.relative_to(root)): f.read_bytes() for f in sorted(root.glob(pattern))}




def test_shares_cover_every_item_once_and_balance_the_cost():
    assert executor.shares(5, 2) == [[0, 2, 4], [1, 3]]
    cost = [5.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    parts = executor.shares(len(cost), 2, cost)
    assert sorted(i for part in parts for i in part) == list(range(len(cost))) and parts[0] == [0]
    assert executor.shares(3, 1, [1.0, 2.0, 3.0]) == [[0, 1, 2]]  # world size 1: one process, everything
    with pytest.raises(ValueError, match="world_size=0"):
        executor.shares(3, 0)


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

WEIGHTED_OVERRIDES = {"lm_d_sae": 32, "lm_k": 4, "vision_d_sae": 32, "vision_k": 4, "batch_size": 64, "n_top": 5,
                      "consistency_top": 5, "log_every": 2, "control_k_fractions": [0.5]}

TOY_OVERRIDES = {"n_steps": 20, "log_every": 5}

#: Builds each experiment on the test's small data: the same in the test process and in every rank's script.
EXPERIMENT_HELPERS = """
def make_experiment(name, root):
    import json
    from isae.experiments.profiles import real_profile, synthetic_profile, toy_profile, weighted_profile
    if name == "p1_synthetic":
        from isae.experiments.p1_synthetic import P1Synthetic
        return P1Synthetic(synthetic_profile("smoke", **OVERRIDES), RECIPES)
    if name == "p1_real":
        from isae.experiments.p1_real import P1Real
        return P1Real(real_profile("smoke", **REAL_OVERRIDES), random_caches(root / "activations"))
    if name == "p2_toy":
        from isae.experiments.p2_toy import P2Toy
        return P2Toy(toy_profile("smoke", **TOY_OVERRIDES))
    from isae.experiments import p2_weighted
    wp = weighted_profile("smoke", **WEIGHTED_OVERRIDES)
    sources = weighted_sources(root / "activations")
    _, weights = p2_weighted.setting_weights(sources, wp)
    return p2_weighted.P2Weighted(sources, weights, wp, real_profile("smoke"), "positive")
"""
exec(EXPERIMENT_HELPERS)  # defines make_experiment here, as in the ranks' script

RANK_SCRIPT = f"""
import sys
from pathlib import Path
import torch
from isae.experiments import executor
OVERRIDES, RECIPES, REAL_OVERRIDES = {OVERRIDES!r}, {RECIPES!r}, {REAL_OVERRIDES!r}
WEIGHTED_OVERRIDES, TOY_OVERRIDES = {WEIGHTED_OVERRIDES!r}, {TOY_OVERRIDES!r}
""" + DATA_HELPERS + EXPERIMENT_HELPERS + """
torch.set_num_threads(1)
world = executor.init_world()
exp = make_experiment(sys.argv[1], Path(sys.argv[2]))
executor.execute(exp, Path(sys.argv[3]), world=world, device="cpu", progress=False, results_from=None, command="test")
executor.close_world(world)
"""

#: Result fields that time the run (they differ between any two runs).
TIMING = {"train_seconds", "eval_seconds", "seconds"}


def _assert_same(got, want, where="result"):
    """``got`` equals ``want`` exactly: tables cell for cell, tensors bit for bit, timings aside."""
    if isinstance(want, pd.DataFrame):
        pd.testing.assert_frame_equal(got, want, check_exact=True, obj=where)
    elif isinstance(want, torch.Tensor):
        assert torch.equal(got, want), where
    elif isinstance(want, torch.nn.Module):
        _assert_same(got.state_dict(), want.state_dict(), where)
    elif isinstance(want, dict):
        assert list(got) == list(want), f"{where}: keys {list(got)} != {list(want)}"
        for k in want:
            if k not in TIMING:
                _assert_same(got[k], want[k], f"{where}[{k!r}]")
    elif hasattr(want, "__dataclass_fields__"):
        for k in want.__dataclass_fields__:
            _assert_same(getattr(got, k), getattr(want, k), f"{where}.{k}")
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


def _one_process(name: str, root: Path, out: Path):
    """The notebook's path: ``execute`` in this process (world size 1), one torch thread as each rank has."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return executor.execute(make_experiment(name, root), out, device="cpu", progress=False,  # noqa: F821
                                results_from=None, log=lambda line: None)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("name", ["p1_synthetic", "p1_real", "p2_toy", "p2_weighted"])
def test_two_ranks_give_the_results_and_weights_of_one_process_bit_for_bit(tmp_path, name):
    exp = make_experiment(name, tmp_path)  # noqa: F821 (EXPERIMENT_HELPERS)
    units = exp.units()
    plan = executor.shares(len(units), 2, [u.cost for u in units])
    assert all(plan) and len({u.name for u in units}) == len(units)  # both ranks have work; names unique
    _one_process(name, tmp_path, tmp_path / "single")
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    done = _torchrun([str(script), name, str(tmp_path), str(tmp_path / "dist")], cwd=tmp_path)
    assert "[rank 1/2]" in done.stdout
    single, dist = (executor.run_dir(tmp_path / d, name) for d in ("single", "dist"))
    _assert_same(pd.read_pickle(dist / "result.pkl"), pd.read_pickle(single / "result.pkl"))
    weights = "**/saes/*/sae_weights.safetensors"
    assert _files(tmp_path / "dist", weights) == _files(tmp_path / "single", weights)
    record = json.loads((dist / "complete.json").read_text())
    assert record["world_size"] == 2 and set(record["unit_ranks"].values()) == {0, 1}
    # a relaunch finds every unit done and only merges again
    again = _torchrun([str(script), name, str(tmp_path), str(tmp_path / "dist")], cwd=tmp_path)
    assert again.stdout.count("already done") == 2


def test_a_slurm_array_runs_the_same_units_and_the_last_task_merges(tmp_path):
    _one_process("p2_toy", tmp_path, tmp_path / "single")
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    outs = []
    for task in (3, 4):  # an array --array=3-4: tasks 0 and 1 of 2
        env = {**_env(), "SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_MIN": "3", "SLURM_ARRAY_TASK_COUNT": "2"}
        outs.append(subprocess.run([sys.executable, str(script), "p2_toy", str(tmp_path), str(tmp_path / "array")],
                                   cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300))
        assert outs[-1].returncode == 0, outs[-1].stderr[-3000:]
    assert "still to run elsewhere" in outs[0].stdout and "merged" in outs[1].stdout
    single, array = (executor.run_dir(tmp_path / d, "p2_toy") for d in ("single", "array"))
    _assert_same(pd.read_pickle(array / "result.pkl"), pd.read_pickle(single / "result.pkl"))


def test_a_completed_run_is_read_back_and_one_at_other_sizes_refused_by_name(tmp_path):
    from isae.experiments.p2_toy import P2Toy
    from isae.experiments.profiles import toy_profile

    results, source = _one_process("p2_toy", tmp_path, tmp_path / "out")
    assert source == "run in this process"
    again, source = executor.execute(P2Toy(toy_profile("smoke", **TOY_OVERRIDES)), tmp_path / "out", device="cpu",
                                     progress=False)  # "auto": the completed run
    assert source.startswith("read from the completed run") and "world size 1" in source
    assert list(again) == ["sparsity", "hidden", "weighted"]
    for name, r in results.items():
        _assert_same({"runs": again[name].runs, "log": again[name].log, "banks": again[name].banks},
                     {"runs": r.runs, "log": r.log, "banks": r.banks}, name)
        assert torch.equal(again[name].stream.w_p, r.stream.w_p)
    other = P2Toy(toy_profile("smoke", **{**TOY_OVERRIDES, "n_steps": 10}))
    with pytest.raises(ValueError, match="n_steps: run 20, here 10"):
        executor.execute(other, tmp_path / "elsewhere", results_from=tmp_path / "out", device="cpu")
    with pytest.raises(ValueError, match="no completed run there"):
        executor.execute(other, tmp_path / "elsewhere", results_from=tmp_path / "nothing", device="cpu")
    assert executor.completed_record(tmp_path / "out", "p2_toy", executor.full_identity(other)) is None


def test_the_launcher_runs_an_experiment_on_two_ranks(tmp_path):
    """The command-line entry point: the toy experiment at the smoke profile, then read by the notebook's call."""
    from isae.experiments.p2_toy import P2Toy
    from isae.experiments.profiles import toy_profile

    sets = [a for k, v in TOY_OVERRIDES.items() for a in ("--set", f"{k}={v}")]
    done = _torchrun(["-m", "isae.experiments.launch", "p2_toy", "--profile", "smoke", *sets, "--output-root",
                      str(tmp_path), "--device", "cpu", "--threads", "1", "--no-progress"], cwd=tmp_path)
    assert "[rank 1/2]" in done.stdout
    _, source = executor.execute(P2Toy(toy_profile("smoke", **TOY_OVERRIDES)), tmp_path, device="cpu",
                                 progress=False)
    assert "world size 2" in source and "launch p2_toy" in source
