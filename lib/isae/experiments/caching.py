"""Notebook 02's driver: open or build a profile's activation caches, and look at what they hold."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from isae.data import activations
from isae.data.cache import ActivationCache


def build_profile_caches(root: str | Path, p, device: str | None = None,
                         progress: bool = True) -> tuple[dict[str, ActivationCache], pd.DataFrame,
                                                         activations.ModelLoader]:
    """Open the four caches of ``p`` (a ``profiles.RealProfile``) under ``root``, building or resuming any that
    is incomplete (``activations.open_or_build``; models are loaded only when a cache needs them).

    Returns the caches, a timing table (one row per cache: rows, d_in, rows/s when it was built, seconds spent
    on it in this call) and the model loader (its models stay loaded for later use).
    """
    models = activations.ModelLoader(device)
    caches, timing = {}, []
    for name, req in activations.profile_requests(p).items():
        t0 = time.perf_counter()
        caches[name] = activations.open_or_build(Path(root) / name, req, models, progress)
        timing.append({"cache": name, "rows": len(caches[name]), "d_in": caches[name].d_in,
                       "rows/s when built": round(caches[name].throughput()),
                       "seconds in this run": round(time.perf_counter() - t0, 1)})
    return caches, pd.DataFrame(timing), models


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
    def source(spec: dict) -> str:
        if spec.get("hook"):
            return spec["hook"]
        return (f"{spec.get('model')} {spec.get('layer')} ({spec.get('dataset')}, {spec.get('tokens_per_image')} "
                f"tokens/image)")

    return pd.DataFrame([{"cache": name, "rows": len(c), "d_in": c.d_in, "source": source(c.spec)}
                         for name, c in caches.items()])
