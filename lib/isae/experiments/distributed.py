"""Experiments across many processes (torchrun): the grid of runs split among ranks, results identical to one process.

A run of the grid (recipe, setting, data seed, model, seed) depends only on its own key: its data are batches of a
stream that is a pure function of (data seed, step), its initialisation and aRIP noise are seeded by its key
(``isae.core.seeding``), and ``train_many`` trains each model on its own. So ranks exchange nothing but barriers
and a few small objects; every result goes through the file system, in the folders a one-process run writes:

1. ``synthetic_grid`` lists the runs and ``shares`` assigns them to ranks (balanced by cost, a pure function of
   the grid and the world size; world size 1 is the one-process run). Each rank trains its runs of one
   (recipe, setting, data seed) together with ``train_many`` and saves every SAE where ``run_recipes`` does.
2. A barrier; then the evaluation units (recipe, setting, data seed, model: every seed pair of the model, its runs
   and its random-init pair) are shared the same way, each written to ``distributed/p1_synthetic/``.
3. A barrier; rank 0 assembles the tables in the one-process order, writes them with provenance (world size, every
   rank's host and device) and a ``complete.json`` that notebook 01 detects (``results_from``).

Checkpoints: a rank holding every SAE of a setting uses the one-process folder ``checkpoints/<run>``; one holding a
part uses ``checkpoints/<run>/part-<hash of its models>``, the same at every launch with the same world size, so a
killed rank's work resumes and finished ranks only reload their last checkpoint.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from isae.core.io import load_sae, save_sae
from isae.core.models import SAE
from isae.core.provenance import _atomic_write, atomic_write_json, provenance, set_distributed, write_with_provenance
from isae.core.runs import RunKey
from isae.experiments import p1_synthetic
from isae.experiments.p1_synthetic import ExperimentResult
from isae.experiments.profiles import SyntheticProfile
from isae.train.trainer import train_many

#: Relative cost of one training step per architecture, from the README's step times at P1's sizes (TopK 93 ms,
#: AbsTopK 92, iSAE 135, iSAE-ME 340); used only to balance ranks.
STEP_COST = {"topk": 1.0, "abstopk": 1.0, "isae": 1.45, "isae_me": 3.65, "relu": 1.0, "jumprelu": 1.0}
EXPERIMENTS = ("p1_synthetic", "caching")
WORK_DIR = "distributed"


# ------------------------------------------------------------------------------------------------------
# The world: rank, size, device, barriers
# ------------------------------------------------------------------------------------------------------
@dataclass
class World:
    """This process's place in a run: ``rank`` of ``world_size`` (1: one process, no process group)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    """The process group's backend ("gloo"), None without one."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank (nothing with one process)."""
        if self.world_size > 1:
            torch.distributed.barrier()

    def all_gather(self, obj: Any) -> list:
        """Every rank's ``obj``, by rank (a small picklable object)."""
        if self.world_size == 1:
            return [obj]
        out = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def device(self, device: str | None = None) -> torch.device:
        """This rank's device: ``device`` None or "cuda" → cuda:<local rank modulo the visible GPUs> when torch
        sees CUDA (several ranks may share one GPU), else the CPU; an explicit index is kept."""
        if device is None and not torch.cuda.is_available():
            return torch.device("cpu")
        dev = torch.device(device or "cuda")
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise ValueError(f"device={device!r} but torch sees no CUDA device here; pass --device cpu.")
            if dev.index is None:
                dev = torch.device("cuda", self.local_rank % torch.cuda.device_count())
            torch.cuda.set_device(dev)
        return dev


def init_world(timeout_hours: float = 72.0) -> World:
    """The ``World`` that torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) describes, with a
    gloo process group when WORLD_SIZE > 1. Gloo on every device: ranks exchange only barriers and small objects.
    ``timeout_hours`` bounds a barrier's wait (the fastest rank waits there for the slowest)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if size == 1:
        return World()
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo", timeout=_dt.timedelta(hours=timeout_hours))
    return World(rank=rank, world_size=size, local_rank=local, backend="gloo")


def close_world(world: World) -> None:
    set_distributed(None)
    if world.world_size > 1 and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def describe_world(world: World, device: torch.device) -> dict:
    """Every rank's host, process, device and torch threads (gathered from all ranks), as provenance records
    them; sets it as this process's provenance context (``isae.core.provenance.set_distributed``)."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)"
    mine = {"rank": world.rank, "local_rank": world.local_rank, "host": socket.gethostname(), "pid": os.getpid(),
            "device": str(device), "device_name": name, "torch_threads": torch.get_num_threads()}
    record = {"world_size": world.world_size, "backend": world.backend, "rank": world.rank,
              "ranks": world.all_gather(mine)}
    set_distributed(record)
    return record


# ------------------------------------------------------------------------------------------------------
# Assignment of work to ranks
# ------------------------------------------------------------------------------------------------------
def shares(n_items: int, world_size: int, cost: Sequence[float] | None = None) -> list[list[int]]:
    """Item indices per rank, each list in item order. Without ``cost``: item i to rank i % world_size. With it:
    longest job first to the least loaded rank (ties: the lower rank), a pure function of (cost, world_size)."""
    if world_size < 1:
        raise ValueError(f"world_size={world_size} must be ≥ 1.")
    if cost is None:
        return [list(range(r, n_items, world_size)) for r in range(world_size)]
    if len(cost) != n_items:
        raise ValueError(f"cost has {len(cost)} entries for {n_items} items.")
    load, out = [0.0] * world_size, [[] for _ in range(world_size)]
    for i in sorted(range(n_items), key=lambda i: (-cost[i], i)):
        r = min(range(world_size), key=lambda r: (load[r], r))
        out[r].append(i)
        load[r] += cost[i]
    return [sorted(s) for s in out]


@dataclass(frozen=True, order=True)
class SyntheticRun:
    """One SAE of the synthetic grid."""

    recipe: str
    setting: str
    data_seed: int
    variant: str
    seed: int

    @property
    def key(self) -> RunKey:
        return RunKey(self.variant, self.seed)

    @property
    def group(self) -> tuple[str, str, int]:
        """The (recipe, setting, data seed) whose stream it trains on."""
        return self.recipe, self.setting, self.data_seed


def synthetic_grid(p: SyntheticProfile, recipes: tuple[str, ...]) -> list[SyntheticRun]:
    """Every SAE ``run_recipes(p, recipes)`` trains, in its order: recipe, setting, data seed, model, seed."""
    p1_synthetic.check_recipes(recipes)
    return [SyntheticRun(r, s, d, a, seed) for r in recipes for s in p.settings for d in p.data_seeds()
            for a in p.models for seed in range(p.n_seeds)]


def synthetic_eval_units(p: SyntheticProfile, recipes: tuple[str, ...]) -> list[tuple[str, str, int, str]]:
    """Evaluation units (recipe, setting, data seed, model), in the one-process order."""
    return [(r, s, d, a) for r in recipes for s in p.settings for d in p.data_seeds() for a in p.models]


def training_plan(p: SyntheticProfile, recipes: tuple[str, ...], world_size: int) -> list[list[SyntheticRun]]:
    """The runs of each rank, balanced by ``STEP_COST`` (every run has p.n_steps steps)."""
    grid = synthetic_grid(p, recipes)
    return [[grid[i] for i in share] for share in shares(len(grid), world_size,
                                                         [STEP_COST.get(r.variant, 1.0) for r in grid])]


def _groups(runs: list[SyntheticRun]) -> dict[tuple[str, str, int], list[SyntheticRun]]:
    out: dict[tuple[str, str, int], list[SyntheticRun]] = {}
    for run in runs:
        out.setdefault(run.group, []).append(run)
    return out


def part_name(runs: list[SyntheticRun]) -> str:
    """The name of a set of runs of one group (checkpoint folder, log file): "part-<hash of its models>"."""
    names = ",".join(sorted(str(r.key) for r in runs))
    return "part-" + hashlib.sha256(names.encode()).hexdigest()[:12]


# ------------------------------------------------------------------------------------------------------
# P1 synthetic (notebook 01) across ranks
# ------------------------------------------------------------------------------------------------------
def _work(out: Path, recipe: str, run_name: str) -> Path:
    return out / WORK_DIR / "p1_synthetic" / recipe / run_name


def _save_pickle(obj, path: Path) -> None:
    _atomic_write(path, lambda f: pd.to_pickle(obj, f))


def _inputs(p: SyntheticProfile, recipe: str, setting: str, data_seed: int, device) -> p1_synthetic.SettingInputs:
    """``setting_inputs`` on ``device``; the default device is passed as None, as a notebook passes it, so that
    one-process checkpoints (whose signature holds TrainConfig.device) resume here and the other way round."""
    dev = torch.device(device)
    if torch.cuda.is_available():  # "cuda" is the current device, which ``World.device`` set to this rank's
        default = dev.type == "cuda" and (dev.index is None or dev.index == torch.cuda.current_device())
    else:
        default = dev.type == "cpu"
    name = None if default else str(dev)
    return p1_synthetic.setting_inputs(setting, replace(p, data_seed=data_seed), recipe, device=name)


def _canonical_keys(p: SyntheticProfile) -> list[RunKey]:
    """A setting's trained SAEs in ``train_and_evaluate``'s order."""
    return [RunKey(a, s) for a in p.models for s in range(p.n_seeds)]


def train_synthetic_share(runs: list[SyntheticRun], p: SyntheticProfile, recipes: tuple[str, ...], out: Path,
                          device: torch.device, progress: bool = True, label: str = "",
                          **provenance_params) -> None:
    """Train ``runs`` (one ``train_many`` per (recipe, setting, data seed)), save every SAE where ``run_recipes``
    does and each call's training log under ``distributed/``."""
    whole = len(p.models) * p.n_seeds
    for (recipe, setting, d), group in _groups(runs).items():
        si = _inputs(p, recipe, setting, d, device)
        sub = p1_synthetic.recipe_dir(out, recipes, recipe)
        saes = {str(r.key): SAE(si.sae_cfgs[r.variant], seed=r.seed) for r in group}
        ckpt = sub / "checkpoints" / si.run_name
        if len(group) < whole:
            ckpt = ckpt / part_name(group)
        print(f"{label}training {len(group)} SAEs of {recipe}/{si.run_name}: {', '.join(saes)}", flush=True)
        log = train_many(saes, si.stream, si.train_cfg, checkpoint_dir=ckpt, progress=progress)
        for r in group:
            save_sae(saes[str(r.key)], p1_synthetic.sae_dir(sub, si.run_name, r.key), setting=setting, seed=r.seed,
                     train=si.train_cfg.__dict__, data=si.data_cfg.to_dict(), recipe=si.recipe.to_dict(),
                     **provenance_params)
        _save_pickle(log, _work(out, recipe, si.run_name) / f"train-{part_name(group)}.pkl")


def _load_saes(p: SyntheticProfile, sub: Path, run_name: str, keys: list[RunKey], device) -> dict[RunKey, SAE]:
    saes = {}
    for key in keys:
        sae = load_sae(p1_synthetic.sae_dir(sub, run_name, key), device=device)
        sae.seed = key.seed
        saes[key] = sae
    return saes


def evaluate_synthetic_share(units: list[tuple[str, str, int, str]], p: SyntheticProfile, recipes: tuple[str, ...],
                             out: Path, device: torch.device) -> None:
    """Evaluate each unit (recipe, setting, data seed, model): its runs and seed pairs and its random-init pair, on
    the held-out inputs ``run_synthetic_setting`` uses, from the saved SAEs."""
    for recipe, setting, d, variant in units:
        si = _inputs(p, recipe, setting, d, device)
        sub = p1_synthetic.recipe_dir(out, recipes, recipe)
        x_eval = si.stream.held_out(p.n_eval)[0].to(device)
        saes = _load_saes(p, sub, si.run_name, [RunKey(variant, s) for s in range(p.n_seeds)], device)
        runs, pairs = p1_synthetic.evaluate(saes, x_eval, true_atoms=si.stream.dictionary, progress=False)
        base = p1_synthetic.untrained_pair(si.sae_cfgs[variant], si.stream, si.train_cfg.geometric_median_samples,
                                           device)
        base_runs, base_pairs = p1_synthetic.evaluate(base, x_eval, true_atoms=si.stream.dictionary, progress=False)
        _save_pickle({"runs": runs, "pairs": pairs, "base_runs": base_runs, "base_pairs": base_pairs},
                     _work(out, recipe, si.run_name) / f"eval-{variant}.pkl")


def assemble_synthetic(p: SyntheticProfile, recipes: tuple[str, ...], out: Path, world_size: int) -> None:
    """Rank 0: each setting's runs, pairs and log in ``run_synthetic_setting``'s order and columns, from the files
    the ranks wrote, into ``distributed/p1_synthetic/<recipe>/<run>/result.pkl``."""
    plan = training_plan(p, recipes, world_size)
    parts: dict[tuple[str, str, int], list[list[SyntheticRun]]] = {}
    for share in plan:
        for group_key, group in _groups(share).items():
            parts.setdefault(group_key, []).append(group)
    order = {str(k): i for i, k in enumerate(_canonical_keys(p))}
    by_name = {str(k): k for k in _canonical_keys(p)}
    for recipe in recipes:
        for setting in p.settings:
            for d in p.data_seeds():
                work = _work(out, recipe, p1_synthetic.run_name(setting, d))
                log = pd.concat([pd.read_pickle(work / f"train-{part_name(g)}.pkl")
                                 for g in parts[recipe, setting, d]], ignore_index=True)
                # train_many's order: step by step, every model in turn
                log = (log.assign(_order=log["model"].map(order)).sort_values(["step", "_order"], kind="stable")
                       .drop(columns="_order").reset_index(drop=True))
                log.insert(0, "setting", setting)
                if len(log):
                    log = log.join(pd.DataFrame([by_name[n].columns() for n in log["model"]], index=log.index))
                evals = [pd.read_pickle(work / f"eval-{a}.pkl") for a in p.models]
                runs = pd.concat([e["runs"] for e in evals] + [e["base_runs"] for e in evals], ignore_index=True)
                pairs = pd.concat([e["pairs"] for e in evals] + [e["base_pairs"] for e in evals], ignore_index=True)
                for df in (runs, pairs):
                    df.insert(0, "setting", setting)
                for df in (runs, pairs, log):
                    df.insert(1, "data_seed", d)
                _save_pickle({"runs": runs, "pairs": pairs, "log": log}, work / "result.pkl")


def _sizes(p: SyntheticProfile) -> dict:
    return json.loads(json.dumps(p.to_dict(), default=str))


def marker_path(out: str | Path) -> Path:
    """The file a completed distributed synthetic run leaves: ``<out>/distributed/p1_synthetic/complete.json``."""
    return Path(out) / WORK_DIR / "p1_synthetic" / "complete.json"


def completed_run(out: str | Path, p: SyntheticProfile, recipes: tuple[str, ...]) -> dict | None:
    """The record of a completed distributed synthetic run under ``out`` at exactly the sizes ``p`` and
    ``recipes``; None when there is none or it was made at other sizes."""
    path = marker_path(out)
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    if record.get("sizes") != _sizes(p) or tuple(record.get("recipes", ())) != tuple(recipes):
        return None
    return record


def _mismatch(record: dict, p: SyntheticProfile, recipes: tuple[str, ...]) -> str:
    theirs, ours = record.get("sizes", {}), _sizes(p)
    diff = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
    parts = [f"{k}: run {theirs.get(k)!r}, here {ours.get(k)!r}" for k in diff]
    if tuple(record.get("recipes", ())) != tuple(recipes):
        parts.append(f"recipes: run {record.get('recipes')}, here {list(recipes)}")
    return "; ".join(parts)


def load_synthetic_results(out: str | Path, p: SyntheticProfile, recipes: tuple[str, ...],
                           device: str | torch.device | None = None) -> dict[str, dict[str, ExperimentResult]]:
    """``run_recipes(p, recipes, out_dir=out)``'s result rebuilt from what a distributed run wrote under ``out``:
    the tables rank 0 assembled, the saved SAEs, the held-out inputs drawn again (a pure function of the data seed)."""
    out = Path(out)
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results: dict[str, dict[str, ExperimentResult]] = {}
    for recipe in recipes:
        sub = p1_synthetic.recipe_dir(out, recipes, recipe)
        results[recipe] = {}
        for setting in p.settings:
            for d in p.data_seeds():
                si = _inputs(p, recipe, setting, d, dev)
                tables = pd.read_pickle(_work(out, recipe, si.run_name) / "result.pkl")
                saes = _load_saes(p, sub, si.run_name, _canonical_keys(p), dev)
                x_eval = si.stream.held_out(p.n_eval)[0].to(dev)
                results[recipe][p1_synthetic.setting_key(setting, d, p)] = ExperimentResult(
                    runs=tables["runs"], pairs=tables["pairs"], log=tables["log"], saes=saes, x_eval=x_eval)
    return results


def synthetic_results(p: SyntheticProfile, recipes: tuple[str, ...], out_dir: str | Path,
                      results_from: str | Path | None = "auto", device: str | None = None, progress: bool = True,
                      **provenance_params) -> tuple[dict[str, dict[str, ExperimentResult]], str]:
    """Notebook 01's results and where they came from: read from a completed distributed run (``results_from``: a
    folder such as ``outputs/paper``, or "auto": ``out_dir`` when it holds one at these sizes), else trained here
    with ``run_recipes``. Returns (results by recipe and setting, a sentence saying which)."""
    if results_from is not None and results_from != "auto":
        record = completed_run(results_from, p, recipes)
        if record is None:
            path = marker_path(results_from)
            if not path.exists():
                raise ValueError(f"results_from={str(results_from)!r}: no completed distributed run there ({path} is "
                                 "missing); launch one (python -m isae.experiments.launch p1_synthetic) or pass "
                                 "results_from=None to train here.")
            raise ValueError(f"results_from={str(results_from)!r}: that run was made at other sizes "
                             f"({_mismatch(json.loads(path.read_text()), p, recipes)}); pass the same notebook "
                             "parameters or results_from=None to train here.")
        source = Path(results_from)
    elif results_from == "auto" and completed_run(out_dir, p, recipes) is not None:
        record, source = completed_run(out_dir, p, recipes), Path(out_dir)
    else:
        results = p1_synthetic.run_recipes(p, recipes, out_dir=out_dir, device=device, progress=progress,
                                           **provenance_params)
        return results, "trained and evaluated in this process"
    results = load_synthetic_results(source, p, recipes, device=device)
    return results, (f"read from the distributed run under {source} (world size {record['world_size']}, finished "
                     f"{record['finished_utc']}; launched with `{record['command']}`)")


def write_synthetic_tables(tables: Path, runs: pd.DataFrame, pairs: pd.DataFrame, recipes: tuple[str, ...],
                           **params) -> pd.DataFrame:
    """Notebook 01's tables from (runs, pairs) of every recipe, with provenance; returns the summary table."""
    from isae.report import p1 as report_p1

    table = p1_synthetic.summarise(runs, pairs)
    headline = p1_synthetic.with_protocol(table[table["recipe"] == recipes[0]].drop(columns="recipe"), "authors")
    for df, name in ((headline[list(p1_synthetic.TABLE_COLUMNS)], "table1_synthetic.csv"),
                     (table, "table1_synthetic_all_metrics.csv"), (runs, "table1_synthetic_runs.csv"),
                     (pairs, "table1_synthetic_pairs.csv"),
                     (report_p1.check_synthetic_claims_by_recipe(table), "table1_claims.csv")):
        write_with_provenance(tables / name, lambda f, df=df: df.to_csv(f, index=False), **params)
    return table


def run_synthetic_distributed(world: World, p: SyntheticProfile, recipes: tuple[str, ...], out: str | Path,
                              device: str | None = None, progress: bool = True, profile: str = "custom",
                              command: str = "", log: Callable[[str], None] = print) -> dict | None:
    """Notebook 01's training and evaluation shared among the ranks of ``world``, its tables written by rank 0
    under ``out/tables`` and ``complete.json`` last. Every rank calls it; rank 0 returns the completion record."""
    out = Path(out)
    dev = world.device(device)
    record = describe_world(world, dev)
    label = f"[rank {world.rank}/{world.world_size}] " if world.world_size > 1 else ""
    params = {"experiment": "p1_synthetic", "profile": profile, "launcher": command}
    started = time.perf_counter()
    if world.is_main:
        marker_path(out).unlink(missing_ok=True)  # a run in progress is not complete
    mine = training_plan(p, recipes, world.world_size)[world.rank]
    log(f"{label}{len(mine)} of {len(synthetic_grid(p, recipes))} SAEs to train on {dev}")
    train_synthetic_share(mine, p, recipes, out, dev, progress=progress, label=label, **params)
    trained = time.perf_counter() - started
    world.barrier()
    units = synthetic_eval_units(p, recipes)
    my_units = [units[i] for i in shares(len(units), world.world_size)[world.rank]]
    log(f"{label}evaluating {len(my_units)} of {len(units)} (recipe, setting, data seed, model) units")
    evaluate_synthetic_share(my_units, p, recipes, out, dev)
    # every rank's own time (gathering is also the barrier before rank 0 reads the evaluations)
    timings = world.all_gather({"rank": world.rank, "train_s": round(trained, 1),
                                "eval_s": round(time.perf_counter() - started - trained, 1)})
    if not world.is_main:
        return None
    assemble_synthetic(p, recipes, out, world.world_size)
    runs, pairs = _combined_tables(out, p, recipes)
    write_synthetic_tables(out / "tables", runs, pairs, recipes, **params, **p.to_dict(), recipe_names=list(recipes))
    done = {"experiment": "p1_synthetic", "profile": profile, "sizes": _sizes(p), "recipes": list(recipes),
            "world_size": world.world_size, "ranks": record["ranks"], "command": command,
            "seconds": round(time.perf_counter() - started, 1), "rank_seconds": timings,
            "finished_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "provenance": provenance(**params)}
    atomic_write_json(marker_path(out), done)
    log(f"tables written under {out / 'tables'} in {done['seconds']:.0f} s; {marker_path(out)}")
    return done


def _combined_tables(out: Path, p: SyntheticProfile, recipes: tuple[str, ...]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``combine``'s (runs, pairs) from the assembled ``result.pkl`` files (no SAE loaded)."""
    full = {}
    for recipe in recipes:
        full[recipe] = {}
        for setting in p.settings:
            for d in p.data_seeds():
                t = pd.read_pickle(_work(out, recipe, p1_synthetic.run_name(setting, d)) / "result.pkl")
                full[recipe][p1_synthetic.setting_key(setting, d, p)] = ExperimentResult(
                    runs=t["runs"], pairs=t["pairs"], log=t["log"], saes={}, x_eval=torch.empty(0))
    runs, pairs, _ = p1_synthetic.combine(full)
    return runs, pairs


# ------------------------------------------------------------------------------------------------------
# Activation caches (notebook 02) across ranks
# ------------------------------------------------------------------------------------------------------
def run_caching_distributed(world: World, profile: str, out: str | Path, device: str | None = None,
                            progress: bool = True, log: Callable[[str], None] = print, **overrides) -> None:
    """Notebook 02's caches (the real-data profile's and the weighted-SAE notebook's layers) under
    ``out/activations``, each cache's shards shared among the ranks (``isae.data.cache.partitioned_builds``)."""
    from isae.data.cache import partitioned_builds
    from isae.experiments import caching
    from isae.experiments.profiles import real_profile, weighted_profile

    dev = world.device(device)
    describe_world(world, dev)
    p = real_profile(profile, **overrides)
    with partitioned_builds(world.rank, world.world_size, world.barrier):
        caches, timing, _ = caching.build_profile_caches(Path(out) / "activations", p, device=str(dev),
                                                         progress=progress, wp=weighted_profile(profile))
    if world.is_main:
        log(timing.to_string(index=False))
