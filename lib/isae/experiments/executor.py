"""One way to run an experiment: its units of work, run in a notebook, across torchrun ranks or as a SLURM array.

An experiment is described once (``Experiment``): its units (``Unit``: a name and a cost), how one unit runs, how
the units' results merge, and how a notebook gets them back (``load``: e.g. the saved SAEs). ``execute`` runs that
description the same way at every world size:

1. ``shares`` assigns the units to ranks (longest first to the least loaded rank: a pure function of the costs and
   the world size; world size 1, a notebook, is one rank with every unit).
2. Each rank runs its units in order; each unit's result is written to ``<out>/runs/<experiment>/units/<unit>.pkl``
   with the experiment's identity. A unit whose file holds this identity is done: a relaunch after a kill skips it
   (inside a unit, ``train_many``'s checkpoints resume the training).
3. The merger (rank 0 under torchrun, after a barrier; under a SLURM array, the task that finds every unit done)
   merges the units' results in unit order, whatever the world size, into ``result.pkl`` and writes
   ``complete.json`` last. The merged result does not depend on who ran which unit, so a 2-rank run is the
   one-process run, bit for bit.

A completed run is identified by the experiment's identity (its sizes, ...) and the code that computed it
(``isae.core.provenance.RESULTS_CODE``, file by file under ``code_files``). A notebook reads it through its
``results_from`` parameter: "auto" reads ``out``'s completed run at these sizes (else runs the units here), a
folder must hold one, None runs here. A run made by other code is refused, naming the files that changed.

Several nodes: ``scripts/slurm_paper.sbatch`` (srun + torchrun) or a job array of plain processes (``World`` reads
SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT; no process group: units and the merge go through the file system).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

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
)
from isae.core.runs import resolve_device

WORK_DIR = "runs"
"""Under an output root: ``runs/<experiment>/`` holds the units' results, the merged result and ``complete.json``."""


# ------------------------------------------------------------------------------------------------------
# The world: rank, size, device, barriers
# ------------------------------------------------------------------------------------------------------
@dataclass
class World:
    """This process's place in a run: ``rank`` of ``world_size`` (1: one process). ``backend`` "gloo" under
    torchrun (barriers and small objects through the process group); None in one process and in a SLURM job
    array, whose tasks share nothing but the file system."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def grouped(self) -> bool:
        """Whether the ranks form a process group (torchrun), so that they can wait for each other."""
        return self.world_size > 1 and self.backend is not None

    def barrier(self) -> None:
        """Wait for every rank (nothing without a process group)."""
        if self.grouped:
            torch.distributed.barrier()

    def all_gather(self, obj: Any) -> list:
        """Every rank's ``obj``, by rank (a small picklable object); only this rank's without a process group."""
        if not self.grouped:
            return [obj]
        out = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def device(self, device: str | torch.device | None = None) -> torch.device:
        """This rank's device: ``device`` None or "cuda" → cuda:<local rank modulo the visible GPUs> when torch
        sees CUDA (several ranks may share one GPU), else the CPU; an explicit index is kept."""
        dev = resolve_device(device)
        if dev.type == "cuda":
            if dev.index is None:
                dev = torch.device("cuda", self.local_rank % torch.cuda.device_count())
            torch.cuda.set_device(dev)
        return dev


def init_world(timeout_hours: float = 72.0) -> World:
    """The ``World`` this process runs in: torchrun's (RANK, WORLD_SIZE, LOCAL_RANK; a gloo process group when
    WORLD_SIZE > 1), else a SLURM job array's (task SLURM_ARRAY_TASK_ID − SLURM_ARRAY_TASK_MIN of
    SLURM_ARRAY_TASK_COUNT), else one process. ``timeout_hours`` bounds a barrier's wait."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size > 1:
        if not torch.distributed.is_initialized():
            torch.distributed.init_process_group("gloo", timeout=_dt.timedelta(hours=timeout_hours))
        return World(rank=int(os.environ["RANK"]), world_size=size, local_rank=int(os.environ.get("LOCAL_RANK", 0)),
                     backend="gloo")
    if "SLURM_ARRAY_TASK_ID" in os.environ and "SLURM_ARRAY_TASK_COUNT" in os.environ:
        task = int(os.environ["SLURM_ARRAY_TASK_ID"]) - int(os.environ.get("SLURM_ARRAY_TASK_MIN", 0))
        return World(rank=task, world_size=int(os.environ["SLURM_ARRAY_TASK_COUNT"]))
    return World()


def close_world(world: World) -> None:
    set_distributed(None)
    if world.grouped and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def describe_world(world: World, device: torch.device) -> dict:
    """Every rank's host, process, device and torch threads (gathered where the ranks form a group), as provenance
    records them; sets it as this process's provenance context (``isae.core.provenance.set_distributed``)."""
    mine = {"rank": world.rank, "local_rank": world.local_rank, "host": socket.gethostname(), "pid": os.getpid(),
            "device": str(device), "device_name": device_name(device), "torch_threads": torch.get_num_threads()}
    record = {"world_size": world.world_size, "backend": world.backend, "rank": world.rank,
              "ranks": world.all_gather(mine)}
    set_distributed(record if world.world_size > 1 else None)
    return record


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


# ------------------------------------------------------------------------------------------------------
# Experiments
# ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Unit:
    """One piece of an experiment's work: ``name`` (unique, file-safe), ``cost`` (relative, to balance ranks) and
    ``key``, what the experiment needs to run it."""

    name: str
    key: Any
    cost: float = 1.0


@dataclass
class Context:
    """Where and how units run: the output root, the device, progress bars, a prefix for log lines and the
    provenance parameters of what they write."""

    out: Path
    device: torch.device
    progress: bool = True
    label: str = ""
    params: dict = field(default_factory=dict)
    log: Callable[[str], None] = print


class Experiment:
    """An experiment described once. Subclasses set ``name`` and implement ``identity``, ``units``, ``run_unit``
    and ``merge``; ``load`` turns the merged result into what the notebook works with (default: itself)."""

    name: str = ""

    def identity(self) -> dict:
        """What must match for a stored result to be this experiment's (sizes, options): JSON values."""
        raise NotImplementedError

    def units(self) -> list[Unit]:
        """The units of work, in the order their results merge."""
        raise NotImplementedError

    def run_unit(self, unit: Unit, ctx: Context) -> Any:
        """Run one unit; return its result (picklable: tables, small tensors)."""
        raise NotImplementedError

    def merge(self, results: list[Any], ctx: Context) -> Any:
        """The experiment's result from its units' results, given in ``units()`` order."""
        raise NotImplementedError

    def load(self, merged: Any, ctx: Context) -> Any:
        """What a notebook gets from the merged result (e.g. with the saved SAEs loaded)."""
        return merged


def run_dir(out: str | Path, experiment: str) -> Path:
    return Path(out) / WORK_DIR / experiment


def marker_path(out: str | Path, experiment: str) -> Path:
    """The file a completed run of ``experiment`` leaves: ``<out>/runs/<experiment>/complete.json``."""
    return run_dir(out, experiment) / "complete.json"


def _unit_file(out: Path, experiment: str, unit: Unit) -> Path:
    return run_dir(out, experiment) / "units" / f"{unit.name}.pkl"


def full_identity(exp: Experiment) -> dict:
    """The experiment's identity as JSON values, with the digest of the code that computes its results."""
    return {**json.loads(json.dumps(exp.identity(), default=str)),
            "code": code_digest(code_fingerprint(RESULTS_CODE))}


def _read_unit(path: Path, identity: dict) -> dict | None:
    """A unit's stored record when it holds ``identity``; None when absent or made for another identity."""
    if not path.exists():
        return None
    record = pd.read_pickle(path)
    return record if record.get("identity") == identity else None


# ------------------------------------------------------------------------------------------------------
# Reading a completed run
# ------------------------------------------------------------------------------------------------------
def completed_record(out: str | Path, experiment: str, identity: dict) -> dict | None:
    """The record of a completed run of ``experiment`` under ``out`` whose identity fields equal these; None when
    there is none or it was made at other sizes or by other code."""
    path = marker_path(out, experiment)
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    return record if all(record.get(k) == v for k, v in identity.items()) else None


def _code_change(record: dict) -> str:
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
    """Where a notebook reads ``experiment``'s results from: (folder, completion record) of the completed run that
    ``results_from`` names (a folder such as ``outputs/paper``; "auto": ``out_dir`` when it holds one at these
    sizes), None to run the units here. An explicit folder without such a run is refused, naming why; a run made
    by other code (everything else equal) is refused under "auto" too, rather than run over."""
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
        raise ValueError(f"results_from={str(results_from)!r}: no completed run there ({path} is missing); launch "
                         f"one (python -m isae.experiments.launch {experiment}) or pass results_from=None to run "
                         "here.")
    theirs = json.loads(path.read_text())
    if all(theirs.get(k) == v for k, v in identity.items() if k != "code"):
        raise ValueError(f"results_from={str(results_from)!r}: the completed run of {experiment} under {folder} was "
                         f"made by other code ({_code_change(theirs)}): its results are not what this code computes. "
                         f"Delete {run_dir(folder, experiment)} and the checkpoints beside it (or every output: "
                         "`make clean`) or pass another output_root.")
    if results_from == "auto":
        return None
    raise ValueError(f"results_from={str(results_from)!r}: that run was made at other sizes "
                     f"({_mismatch(theirs, identity)}); pass the same notebook parameters or results_from=None to "
                     "run here.")


def _source_sentence(source: Path, record: dict) -> str:
    return (f"read from the completed run under {source} (world size {record['world_size']}, finished "
            f"{record['finished_utc']}; launched with `{record['command']}`)")


# ------------------------------------------------------------------------------------------------------
# Running
# ------------------------------------------------------------------------------------------------------
def execute(exp: Experiment, out: str | Path, *, world: World | None = None, device: str | torch.device | None = None,
            progress: bool = True, results_from: str | Path | None = "auto", command: str = "",
            log: Callable[[str], None] = print, **provenance_params) -> tuple[Any, str] | None:
    """Run ``exp`` under ``out`` (or read its completed run, ``results_from``) and return (what ``exp.load`` makes
    of the merged result, a sentence saying where it came from). Every rank calls it; ranks that do not merge
    return None."""
    world = world or World()
    out = Path(out)
    identity = full_identity(exp)
    found = results_source(results_from, out, exp.name, identity)
    dev = world.device(device)
    label = f"[rank {world.rank}/{world.world_size}] " if world.world_size > 1 else ""
    ctx = Context(out, dev, progress, label, {"experiment": exp.name, **provenance_params}, log)
    if found is not None:
        source, record = found
        merged = pd.read_pickle(run_dir(source, exp.name) / "result.pkl")
        return exp.load(merged, Context(source, dev, progress, label, ctx.params, log)), _source_sentence(source,
                                                                                                          record)
    started = time.perf_counter()
    world_record = describe_world(world, dev)
    if world.rank == 0:
        marker_path(out, exp.name).unlink(missing_ok=True)  # a run in progress is not complete
    units = exp.units()
    names = [u.name for u in units]
    if len(set(names)) != len(names):
        raise ValueError(f"{exp.name}: unit names repeat ({names}); each must be unique.")
    mine = [units[i] for i in shares(len(units), world.world_size, [u.cost for u in units])[world.rank]]
    done = [u for u in mine if _read_unit(_unit_file(out, exp.name, u), identity) is not None]
    log(f"{label}{exp.name}: {len(mine)} of {len(units)} units on {dev}"
        + (f", {len(done)} already done" if done else ""))
    for unit in mine:
        if unit in done:
            continue
        t0 = time.perf_counter()
        result = exp.run_unit(unit, ctx)
        record = {"identity": identity, "unit": unit.name, "rank": world.rank, "seconds": time.perf_counter() - t0,
                  "result": result}
        _atomic_write(_unit_file(out, exp.name, unit), lambda f, r=record: pd.to_pickle(r, f))
    world.barrier()
    if world.grouped and world.rank != 0:
        return None
    records = [_read_unit(_unit_file(out, exp.name, u), identity) for u in units]
    if any(r is None for r in records):  # a SLURM array task whose siblings are still running: they merge
        waiting = [u.name for u, r in zip(units, records) if r is None]
        log(f"{label}{exp.name}: {len(waiting)} units still to run elsewhere ({', '.join(waiting[:5])}, ...); the "
            "last task to finish merges")
        return None
    merged = exp.merge([r["result"] for r in records], ctx)
    _atomic_write(run_dir(out, exp.name) / "result.pkl", lambda f: pd.to_pickle(merged, f))
    atomic_write_json(marker_path(out, exp.name), {
        "experiment": exp.name, **identity, "world_size": world.world_size, "ranks": world_record["ranks"],
        "command": command or "execute() in a notebook", "seconds": round(time.perf_counter() - started, 1),
        "unit_seconds": {r["unit"]: round(r["seconds"], 1) for r in records},
        "unit_ranks": {r["unit"]: r["rank"] for r in records},
        "finished_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "code_files": code_fingerprint(RESULTS_CODE), "provenance": provenance(**ctx.params, device=str(dev))})
    log(f"{label}{exp.name}: {len(units)} units merged in {time.perf_counter() - started:.0f} s; "
        f"{marker_path(out, exp.name)}")
    source = "run in this process" if world.world_size == 1 else f"run by {world.world_size} processes"
    if done:
        source += f" ({len(done)} of {len(units)} units from an earlier run)"
    return exp.load(merged, ctx), source
