"""Provenance and atomic writes: every output says how it was made, and a crash never leaves half a file."""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
import tempfile
from collections.abc import Callable
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import torch

PACKAGES = ("torch", "numpy", "scipy", "pandas", "safetensors", "transformer-lens", "papermill")

TRAINING_CODE = ("core", "data", "toy", "train")
"""The sub-packages of ``isae`` that trained weights depend on: the models and losses, the data streams, P2's toy
models and the training loop. The top-level modules (``__init__``, the ``compare`` command, ``saelens``) and
``eval``, ``experiments``, ``report``, ``plots`` play no part in training (the experiments' choices reach it only as
configs, which a checkpoint records on their own)."""
EVALUATION_CODE = TRAINING_CODE + ("eval", "pipeline.py")
"""What a training checkpoint with probe rows (e.g. notebook 03's convergence curve) depends on: the training code,
the metrics and the generic pipeline that evaluates them (``isae.pipeline``: the curve probe, the seed pairs). Our
choice: not ``experiments``, so that a reference run of hours survives an edit of a notebook driver that leaves the
metrics alone."""
RESULTS_CODE = EVALUATION_CODE + ("experiments",)
"""What a stored evaluated result (a completed distributed run) depends on: the training code, the metrics and the
experiment drivers that assembled it. ``report`` and ``plots`` are left out on purpose: the tables and figures are
recomputed from the results at every run, so they always reflect the code of that run."""
ALL_CODE = (".",)
"""Every source file of ``isae`` (what a provenance record's ``"code"`` digests)."""


def hash_sources(root: str | Path, scope: tuple[str, ...]) -> dict[str, str]:
    """{path relative to ``root``: the first 12 hex digits of the sha256 of its content} for every ``.py`` file under
    the folders or files ``scope`` of ``root`` (``"."``: all of it), sorted by path."""
    root = Path(root)
    files = sorted({f for sub in scope
                    for f in ([root / sub] if (root / sub).is_file() else (root / sub).rglob("*.py"))})
    return {f.relative_to(root).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest()[:12] for f in files}


@functools.lru_cache
def _package_hashes(scope: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    import isae

    return tuple(hash_sources(Path(isae.__file__).parent, scope).items())


def code_fingerprint(scope: tuple[str, ...] = ALL_CODE) -> dict[str, str]:
    """``hash_sources`` of the installed ``isae`` package (``TRAINING_CODE``, ``RESULTS_CODE``, ``ALL_CODE``):
    which code made an output, file by file, so that a changed loss or metric is not mistaken for the same code.
    Computed once per process (edits made while a process runs are not seen by it, as its imports are not)."""
    return dict(_package_hashes(tuple(scope)))


def code_digest(fingerprint: dict[str, str]) -> str:
    """A short digest (16 hex digits) of a ``code_fingerprint``."""
    return hashlib.sha256(json.dumps(sorted(fingerprint.items())).encode()).hexdigest()[:16]


def code_difference(old: dict[str, str] | None, new: dict[str, str], most: int = 5) -> str:
    """The files that differ between two fingerprints in one line ("core/losses.py changed, data/x.py added and 2
    more"); an empty or missing ``old`` is "from code before fingerprints"."""
    if not old:
        return "from code before fingerprints"
    names = ([f"{n} changed" for n in sorted(old.keys() & new.keys()) if old[n] != new[n]]
             + [f"{n} added" for n in sorted(new.keys() - old.keys())]
             + [f"{n} removed" for n in sorted(old.keys() - new.keys())])
    if not names:
        return "no file differs"
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def repo_root() -> Path:
    """The repository root (the folder holding ``lib/``)."""
    return Path(__file__).resolve().parents[3]


def _atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the permissions open() would
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return _atomic_write(path, lambda p: p.write_text(text))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    return _atomic_write(path, lambda p: torch.save(obj, p))


def atomic_write_csv(df, path: str | Path) -> Path:
    return _atomic_write(path, lambda p: df.to_csv(p, index=False))


def git_commit() -> str:
    """HEAD's hash, with "-dirty" when the working tree has uncommitted changes; "unknown" outside git."""
    try:
        root = repo_root()
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


_DISTRIBUTED: ContextVar[dict[str, Any] | None] = ContextVar("isae_distributed_run", default=None)
"""The run this process is a rank of (as ``isae.data.cache``'s shard partition, a context variable)."""


def set_distributed(record: dict[str, Any] | None) -> None:
    """Record a run of several processes (rank, world size, every rank's host and device) in every provenance
    record this process writes from now on, under ``"distributed"``; None stops (``isae.experiments.executor``
    sets it)."""
    _DISTRIBUTED.set(None if record is None else dict(record))


def device_name(device: str | torch.device) -> str:
    """A device in words: a GPU's name, or "cpu (N cores)"."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev) if torch.cuda.is_available() else f"{dev} (CUDA not available)"
    return f"cpu ({os.cpu_count()} cores)" if dev.type == "cpu" else str(dev)


def provenance(**params: Any) -> dict[str, Any]:
    """A record of how an output was made: the given parameters plus commit, a digest of every source file of
    ``isae`` (``"code"``, see ``code_fingerprint``), packages, machine, device and time (and, in a distributed run,
    ``set_distributed``'s record).

    ``"device"`` is the device that ran the work: ``params["device"]`` ("cpu", "cuda", "cuda:1", a torch.device)
    when given; otherwise "cpu (N cores)" where torch sees no GPU, and "not recorded" (naming the GPU) where it does,
    since the work may have run on the CPU all the same."""
    extra = {} if _DISTRIBUTED.get() is None else {"distributed": _DISTRIBUTED.get()}
    if params.get("device") is not None:
        device = device_name(params["device"])
    elif torch.cuda.is_available():
        device = f"not recorded (CUDA available: {torch.cuda.get_device_name()})"
    else:
        device = device_name("cpu")
    return {
        "params": params,
        "git_commit": git_commit(),
        "code": code_digest(code_fingerprint(ALL_CODE)),
        "packages": package_versions(),
        "python": platform.python_version(),
        "machine": platform.platform(),
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "time_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        **extra,
    }


def provenance_path(path: str | Path) -> Path:
    """Where the provenance record of an output written by ``write_with_provenance`` lies: ``<name>.provenance.json``
    beside it."""
    path = Path(path)
    return path.with_name(path.name + ".provenance.json")


def write_with_provenance(path: str | Path, write: Callable[[Path], None], **params: Any) -> Path:
    """Write an output atomically and its provenance record beside it (``provenance_path``)."""
    path = _atomic_write(path, write)
    atomic_write_json(provenance_path(path), provenance(**params))
    return path
