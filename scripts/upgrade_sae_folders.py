"""Rewrite SAE folders saved before the SAELens export in today's layout (``isae.core.io.upgrade_folder``).

Before: iSAE under the architecture name "isae" (SAELens has no such class), iSAE-ME without a top-level
``n_steps``, P2's Γ inside ``sae_weights.safetensors`` (SAELens's strict load refuses extra tensors). After: the
layout ``save_sae`` writes now (iSAE as "abstopk", iSAE-ME as "isae_me" with ``n_steps``, Γ in
``isae_extra.safetensors``); weights, ``isae_config`` and provenance.json unchanged. Usage::

    .venv/bin/python scripts/upgrade_sae_folders.py outputs/smoke/saes/*/
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))
from isae.core.io import upgrade_folder


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dirs", nargs="+", type=Path, help="SAE folders written by isae.core.io.save_sae")
    args = p.parse_args(argv)
    for d in args.dirs:
        print(f"{d}: {'upgraded' if upgrade_folder(d) else 'already in today’s layout'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
