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

A completed run is identified by its sizes and by the code that computed it (``code``: a digest of
``isae.core.provenance.RESULTS_CODE``, each file's hash kept under ``code_files``); one made by other code is never
read as this code's results: asking for it refuses, naming the files that changed.

Checkpoints: a rank holding every SAE of a setting uses the one-process folder ``checkpoints/<run>``; one holding a
part uses ``checkpoints/<run>/part-<hash of its models>``, the same at every launch with the same world size, so a
killed rank's work resumes and finished ranks only reload their last checkpoint.

The same pattern serves notebook 03 (``run_real_distributed``: units of (setting, model), every seed of a model on
one rank, so the convergence curve's seed pairs are evaluated during training), notebook 04
(``run_toy_distributed``: one bank of toy SAEs per unit) and notebook 05 (``run_weighted_distributed``: one
setting per unit). Each notebook reads a completed run through its ``results_from`` parameter
(``synthetic_results``, ``real_results``, ``toy_results``, ``weighted_results``).
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
from isae.core.provenance import (
    RESULTS_CODE,
    _atomic_write,
    atomic_write_json,
    code_difference,
    code_digest,
    code_fingerprint,
    device_name,
    provenance,
    set_distributed,
    write_with_provenance,
)
from isae.core.runs import RunKey
from isae.experiments import p1_synthetic
from isae.experiments.p1_synthetic import ExperimentResult
from isae.experiments.profiles import RealProfile, SyntheticProfile, ToyProfile, WeightedProfile
from isae.train.trainer import train_many

#: Relative cost of one training step per architecture, from the README's step times at P1's sizes (TopK 93 ms,
#: AbsTopK 92, iSAE 135, iSAE-ME 340); used only to balance ranks.
STEP_COST = {"topk": 1.0, "abstopk": 1.0, "isae": 1.45, "isae_me": 3.65, "relu": 1.0, "jumprelu": 1.0}
EXPERIMENTS = ("p1_synthetic", "p1_real", "p2_toy", "p2_weighted", "caching")
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
    mine = {"rank": world.rank, "local_rank": world.local_rank, "host": socket.gethostname(), "pid": os.getpid(),
            "device": str(device), "device_name": device_name(device), "torch_threads": torch.get_num_threads()}
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


def part_name(keys) -> str:
    """The name of a set of models of one setting (checkpoint folder, log file), from their ``RunKey``s:
    "part-<hash of the keys>"."""
    names = ",".join(sorted(str(k) for k in keys))
    return "part-" + hashlib.sha256(names.encode()).hexdigest()[:12]


# ------------------------------------------------------------------------------------------------------
# P1 synthetic (notebook 01) across ranks
# ------------------------------------------------------------------------------------------------------
def _work(out: Path, recipe: str, run_name: str) -> Path:
    return out / WORK_DIR / "p1_synthetic" / recipe / run_name


def _save_pickle(obj, path: Path) -> None:
    _atomic_write(path, lambda f: pd.to_pickle(obj, f))


def _as_notebook_device(device) -> str | None:
    """``device`` as a notebook passes it: None for the default device, so that one-process checkpoints (whose
    signature holds TrainConfig.device) resume here and the other way round."""
    dev = torch.device(device)
    if torch.cuda.is_available():  # "cuda" is the current device, which ``World.device`` set to this rank's
        default = dev.type == "cuda" and (dev.index is None or dev.index == torch.cuda.current_device())
    else:
        default = dev.type == "cpu"
    return None if default else str(dev)


def _inputs(p: SyntheticProfile, recipe: str, setting: str, data_seed: int, device) -> p1_synthetic.SettingInputs:
    """``setting_inputs`` on ``device`` (``_as_notebook_device``)."""
    return p1_synthetic.setting_inputs(setting, replace(p, data_seed=data_seed), recipe,
                                       device=_as_notebook_device(device))


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
            ckpt = ckpt / part_name(r.key for r in group)
        print(f"{label}training {len(group)} SAEs of {recipe}/{si.run_name}: {', '.join(saes)}", flush=True)
        log = train_many(saes, si.stream, si.train_cfg, checkpoint_dir=ckpt, progress=progress)
        for r in group:
            save_sae(saes[str(r.key)], p1_synthetic.sae_dir(sub, si.run_name, r.key), setting=setting, seed=r.seed,
                     train=si.train_cfg.__dict__, data=si.data_cfg.to_dict(), recipe=si.recipe.to_dict(),
                     **provenance_params)
        _save_pickle(log, _work(out, recipe, si.run_name) / f"train-{part_name(r.key for r in group)}.pkl")


def _load_saes(sub: Path, run_name: str, keys: list[RunKey], device) -> dict[RunKey, SAE]:
    """The saved SAEs ``keys`` of one setting (``p1_synthetic.sae_dir``), each with its seed."""
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
        saes = _load_saes(sub, si.run_name, [RunKey(variant, s) for s in range(p.n_seeds)], device)
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
                log = pd.concat([pd.read_pickle(work / f"train-{part_name(r.key for r in g)}.pkl")
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


def _sizes(p) -> dict:
    """A profile's fields as JSON values (what a completion record compares)."""
    return json.loads(json.dumps(p.to_dict(), default=str))


def marker_path(out: str | Path, experiment: str = "p1_synthetic") -> Path:
    """The file a completed distributed run of ``experiment`` leaves: ``<out>/distributed/<experiment>/
    complete.json``."""
    return Path(out) / WORK_DIR / experiment / "complete.json"


def _with_code(identity: dict) -> dict:
    """A completed run's identity: its sizes and so on, and the code that computed its results."""
    return {**identity, "code": code_digest(code_fingerprint(RESULTS_CODE))}


def completed_record(out: str | Path, experiment: str, identity: dict) -> dict | None:
    """The record of a completed distributed run of ``experiment`` under ``out`` whose ``identity`` fields (its
    sizes, code, ...) equal these; None when there is none or it was made at other sizes or by other code."""
    path = marker_path(out, experiment)
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    return record if all(record.get(k) == v for k, v in identity.items()) else None


def _synthetic_identity(p: SyntheticProfile, recipes: tuple[str, ...]) -> dict:
    return _with_code({"sizes": _sizes(p), "recipes": list(recipes)})


def completed_run(out: str | Path, p: SyntheticProfile, recipes: tuple[str, ...]) -> dict | None:
    """The record of a completed distributed synthetic run under ``out`` at exactly the sizes ``p`` and
    ``recipes``; None when there is none or it was made at other sizes."""
    return completed_record(out, "p1_synthetic", _synthetic_identity(p, recipes))


def _code_change(record: dict) -> str:
    """The source files that differ between a completion record's code and this code."""
    return code_difference(record.get("code_files"), code_fingerprint(RESULTS_CODE))


def _mismatch(record: dict, identity: dict) -> str:
    """What differs between a record and the identity asked for, field by field (the code: file by file)."""
    parts = []
    for name, ours in identity.items():
        theirs = record.get(name)
        if name == "code":
            if theirs != ours:
                parts.append(f"code: {_code_change(record)}")
        elif isinstance(ours, dict) and isinstance(theirs, dict):
            parts += [f"{k}: run {theirs.get(k)!r}, here {ours.get(k)!r}" for k in sorted(set(theirs) | set(ours))
                      if theirs.get(k) != ours.get(k)]
        elif theirs != ours:
            parts.append(f"{name}: run {theirs}, here {ours}")
    return "; ".join(parts)


def results_source(results_from: str | Path | None, out_dir: str | Path, experiment: str,
                   identity: dict) -> tuple[Path, dict] | None:
    """Where a notebook reads ``experiment``'s results from: (folder, completion record) of the completed distributed
    run that ``results_from`` names (a folder such as ``outputs/paper``; "auto": ``out_dir`` when it holds one at
    these sizes), None to train in the notebook. An explicit folder without such a run is refused, naming why.

    A run made by other code (everything else equal) is refused under "auto" too, rather than trained over: its
    results are not this code's, and training here would meet checkpoints of that same code."""
    if results_from is None:
        return None
    folder = Path(out_dir if results_from == "auto" else results_from)
    record = completed_record(folder, experiment, identity)
    if record is not None:
        return folder, record
    path = marker_path(folder, experiment)
    if not path.exists():
        if results_from == "auto":
            return None
        raise ValueError(f"results_from={str(results_from)!r}: no completed distributed run there ({path} is "
                         f"missing); launch one (python -m isae.experiments.launch {experiment}) or pass "
                         "results_from=None to train here.")
    theirs = json.loads(path.read_text())
    if all(theirs.get(k) == v for k, v in identity.items() if k != "code"):
        raise ValueError(f"results_from={str(results_from)!r}: the completed distributed run of {experiment} under "
                         f"{folder} was made by other code ({_code_change(theirs)}): its results are not what this "
                         f"code computes. Delete {folder} (or every output: `make clean`) or pass another "
                         "output_root, then relaunch or train here; results_from=None trains here at once, but is "
                         f"refused in turn where {folder} holds training checkpoints of that code.")
    if results_from == "auto":
        return None
    raise ValueError(f"results_from={str(results_from)!r}: that run was made at other sizes "
                     f"({_mismatch(theirs, identity)}); pass the same notebook "
                     "parameters or results_from=None to train here.")


def _source_sentence(source: Path, record: dict) -> str:
    return (f"read from the distributed run under {source} (world size {record['world_size']}, finished "
            f"{record['finished_utc']}; launched with `{record['command']}`)")


@dataclass
class _Launch:
    """One rank's side of a launched experiment: where it writes, its device, its prefix in log lines, what its
    provenance records and when it started."""

    experiment: str
    out: Path
    device: torch.device
    world: dict
    """``describe_world``'s record (every rank's host and device)."""
    label: str
    params: dict
    """Provenance of what it writes: experiment, profile and the launch command ("launcher")."""
    started: float


def _begin(world: World, experiment: str, out: str | Path, device: str | None, profile: str,
           command: str) -> _Launch:
    """Every rank, first: its device, the world's record; rank 0 removes an old completion record (a run in
    progress is not complete)."""
    dev = world.device(device)
    run = _Launch(experiment, Path(out), dev, describe_world(world, dev),
                  f"[rank {world.rank}/{world.world_size}] " if world.world_size > 1 else "",
                  {"experiment": experiment, "profile": profile, "launcher": command}, time.perf_counter())
    if world.is_main:
        marker_path(run.out, experiment).unlink(missing_ok=True)
    return run


def _complete(run: _Launch, identity: dict, timings: list) -> dict:
    """Rank 0, last: write the run's completion record (atomically) and return it."""
    done = {"experiment": run.experiment, "profile": run.params["profile"], **identity,
            "world_size": run.world["world_size"], "ranks": run.world["ranks"], "command": run.params["launcher"],
            "seconds": round(time.perf_counter() - run.started, 1), "rank_seconds": timings,
            "finished_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "code_files": code_fingerprint(RESULTS_CODE),
            "provenance": provenance(**run.params, device=str(run.device))}
    atomic_write_json(marker_path(run.out, run.experiment), done)
    return done


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
                saes = _load_saes(sub, si.run_name, _canonical_keys(p), dev)
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
    found = results_source(results_from, out_dir, "p1_synthetic", _synthetic_identity(p, recipes))
    if found is None:
        results = p1_synthetic.run_recipes(p, recipes, out_dir=out_dir, device=device, progress=progress,
                                           **provenance_params)
        return results, "trained and evaluated in this process"
    source, record = found
    return load_synthetic_results(source, p, recipes, device=device), _source_sentence(source, record)


def write_synthetic_tables(tables: Path, runs: pd.DataFrame, pairs: pd.DataFrame, recipes: tuple[str, ...],
                           **params) -> pd.DataFrame:
    """Notebook 01's tables from (runs, pairs) of every recipe, with provenance; returns the summary table."""
    from isae.report import p1 as report_p1

    table = p1_synthetic.summarise(runs, pairs)
    headline = p1_synthetic.with_protocol(table[table["recipe"] == recipes[0]].drop(columns="recipe"), "authors")
    for df, name in ((headline[list(p1_synthetic.TABLE_COLUMNS)], "table1_synthetic.csv"),
                     (table, "table1_synthetic_all_metrics.csv"), (runs, "table1_synthetic_runs.csv"),
                     (pairs, "table1_synthetic_pairs.csv"),
                     (report_p1.check_synthetic_claims_by_recipe(table, params.get("profile", "")),
                      "table1_claims.csv")):
        write_with_provenance(tables / name, lambda f, df=df: df.to_csv(f, index=False), **params)
    return table


def run_synthetic_distributed(world: World, p: SyntheticProfile, recipes: tuple[str, ...], out: str | Path,
                              device: str | None = None, progress: bool = True, profile: str = "custom",
                              command: str = "", log: Callable[[str], None] = print) -> dict | None:
    """Notebook 01's training and evaluation shared among the ranks of ``world``, its tables written by rank 0
    under ``out/tables`` and ``complete.json`` last. Every rank calls it; rank 0 returns the completion record."""
    run = _begin(world, "p1_synthetic", out, device, profile, command)
    out, dev, label, params = run.out, run.device, run.label, run.params
    mine = training_plan(p, recipes, world.world_size)[world.rank]
    log(f"{label}{len(mine)} of {len(synthetic_grid(p, recipes))} SAEs to train on {dev}")
    train_synthetic_share(mine, p, recipes, out, dev, progress=progress, label=label, **params)
    trained = time.perf_counter() - run.started
    world.barrier()
    units = synthetic_eval_units(p, recipes)
    my_units = [units[i] for i in shares(len(units), world.world_size)[world.rank]]
    log(f"{label}evaluating {len(my_units)} of {len(units)} (recipe, setting, data seed, model) units")
    evaluate_synthetic_share(my_units, p, recipes, out, dev)
    # every rank's own time (gathering is also the barrier before rank 0 reads the evaluations)
    timings = world.all_gather({"rank": world.rank, "train_s": round(trained, 1),
                                "eval_s": round(time.perf_counter() - run.started - trained, 1)})
    if not world.is_main:
        return None
    assemble_synthetic(p, recipes, out, world.world_size)
    runs, pairs = _combined_tables(out, p, recipes)
    write_synthetic_tables(out / "tables", runs, pairs, recipes, **params, **p.to_dict(), recipe_names=list(recipes),
                           device=str(dev))
    done = _complete(run, _synthetic_identity(p, recipes), timings)
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
# P1 on real activations (notebook 03) across ranks
# ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, order=True)
class RealUnit:
    """Every seed of one model of one real setting: the unit a rank trains and evaluates whole, so that its
    convergence curve's seed pairs are computed during training as in one process."""

    setting: str
    variant: str


def real_plan(p: RealProfile, steps: dict[str, int], world_size: int) -> list[list[RealUnit]]:
    """The units of each rank, balanced by ``STEP_COST`` × the setting's training steps (``steps``, by setting),
    in the one-process order (setting, model)."""
    from isae.experiments.p1_real import SETTINGS

    units = [RealUnit(s, a) for s in SETTINGS for a in p.models]
    cost = [STEP_COST.get(u.variant, 1.0) * steps[u.setting] for u in units]
    return [[units[i] for i in share] for share in shares(len(units), world_size, cost)]


def _real_work(out: Path, setting: str) -> Path:
    return out / WORK_DIR / "p1_real" / setting


def _real_part(setting: str, variants: list[str], p: RealProfile) -> str | None:
    """The checkpoint subfolder of a rank's models of a setting: None when it holds them all (the one-process
    folder), else "part-<hash of its models>"."""
    if list(variants) == list(p.models):
        return None
    return part_name(RunKey(a, s) for a in variants for s in range(p.n_seeds))


def _by_setting(units: list[RealUnit]) -> dict[str, list[str]]:
    """A rank's models of each setting, in unit order."""
    out: dict[str, list[str]] = {}
    for u in units:
        out.setdefault(u.setting, []).append(u.variant)
    return out


def train_real_share(units: list[RealUnit], caches: dict, p: RealProfile, out: Path, device: torch.device,
                     progress: bool = True, label: str = "", **provenance_params) -> None:
    """Train and evaluate ``units`` (one ``train_real_setting`` per setting, on the rank's models of it), saving
    every SAE where notebook 03 does and the setting's tables and curve under ``distributed/p1_real/``."""
    from isae.experiments import p1_real

    for setting, variants in _by_setting(units).items():
        part = _real_part(setting, variants, p)
        print(f"{label}training {', '.join(variants)} × {p.n_seeds} seeds on {setting}", flush=True)
        rs = p1_real.train_real_setting(setting, caches, p, out, device=_as_notebook_device(device),
                                        progress=progress, models=tuple(variants), checkpoint_part=part,
                                        **provenance_params)
        r = rs.result
        _save_pickle({"runs": r.runs, "pairs": r.pairs, "log": r.log, "curve": r.curve},
                     _real_work(out, setting) / f"result-{'-'.join(variants)}.pkl")


def _in_order(df: pd.DataFrame, keys: list[str], order: dict[str, int]) -> pd.DataFrame:
    """``df`` sorted stably by ``keys``: "variant" in ``order``, "trained" trained first, "level" runs before
    pairs, any other column by its value."""
    if df.empty:
        return df
    rank = {"variant": lambda c: c.map(order), "trained": lambda c: ~c.astype(bool),
            "level": lambda c: c.map({"run": 0, "pair": 1})}
    by = pd.DataFrame({k: rank.get(k, lambda c: c)(df[k]) for k in keys})
    return df.loc[by.sort_values(keys, kind="stable").index].reset_index(drop=True)


def assemble_real(p: RealProfile, plan: list[list[RealUnit]], out: Path) -> dict[str, dict[str, pd.DataFrame]]:
    """Rank 0: each setting's runs, pairs, log and curve in ``train_and_evaluate``'s order, from the files the ranks
    wrote, into ``distributed/p1_real/<setting>/result.pkl``; returns them by setting."""
    from isae.experiments.p1_real import SETTINGS

    order = {a: i for i, a in enumerate(p.models)}
    parts: dict[str, list[list[str]]] = {}
    for share in plan:
        for setting, variants in _by_setting(share).items():
            parts.setdefault(setting, []).append(variants)
    tables = {}
    for setting in SETTINGS:
        work = _real_work(out, setting)
        got = [pd.read_pickle(work / f"result-{'-'.join(v)}.pkl") for v in parts[setting]]
        cat = {name: pd.concat([g[name] for g in got], ignore_index=True) for name in ("runs", "pairs", "log", "curve")}
        # train_and_evaluate's order: trained models then their random-init pairs, each in model order; the log
        # step by step, every model in turn; the curve step by step, runs before pairs
        tables[setting] = {"runs": _in_order(cat["runs"], ["trained", "variant"], order),
                           "pairs": _in_order(cat["pairs"], ["trained", "variant"], order),
                           "log": _in_order(cat["log"], ["step", "variant"], order),
                           "curve": _in_order(cat["curve"], ["step", "level", "variant"], order)}
        _save_pickle(tables[setting], work / "result.pkl")
    return tables


def _real_identity(p: RealProfile) -> dict:
    return _with_code({"sizes": _sizes(p)})


def _toy_identity(p: ToyProfile) -> dict:
    return _with_code({"sizes": _sizes(p)})


def run_real_distributed(world: World, p: RealProfile, caches: dict, out: str | Path, device: str | None = None,
                         progress: bool = True, profile: str = "custom", command: str = "",
                         log: Callable[[str], None] = print) -> dict | None:
    """Notebook 03's training and evaluation (``p1_real.train_real_settings``) shared among the ranks of ``world``
    by (setting, model); rank 0 writes its Table 2 files under ``out/tables`` and ``complete.json`` last, which
    notebook 03 then reads (``real_results``). Every rank calls it with the same caches."""
    from isae.experiments import p1_real

    run = _begin(world, "p1_real", out, device, profile, command)
    out, dev, label, params = run.out, run.device, run.label, run.params
    steps = {s: p1_real.real_inputs(s, caches, p).stream.n_steps for s in p1_real.SETTINGS}
    plan = real_plan(p, steps, world.world_size)
    mine = plan[world.rank]
    log(f"{label}{len(mine)} of {sum(map(len, plan))} (setting, model) units to train and evaluate on {dev}")
    train_real_share(mine, caches, p, out, dev, progress=progress, label=label, **params)
    timings = world.all_gather({"rank": world.rank, "seconds": round(time.perf_counter() - run.started, 1)})
    if not world.is_main:
        return None
    tables = assemble_real(p, plan, out)
    runs = pd.concat([t["runs"] for t in tables.values()], ignore_index=True)
    pairs = pd.concat([t["pairs"] for t in tables.values()], ignore_index=True)
    p1_real.write_table2(out / "tables", runs, pairs, **params, **p.to_dict(), device=str(dev))
    done = _complete(run, _real_identity(p), timings)
    log(f"tables written under {out / 'tables'} in {done['seconds']:.0f} s; {marker_path(out, 'p1_real')}")
    return done


def load_real_results(out: str | Path, caches: dict, p: RealProfile, device: str | None = None) -> dict:
    """``p1_real.train_real_settings``' result rebuilt from what a distributed run wrote under ``out``: the tables
    rank 0 assembled, the saved SAEs, the held-out rows read again from the caches."""
    from isae.experiments import p1_real

    out = Path(out)
    settings = {}
    for setting in p1_real.SETTINGS:
        ri = p1_real.real_inputs(setting, caches, p, device)
        dev = ri.train_cfg.resolved_device()
        t = pd.read_pickle(_real_work(out, setting) / "result.pkl")
        saes = _load_saes(out, setting, [RunKey(a, s) for a in p.models for s in range(p.n_seeds)], dev)
        result = ExperimentResult(runs=t["runs"], pairs=t["pairs"], log=t["log"], saes=saes,
                                  x_eval=ri.x_eval.to(dev), curve=t["curve"])
        settings[setting] = p1_real.RealSetting(setting, p.recipe, ri.stream, ri.train_cfg, ri.sae_cfgs, result,
                                                len(ri.x_eval))
    return settings


def real_results(caches: dict, p: RealProfile, out_dir: str | Path, results_from: str | Path | None = "auto",
                 device: str | None = None, progress: bool = True, **provenance_params) -> tuple[dict, str]:
    """Notebook 03's trained settings and where they came from: read from a completed distributed run
    (``results_from`` as in ``synthetic_results``), else trained here with ``p1_real.train_real_settings``."""
    from isae.experiments import p1_real

    found = results_source(results_from, out_dir, "p1_real", _real_identity(p))
    if found is None:
        settings = p1_real.train_real_settings(caches, p, out_dir, device=device, progress=progress,
                                               **provenance_params)
        return settings, "trained and evaluated in this process"
    source, record = found
    return load_real_results(source, caches, p, device=device), _source_sentence(source, record)


# ------------------------------------------------------------------------------------------------------
# P2's toy models (notebook 04) across ranks
# ------------------------------------------------------------------------------------------------------
def toy_plan(p: ToyProfile, world_size: int) -> list[list[tuple[str, tuple]]]:
    """The (experiment, bank) units of each rank, in the one-process order, balanced by models × latents (every
    bank trains ``p.n_steps`` steps)."""
    from isae.experiments import p2_toy

    units, cost = [], []
    for name in p2_toy.TOY_EXPERIMENTS:
        for key, conds in p2_toy.toy_banks(p2_toy.experiment_conditions(name, p)[0]).items():
            units.append((name, key))
            cost.append(float(len(conds) * p.n_seeds * key[1]))
    return [[units[i] for i in share] for share in shares(len(units), world_size, cost)]


def _toy_file(out: Path, name: str, key: tuple) -> Path:
    return out / WORK_DIR / "p2_toy" / name / f"{part_name([key])}.pkl"


def run_toy_distributed(world: World, p: ToyProfile, out: str | Path, device: str | None = None,
                        progress: bool = True, profile: str = "custom", command: str = "",
                        log: Callable[[str], None] = print) -> dict | None:
    """Notebook 04's three experiments shared among the ranks by bank (every condition and seed of a bank in one
    tensor, so a bank is the unit), each bank's runs, log and trained bank written to
    ``distributed/p2_toy/<experiment>/``; rank 0 writes ``complete.json`` last, which notebook 04 then reads
    (``toy_results``)."""
    from isae.experiments import p2_toy

    run = _begin(world, "p2_toy", out, device, profile, command)
    out, dev, label = run.out, run.device, run.label
    mine = toy_plan(p, world.world_size)[world.rank]
    log(f"{label}{len(mine)} of {sum(map(len, toy_plan(p, world.world_size)))} banks to train on {dev}")
    for name, key in mine:
        conditions, w_p = p2_toy.experiment_conditions(name, p)
        r = p2_toy.run_toy_experiment(conditions, p, w_p=w_p, device=dev, progress=progress, only=[key])
        _save_pickle({"runs": r.runs, "log": r.log, "bank": r.banks[key].cpu()}, _toy_file(out, name, key))
        log(f"{label}{name}: bank {key} ({len(r.runs)} models)")
    timings = world.all_gather({"rank": world.rank, "seconds": round(time.perf_counter() - run.started, 1)})
    if not world.is_main:
        return None
    done = _complete(run, _toy_identity(p), timings)
    log(f"banks under {out / WORK_DIR / 'p2_toy'} in {done['seconds']:.0f} s")
    return done


def load_toy_result(out: str | Path, name: str, p: ToyProfile, device: str | None = None):
    """``p2_toy.run_toy_experiment``'s result for experiment ``name`` rebuilt from a distributed run's banks, in
    the one-process order."""
    from isae.core.runs import resolve_device
    from isae.experiments import p2_toy

    conditions, w_p = p2_toy.experiment_conditions(name, p)
    parts = {key: pd.read_pickle(_toy_file(Path(out), name, key)) for key in p2_toy.toy_banks(conditions)}
    dev = resolve_device(device)
    return p2_toy.ToyResult(runs=pd.concat([b["runs"] for b in parts.values()], ignore_index=True),
                            log=pd.concat([b["log"] for b in parts.values()], ignore_index=True),
                            banks={key: b["bank"].to(dev) for key, b in parts.items()},
                            stream=p2_toy.toy_stream(p, w_p, dev))


def toy_results(name: str, p: ToyProfile, out_dir: str | Path, results_from: str | Path | None = "auto",
                device: str | None = None, progress: bool = True) -> tuple:
    """Notebook 04's experiment ``name`` and where it came from: read from a completed distributed run
    (``results_from`` as in ``synthetic_results``), else trained here with ``p2_toy.run_toy_experiment``."""
    from isae.experiments import p2_toy

    found = results_source(results_from, out_dir, "p2_toy", _toy_identity(p))
    if found is None:
        conditions, w_p = p2_toy.experiment_conditions(name, p)
        return (p2_toy.run_toy_experiment(conditions, p, w_p=w_p, device=device, progress=progress),
                "trained and measured in this process")
    source, record = found
    return load_toy_result(source, name, p, device=device), _source_sentence(source, record)


# ------------------------------------------------------------------------------------------------------
# P2's weighted SAE (notebook 05) across ranks
# ------------------------------------------------------------------------------------------------------
def _weighted_identity(wp: WeightedProfile, p: RealProfile, tail: str) -> dict:
    return _with_code({"sizes": _sizes(wp), "real_sizes": _sizes(p), "consistency_tail": tail})


def _weighted_file(out: Path, setting: str) -> Path:
    return out / WORK_DIR / "p2_weighted" / f"{setting}.pkl"


def weighted_plan(sources: dict, wp: WeightedProfile, world_size: int) -> list[list[str]]:
    """The settings of each rank, balanced by training rows × K × d_in (every setting trains the same number of
    SAEs, all α and seeds of a setting on one rank: ``train_many``'s one stream)."""
    from isae.experiments.p2_weighted import setting_size

    names = list(sources)
    cost = [float(stop * setting_size(s, wp)[0] * sources[s][0].d_in) for s, (_, stop, _) in sources.items()]
    return [[names[i] for i in share] for share in shares(len(names), world_size, cost)]


def run_weighted_distributed(world: World, sources: dict, weights: dict, wp: WeightedProfile, p: RealProfile,
                             tail: str, out: str | Path, device: str | None = None, progress: bool = True,
                             profile: str = "custom", command: str = "",
                             log: Callable[[str], None] = print) -> dict | None:
    """Notebook 05's training and evaluation (``p2_weighted.run_settings``) shared among the ranks by setting, each
    setting's result written to ``distributed/p2_weighted/<setting>.pkl`` (its SAEs are not kept, as in the
    notebook); a relaunch skips the settings already written at these sizes. Rank 0 writes ``complete.json``
    last, which notebook 05 then reads (``weighted_results``)."""
    from isae.experiments import p2_weighted

    run = _begin(world, "p2_weighted", out, device, profile, command)
    out, dev, label = run.out, run.device, run.label
    identity = _weighted_identity(wp, p, tail)
    mine = weighted_plan(sources, wp, world.world_size)[world.rank]
    done_before = [s for s in mine if _weighted_file(out, s).exists()
                   and pd.read_pickle(_weighted_file(out, s))["identity"] == identity]
    todo = tuple(s for s in mine if s not in done_before)
    log(f"{label}settings {', '.join(mine) or '(none)'} on {dev}"
        + (f"; {', '.join(done_before)} already done" if done_before else ""))
    results = p2_weighted.run_settings(sources, weights, wp, device=_as_notebook_device(dev), progress=progress,
                                       only=todo, log=lambda line: log(label + line))
    for setting, r in results.items():
        _save_pickle({"identity": identity, "result": replace(r, saes={})}, _weighted_file(out, setting))
    timings = world.all_gather({"rank": world.rank, "seconds": round(time.perf_counter() - run.started, 1)})
    if not world.is_main:
        return None
    done = _complete(run, identity, timings)
    log(f"{len(sources)} settings under {_weighted_file(out, '').parent} in {done['seconds']:.0f} s")
    return done


def weighted_results(sources: dict, weights: dict, wp: WeightedProfile, p: RealProfile, tail: str,
                     out_dir: str | Path, results_from: str | Path | None = "auto", device: str | None = None,
                     progress: bool = True) -> tuple[dict, str]:
    """Notebook 05's results by setting and where they came from: read from a completed distributed run
    (``results_from`` as in ``synthetic_results``; their ``saes`` are empty), else trained here with
    ``p2_weighted.run_settings``."""
    from isae.experiments import p2_weighted

    found = results_source(results_from, out_dir, "p2_weighted", _weighted_identity(wp, p, tail))
    if found is None:
        return (p2_weighted.run_settings(sources, weights, wp, device=device, progress=progress),
                "trained and evaluated in this process")
    source, record = found
    results = {s: pd.read_pickle(_weighted_file(source, s))["result"] for s in sources}
    for setting, r in results.items():
        print(f"{setting}: {r.info['n_saes']} SAEs, train {r.info['train_seconds']:.0f} s, eval "
              f"{r.info['eval_seconds']:.0f} s (in the distributed run)")
    return results, _source_sentence(source, record)


# ------------------------------------------------------------------------------------------------------
# Activation caches (notebook 02) across ranks
# ------------------------------------------------------------------------------------------------------
def profile_caches(world: World, profile: str, out: str | Path, device: str | None = None, progress: bool = True,
                   log: Callable[[str], None] = print, wp: WeightedProfile | None = None, **overrides) -> dict:
    """Notebook 02's caches (the real-data profile's and the weighted-SAE notebook's layers) under
    ``out/activations``, each cache's shards shared among the ranks (``isae.data.cache.partitioned_builds``); caches
    already built are only verified and opened. Every rank gets them all, by name. ``wp``: the weighted-SAE sizes
    (default: the profile's); ``overrides``: fields of the real-data profile."""
    from isae.data.cache import partitioned_builds
    from isae.experiments import caching
    from isae.experiments.profiles import real_profile, weighted_profile

    dev = world.device(device)
    describe_world(world, dev)
    p = real_profile(profile, **overrides)
    with partitioned_builds(world.rank, world.world_size, world.barrier):
        caches, timing, _ = caching.build_profile_caches(Path(out) / "activations", p, device=str(dev),
                                                         progress=progress, wp=wp or weighted_profile(profile))
    if world.is_main:
        log(timing.to_string(index=False))
    return caches
