"""Notebook 02's driver: open or build a profile's activation caches, and look at what they hold."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from isae.data import activations
from isae.data.cache import ActivationCache


def build_profile_caches(root: str | Path, p, device: str | None = None, progress: bool = True,
                         wp=None) -> tuple[dict[str, ActivationCache], pd.DataFrame, activations.ModelLoader]:
    """Open the four caches of ``p`` (a ``profiles.RealProfile``) under ``root``, building or resuming any that
    is incomplete (``activations.open_or_build_all``: models are loaded only when a cache needs them, and the LM
    caches of one split come from one forward pass for all their hooks). With ``wp`` (a
    ``profiles.WeightedProfile``) the weighted-SAE notebook's layer caches are built in the same passes.

    Returns the caches by name (the layer caches included), a table (one row per cache: rows, d_in, rows/s when
    it was built, its hook or source) and the model loader (its models stay loaded for later use).
    """
    requests = activations.profile_requests(p) | (activations.layer_requests(wp, p) if wp is not None else {})
    models = activations.ModelLoader(device)
    t0 = time.perf_counter()
    opened = activations.open_or_build_all({Path(root) / name: req for name, req in requests.items()}, models,
                                           progress)
    caches = {d.name: c for d, c in opened.items()}
    timing = pd.DataFrame([{"cache": name, "rows": len(c), "d_in": c.d_in, "source": _source(c.spec),
                            "rows/s when built": round(c.throughput())} for name, c in caches.items()])
    timing.attrs["seconds"] = round(time.perf_counter() - t0, 1)
    return caches, timing, models


def _source(spec: dict) -> str:
    if spec.get("hook"):
        return f"{spec['hook']} ({spec.get('split')}, {spec.get('precision', 'float32')})"
    return (f"{spec.get('model')} {spec.get('layer')} ({spec.get('dataset')}, {spec.get('tokens_per_image')} "
            "tokens/image)")


def neighbour_contexts(cache: ActivationCache, tokenizer, n_queries: int = 4, k: int = 3) -> pd.DataFrame:
    """The text around ``n_queries`` cached LM rows and around their ``k`` nearest neighbours (with the cosine),
    one row per query."""
    rows = []
    for query, neighbours in activations.nearest_neighbours(cache, n_queries=n_queries, k=k):
        row = {"query": activations.token_context(cache, tokenizer, query)}
        for i, (j, cos) in enumerate(neighbours):
            row[f"neighbour {i + 1} (cos)"] = f"{activations.token_context(cache, tokenizer, j)} ({cos:.2f})"
        rows.append(row)
    return pd.DataFrame(rows)


def neighbour_label_agreement(cache: ActivationCache, n_queries: int = 200, k: int = 5) -> tuple[float, float]:
    """(share of the ``k`` nearest neighbours of a row that have its label, averaged over ``n_queries`` rows;
    the same share for random rows), for a cache with a ``labels`` extra."""
    labels = cache.extra("labels")
    hits = [float(np.mean([labels[j] == labels[q] for j, _ in neighbours]))
            for q, neighbours in activations.nearest_neighbours(cache, n_queries=n_queries, k=k)]
    return float(np.mean(hits)), float(np.sum(np.bincount(labels) ** 2) / len(labels) ** 2)


def describe_caches(caches: dict[str, ActivationCache]) -> pd.DataFrame:
    """One row per cache: rows, d_in and what the activations are (hook, or vision model, layer and data)."""
    return pd.DataFrame([{"cache": name, "rows": len(c), "d_in": c.d_in, "source": _source(c.spec)}
                         for name, c in caches.items()])


def profile_caches(world, profile: str, out: str | Path, device: str | None = None, progress: bool = True,
                   log=print, wp=None, **overrides) -> dict[str, ActivationCache]:
    """Notebook 02's caches (the real-data profile's and the weighted-SAE notebook's layers) under
    ``out/activations``, each cache's shards shared among the ranks of ``world`` (an ``executor.World``;
    ``isae.data.cache.partitioned_builds``); caches already built are only verified and opened. Every rank gets
    them all, by name. ``wp``: the weighted-SAE sizes (default: the profile's); ``overrides``: fields of the
    real-data profile."""
    from isae.data.cache import partitioned_builds
    from isae.experiments.executor import describe_world
    from isae.experiments.profiles import real_profile, weighted_profile

    dev = world.device(device)
    describe_world(world, dev)
    p = real_profile(profile, **overrides)
    with partitioned_builds(world.rank, world.world_size, world.barrier):
        caches, timing, _ = build_profile_caches(Path(out) / "activations", p, device=str(dev), progress=progress,
                                                 wp=wp or weighted_profile(profile))
    if world.rank == 0:
        log(timing.to_string(index=False))
    return caches
