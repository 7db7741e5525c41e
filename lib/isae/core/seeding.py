"""Independent, reproducible seeds for every random stream of an experiment.

Each stream (SAE init, ground-truth dictionary, data batches, aRIP noise) gets its seed from a hash of
its purpose and numbers, so seed 0 of one never equals seed 0 of another: an SAE initialised with seed 0
must not start at a ground-truth dictionary drawn with seed 0 of the same shape.
"""

from __future__ import annotations

import hashlib


def derive_seed(purpose: str, *numbers: int) -> int:
    """A 63-bit seed determined by ``purpose`` and ``numbers`` (stable across runs and machines)."""
    key = ":".join([purpose, *map(str, numbers)]).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & (2**63 - 1)
