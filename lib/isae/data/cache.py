"""Activation caches on disk: shards + a manifest, atomic writes, resumable builds, memory-mapped reads.

Layout of a cache folder::

    manifest.json             spec (model, hook, layer, dtype, d_in, source, asset hashes, ...), complete, and
                              per shard: file, rows, sha256, seconds to compute
    shard_00000.npy           activations [rows, d_in] of shard 0 (numpy .npy: memory-mappable)
    shard_00000.<extra>.npy   optional per-row extras (e.g. image labels, token ids), same row count

A build is a deterministic function ``make_shard(i)`` called for i = 0, 1, ... Each shard is written to a
temporary file and renamed, then the manifest is rewritten atomically, so a killed build leaves only whole
shards behind; calling ``build_cache`` again resumes at the first missing shard and ends byte-identical to
an uninterrupted build. A folder whose manifest was written for another spec is refused (``CacheMismatch``),
never silently reused; ``verify`` re-hashes every shard (``CacheCorrupt`` names the bad one).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from isae.core.provenance import _atomic_write, atomic_write_json
from isae.core.seeding import derive_seed
from isae.progress import progress_bar

FORMAT_VERSION = 1


class CacheMismatch(ValueError):
    """The folder holds a cache built for a different request."""


class CacheCorrupt(RuntimeError):
    """A shard's bytes do not match the sha256 recorded in the manifest."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _save_npy(path: Path, array: np.ndarray) -> None:
    _atomic_write(path, lambda p: np.save(open(p, "wb"), array))


def _normalise_spec(spec: dict) -> dict:
    return json.loads(json.dumps(spec, sort_keys=True, default=str))


def read_manifest(directory: str | Path) -> dict | None:
    path = Path(directory) / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else None


def _open_manifest(directory: Path, spec: dict, n_shards: int) -> dict:
    """The manifest of ``directory`` for ``spec`` (a new, empty one when there is none); CacheMismatch when the
    folder holds another request."""
    if n_shards <= 0:
        raise ValueError(f"n_shards={n_shards} must be positive.")
    if spec.get("dtype") not in ("float32", "float16"):
        raise ValueError(f"spec['dtype']={spec.get('dtype')!r}; use 'float32' or 'float16'.")
    spec = _normalise_spec({**spec, "n_shards": n_shards, "format_version": FORMAT_VERSION})
    manifest = read_manifest(directory)
    if manifest is not None and manifest["spec"] != spec:
        diff = sorted(k for k in set(spec) | set(manifest["spec"]) if spec.get(k) != manifest["spec"].get(k))
        raise CacheMismatch(f"{directory} holds a cache built for another request (differs in {diff}); "
                            "delete the folder or choose another one.")
    directory.mkdir(parents=True, exist_ok=True)
    return manifest or {"spec": spec, "shards": [], "complete": False}


def _append_shard(directory: Path, manifest: dict, out, seconds: float) -> None:
    """Write shard ``len(manifest["shards"])`` (activations + extras, each atomically), then the manifest."""
    manifest["shards"].append(_write_shard(directory, manifest, len(manifest["shards"]), out, seconds))
    manifest["complete"] = len(manifest["shards"]) == manifest["spec"]["n_shards"]
    atomic_write_json(directory / "manifest.json", manifest)


def _write_shard(directory: Path, manifest: dict, i: int, out, seconds: float) -> dict:
    """Write shard ``i`` (activations + extras, each atomically); returns its manifest entry."""
    arrays = out if isinstance(out, dict) else {"acts": out}
    arrays = {k: v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v) for k, v in arrays.items()}
    acts = arrays.pop("acts").astype(np.dtype(manifest["spec"]["dtype"]), copy=False)
    entry = {"file": f"shard_{i:05d}.npy", "rows": int(acts.shape[0]), "seconds": round(seconds, 4), "extras": {}}
    _save_npy(directory / entry["file"], acts)
    entry["sha256"] = _sha256(directory / entry["file"])
    for name, values in arrays.items():
        if len(values) != acts.shape[0]:
            raise ValueError(f"extra {name!r} of shard {i} has {len(values)} rows, activations have {acts.shape[0]}.")
        fname = f"shard_{i:05d}.{name}.npy"
        _save_npy(directory / fname, values)
        entry["extras"][name] = {"file": fname, "sha256": _sha256(directory / fname)}
    return entry


@dataclass(frozen=True)
class ShardPartition:
    """This process's part of a build shared by ``world_size`` processes (``partitioned_builds``): rank r computes
    the contiguous shard range ``shard_range(n)``; ``barrier()`` waits for every rank."""

    rank: int
    world_size: int
    barrier: Callable[[], None]

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank={self.rank} must lie in [0, world_size={self.world_size}).")

    def shard_range(self, n_shards: int) -> range:
        """Shards [r·n/W, (r+1)·n/W) of n: contiguous, sizes differing by at most one."""
        return range(self.rank * n_shards // self.world_size, (self.rank + 1) * n_shards // self.world_size)


_PARTITION: ContextVar[ShardPartition | None] = ContextVar("isae_cache_partition", default=None)


@contextmanager
def partitioned_builds(rank: int, world_size: int, barrier: Callable[[], None]):
    """Within this context every ``build_caches`` / ``build_cache`` call is shared by ``world_size`` processes that
    make the same call: each computes its own shard range (``ShardPartition``), then rank 0 verifies every shard
    and writes the manifest once. Shards, extras and the manifest are those of a one-process build (all but each
    shard's ``seconds``, a timing). A killed rank's shards are computed again by the next call; finished ones are
    kept (a ``shard_<i>.part.json`` beside them until the manifest is written)."""
    token = _PARTITION.set(ShardPartition(rank, world_size, barrier))
    try:
        yield _PARTITION.get()
    finally:
        _PARTITION.reset(token)


def _timed_shards(make_shards, i: int, need: list[Path]) -> tuple[dict, float]:
    """``make_shards(i, need)`` and the seconds it took per folder (each shard's manifest timing)."""
    started = time.perf_counter()
    shards = make_shards(i, need)
    return shards, (time.perf_counter() - started) / len(need)


def _part_file(directory: Path, i: int) -> Path:
    return directory / f"shard_{i:05d}.part.json"


def _build_partitioned(dirs: dict[Path, dict], make_shards, part: ShardPartition, progress: bool, name: str) -> None:
    """``build_caches``' shared path: this rank's shard range, a barrier, rank 0 verifies and writes the manifests,
    a barrier."""
    total = max(m["spec"]["n_shards"] for m in dirs.values())
    mine = part.shard_range(total)
    for i in progress_bar(mine, desc=f"caching {name} (rank {part.rank}/{part.world_size})", unit="shard",
                  disable=not progress):
        need = [d for d, m in dirs.items()
                if len(m["shards"]) <= i < m["spec"]["n_shards"] and not _part_file(d, i).exists()]
        if not need:
            continue
        shards, seconds = _timed_shards(make_shards, i, need)
        for d in need:
            atomic_write_json(_part_file(d, i), _write_shard(d, dirs[d], i, shards[d], seconds))
    part.barrier()
    if part.rank == 0:
        for d, manifest in dirs.items():
            n = manifest["spec"]["n_shards"]
            for i in range(len(manifest["shards"]), n):
                if not _part_file(d, i).exists():
                    owner = next(r for r in range(part.world_size)
                                 if i in ShardPartition(r, part.world_size, part.barrier).shard_range(total))
                    raise CacheCorrupt(f"{d}: shard {i} (rank {owner}'s) was not written; run the build again "
                                       "to resume it.")
                manifest["shards"].append(json.loads(_part_file(d, i).read_text()))
            manifest["complete"] = True
            ActivationCache(d, manifest=manifest).verify()  # every shard against its hash, before the manifest
            atomic_write_json(d / "manifest.json", manifest)
            for i in range(n):
                _part_file(d, i).unlink(missing_ok=True)
    part.barrier()


def build_caches(targets: dict[str | Path, tuple[dict, int]],
                 make_shards: Callable[[int, list[Path]], dict[Path, dict | np.ndarray | torch.Tensor]],
                 progress: bool = True, desc: str | None = None) -> list[Path]:
    """Build (or resume) several caches whose shard i comes from one computation, e.g. many hooks of one forward.

    ``targets`` maps each folder to ``(spec, n_shards)``. For i = 0, 1, ... up to the largest n_shards,
    ``make_shards(i, folders)`` is called with the folders that still lack shard i and returns each one's
    shard (as for :func:`build_cache`). Every folder keeps its own manifest, so each resumes on its own.
    Inside ``partitioned_builds`` the shards are shared among processes (each its own range)."""
    dirs = {Path(d): _open_manifest(Path(d), spec, n) for d, (spec, n) in targets.items()}
    total = max(m["spec"]["n_shards"] for m in dirs.values())
    done = min(len(m["shards"]) for m in dirs.values())
    name = desc or ", ".join(d.name for d in dirs)
    part = _PARTITION.get()
    if part is not None and part.world_size > 1:
        if not all(m["complete"] for m in dirs.values()):
            _build_partitioned(dirs, make_shards, part, progress, name)
        return list(dirs)
    for i in progress_bar(range(done, total), initial=done, total=total, desc=f"caching {name}", unit="shard",
                  disable=not progress):
        need = [d for d, m in dirs.items() if len(m["shards"]) == i and i < m["spec"]["n_shards"]]
        if not need:
            continue
        shards, seconds = _timed_shards(make_shards, i, need)
        for d in need:
            _append_shard(d, dirs[d], shards[d], seconds)
    return list(dirs)


def build_cache(directory: str | Path, spec: dict, n_shards: int,
                make_shard: Callable[[int], dict[str, np.ndarray] | np.ndarray | torch.Tensor],
                progress: bool = True) -> Path:
    """Build (or resume building) a cache of ``n_shards`` shards in ``directory``.

    ``make_shard(i)`` returns the activations of shard i ([rows, d_in]) or a dict with key "acts" plus any
    per-row extras. It must be deterministic: resume relies on recomputing nothing that is on disk.
    ``spec`` describes the request (model, hook, layer, dtype, source, asset hashes, sizes...); it must
    include "dtype" ("float32" or "float16").
    """
    directory = Path(directory)
    build_caches({directory: (spec, n_shards)}, lambda i, _: {directory: make_shard(i)}, progress=progress,
                 desc=directory.name)
    return directory


class ActivationCache:
    """Read-only view of a complete cache: memory-mapped shards, concatenated row indexing, seeded streams."""

    def __init__(self, directory: str | Path, expected_spec: dict | None = None, manifest: dict | None = None):
        self.directory = Path(directory)
        manifest = manifest if manifest is not None else read_manifest(self.directory)
        if manifest is None:
            raise FileNotFoundError(f"no activation cache at {self.directory} (manifest.json missing); build it with "
                                    "the activation-caching notebook (notebooks/02_*) or isae.data.cache.build_cache.")
        if not manifest["complete"]:
            raise ValueError(f"the cache at {self.directory} is incomplete ({len(manifest['shards'])} of "
                             f"{manifest['spec']['n_shards']} shards); run the build again to resume it.")
        if expected_spec is not None:
            want = _normalise_spec(expected_spec)
            diff = sorted(k for k in want if manifest["spec"].get(k) != want[k])
            if diff:
                raise CacheMismatch(f"the cache at {self.directory} differs from the request in {diff}.")
        self.manifest = manifest
        self.spec = manifest["spec"]
        self.shards = [np.load(self.directory / s["file"], mmap_mode="r") for s in manifest["shards"]]
        self.offsets = np.cumsum([0] + [len(s) for s in self.shards])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def d_in(self) -> int:
        return int(self.shards[0].shape[1])

    def extra(self, name: str) -> np.ndarray:
        """A per-row extra (e.g. "labels") of every shard, concatenated."""
        return np.concatenate([np.load(self.directory / s["extras"][name]["file"]) for s in self.manifest["shards"]])

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) across shard boundaries (a copy)."""
        parts, i = [], int(np.searchsorted(self.offsets, start, side="right") - 1)
        while start < stop:
            lo = start - self.offsets[i]
            take = min(stop - start, len(self.shards[i]) - lo)
            parts.append(np.asarray(self.shards[i][lo : lo + take]))
            start += take
            i += 1
        return np.concatenate(parts) if parts else np.empty((0, self.d_in), dtype=self.shards[0].dtype)

    def throughput(self) -> float:
        """Rows per second of computing the shards when the cache was built (disk writes excluded)."""
        seconds = sum(s.get("seconds", 0.0) for s in self.manifest["shards"])
        return len(self) / seconds if seconds > 0 else float("nan")

    def verify(self) -> None:
        """Re-hash every shard and extra; raise CacheCorrupt naming the first that does not match."""
        for s in self.manifest["shards"]:
            files = [(s["file"], s["sha256"])] + [(e["file"], e["sha256"]) for e in s["extras"].values()]
            for fname, digest in files:
                if _sha256(self.directory / fname) != digest:
                    raise CacheCorrupt(f"{self.directory / fname} does not match its sha256 in the manifest; "
                                       "delete it and its manifest entry (or the whole cache) and rebuild.")

    def stream(self, batch_size: int, seed: int = 0, buffer_rows: int = 500_000, normalize: bool = True,
               device: str | torch.device = "cpu", start_row: int = 0, stop_row: int | None = None,
               passes: int = 1, center: bool = False) -> CachedStream:
        return CachedStream(self, batch_size, seed, buffer_rows, normalize, device, start_row, stop_row, passes,
                            center)


class CachedStream:
    """Seeded, shuffled batches from a cache; ``batch(step)`` is a pure function of (seed, step).

    Shuffling is by buffer: rows [start_row, stop_row) are cut into consecutive buffers of ``buffer_rows``,
    the buffers are visited in a seeded order and rows are permuted within each (seeded by buffer). Reads
    stay sequential on disk, every consumer with the same seed sees the same batches, and each row is seen
    once per pass. With ``passes`` > 1 the stream runs that many passes, each shuffled anew (pass 0 is the one-pass
    stream). Rows are centred by their own feature mean when ``center`` (the authors' code), then scaled to unit
    norm when ``normalize`` (the training recipe).
    """

    def __init__(self, cache: ActivationCache, batch_size: int, seed: int, buffer_rows: int, normalize: bool,
                 device, start_row: int = 0, stop_row: int | None = None, passes: int = 1, center: bool = False):
        if batch_size <= 0 or buffer_rows < batch_size:
            raise ValueError(f"need 0 < batch_size ≤ buffer_rows, got batch_size={batch_size}, "
                             f"buffer_rows={buffer_rows}.")
        if isinstance(passes, bool) or not isinstance(passes, int) or passes < 1:
            raise ValueError(f"passes={passes!r} must be an integer ≥ 1.")
        self.cache, self.batch_size, self.seed, self.normalize = cache, batch_size, seed, normalize
        self.passes, self.center = passes, center
        self.device = torch.device(device)
        self.start = start_row
        self.stop = len(cache) if stop_row is None else stop_row
        self.buffer_rows = buffer_rows
        bounds = list(range(self.start, self.stop, buffer_rows)) + [self.stop]
        buffers = list(zip(bounds[:-1], bounds[1:]))
        order = torch.randperm(len(buffers), generator=torch.Generator().manual_seed(derive_seed("buffers", seed)))
        self.buffers = [buffers[i] for i in order.tolist()]  # (lo, hi) in visiting order
        self.first_step = np.cumsum([0] + [(hi - lo) // batch_size for lo, hi in self.buffers])
        if self.first_step[-1] == 0:
            raise ValueError(f"the cache slice has {self.stop - self.start} rows, fewer than one batch of "
                             f"{batch_size}.")
        self._loaded: tuple[int, torch.Tensor] | None = None

    @property
    def d_in(self) -> int:
        return self.cache.d_in

    @property
    def steps_per_pass(self) -> int:
        """Batches in one pass (rows that do not fill a whole batch at the end of a buffer are skipped)."""
        return int(self.first_step[-1])

    @property
    def n_steps(self) -> int:
        """Batches in all ``passes``."""
        return self.passes * self.steps_per_pass

    def identity(self) -> dict:
        return {"stream": "cache", "cache": str(self.cache.directory), "spec": self.cache.spec, "seed": self.seed,
                "batch_size": self.batch_size, "buffer_rows": self.buffer_rows, "rows": [self.start, self.stop],
                "passes": self.passes, "center": self.center}

    def _buffer(self, b: int, pass_: int) -> torch.Tensor:
        if self._loaded is None or self._loaded[0] != (b, pass_):
            lo, hi = self.buffers[b]
            rows = torch.from_numpy(self.cache.rows(lo, hi)).float()
            # pass 0 keeps the one-pass stream's order; later passes permute the buffer's rows anew
            key = ("rows", self.seed, b) if pass_ == 0 else ("rows", self.seed, b, "pass", pass_)
            perm = torch.randperm(len(rows), generator=torch.Generator().manual_seed(derive_seed(*key)))
            self._loaded = ((b, pass_), rows[perm])
        return self._loaded[1]

    def batch(self, step: int) -> torch.Tensor:
        if not 0 <= step < self.n_steps:
            raise ValueError(f"step {step} is past the stream's {self.passes} pass(es) of {self.steps_per_pass} "
                             f"batches of {self.batch_size} (cache more tokens, train fewer steps or raise passes).")
        pass_, step = divmod(step, self.steps_per_pass)
        b = int(np.searchsorted(self.first_step, step, side="right") - 1)
        j = step - int(self.first_step[b])
        x = self._buffer(b, pass_)[j * self.batch_size : (j + 1) * self.batch_size].to(self.device)
        if self.center:
            x = x - x.mean(dim=1, keepdim=True)
        return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12) if self.normalize else x
