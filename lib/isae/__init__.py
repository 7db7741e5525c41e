"""isae: sparse autoencoders, their identifiability metrics and the experiments of P1–P3.

The public API (loaded on first use, so that ``import isae`` stays light)::

    SAE, SAEConfig            the SAE family (TopK, AbsTopK, iSAE, iSAE-ME, ReLU, JumpReLU)   isae.core.models
    TrainConfig, train_many   the training loop: many models × seeds on one stream          isae.train.trainer
    TensorStream              seeded batches of your own [n, d] activations                 isae.data.stream
    pair_metrics              DCS, PW-MCC, SAE / OMP-oracle code IoU and ℓ2 of two SAEs      isae.eval.metrics
    compare_saes              the identifiability report of saved SAEs on shared inputs      isae.report.compare
    load_sae, save_sae        SAELens-layout folders                                        isae.core.io

The subpackages follow the pipeline: ``core`` (the SAE family) → ``data`` → ``train`` → ``eval`` → ``pipeline``
(train, evaluate, summarise) → ``experiments`` (one per notebook) → ``report`` and ``plots``.
"""

from __future__ import annotations

import importlib

_EXPORTS = {"SAE": "isae.core.models", "SAEConfig": "isae.core.models", "TrainConfig": "isae.train.trainer",
            "train_many": "isae.train.trainer", "TensorStream": "isae.data.stream",
            "pair_metrics": "isae.eval.metrics", "compare_saes": "isae.report.compare", "load_sae": "isae.core.io",
            "save_sae": "isae.core.io"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'isae' has no attribute {name!r}; the public API is {__all__}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
