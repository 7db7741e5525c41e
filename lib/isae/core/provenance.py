"""Provenance and atomic writes: every output says how it was made, and a crash never leaves half a file."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import os
import platform
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

PACKAGES = ("torch", "numpy", "scipy", "pandas", "safetensors", "transformer-lens", "papermill")


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


_DISTRIBUTED: dict[str, Any] | None = None


def set_distributed(record: dict[str, Any] | None) -> None:
    """Record a distributed run (rank, world size, every rank's host and device) in every provenance record this
    process writes from now on, under ``"distributed"``; None stops (``isae.experiments.distributed`` sets it)."""
    global _DISTRIBUTED
    _DISTRIBUTED = None if record is None else dict(record)


def provenance(**params: Any) -> dict[str, Any]:
    """A record of how an output was made: the given parameters plus commit, packages, machine and time (and, in a
    distributed run, ``set_distributed``'s record)."""
    extra = {} if _DISTRIBUTED is None else {"distributed": _DISTRIBUTED}
    return {
        "params": params,
        "git_commit": git_commit(),
        "packages": package_versions(),
        "python": platform.python_version(),
        "machine": platform.platform(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)",
        "torch_threads": torch.get_num_threads(),
        "time_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        **extra,
    }


def write_with_provenance(path: str | Path, write: Callable[[Path], None], **params: Any) -> Path:
    """Write an output atomically and a ``<name>.provenance.json`` beside it."""
    path = _atomic_write(path, write)
    atomic_write_json(path.with_name(path.name + ".provenance.json"), provenance(**params))
    return path
