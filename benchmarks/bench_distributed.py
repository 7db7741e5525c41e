"""Notebook 01's training and evaluation on R ranks (torchrun, gloo, one thread each) against one process.

Each side is a fresh ``python -m isae.experiments.launch p1_synthetic`` in its own output folder (no checkpoints to
resume), timed from start to exit (interpreter start and imports included) and by the run's own clock
(``complete.json``: from the first rank's start of work to the tables):

* one process, 1 torch thread;
* one process, R torch threads (the same cores as R ranks, used by one process);
* R ranks of 1 thread each (``torch.distributed.run --standalone --nproc_per_node R``).

It then checks that the R-rank run saved the same weights, byte for byte, and merged the same tables as the
1-thread process. The
ranks share nothing but the file system, so on R free cores the expected speed-up is R × (the balance of the
costed grid, printed) less the start-up and the evaluation's imbalance; a machine shared with other jobs gives
less, and the load averages printed before each side say how busy it was.

Default sizes: the ``smoke`` profile (32 SAEs, 40 steps), cheap enough for a machine shared with other jobs; on a
quiet machine ``--profile default --set n_steps=100 --set n_eval=1024`` (48 SAEs of N = 64, K = 256) is more telling.

    .venv/bin/python benchmarks/bench_distributed.py
    .venv/bin/python benchmarks/bench_distributed.py --profile default --set n_steps=100 --set n_eval=1024
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

# benchmarks/ is on sys.path when run as a script
from _common import device_name, write_results  # noqa: E402

from isae.core.provenance import atomic_write_json
from isae.experiments.executor import marker_path, shares
from isae.experiments.p1_synthetic import P1Synthetic
from isae.experiments.profiles import synthetic_profile

DEFAULT_SET: list[str] = []


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--profile", default="smoke")
    p.add_argument("--set", dest="overrides", action="append", default=None, metavar="NAME=VALUE",
                   help="profile overrides passed to the launcher (default: none)")
    p.add_argument("--ranks", type=int, default=2, help="R: ranks of the distributed side")
    p.add_argument("--out", type=Path, default=None, help="optional CSV of the results (written atomically)")
    p.add_argument("--keep", type=Path, default=None,
                   help="keep the three output folders under this folder; a side already measured there is reused")
    p.add_argument("--sides", nargs="+", default=["one-1t", "one-Rt", "ranks"], choices=["one-1t", "one-Rt", "ranks"],
                   help="which sides to run now (with --keep, the others are read back when measured before)")
    args = p.parse_args(argv)
    if args.ranks < 2:
        p.error(f"--ranks {args.ranks}: the distributed side needs at least 2.")
    args.overrides = args.overrides or list(DEFAULT_SET)
    return args


def _launch(args: argparse.Namespace, out: Path, ranks: int, threads: int) -> dict:
    """One side, timed; with ``--keep`` a side already measured there (its ``bench_row.json``) is reused, so that an
    interrupted benchmark goes on where it stopped."""
    saved = out / "bench_row.json"
    if args.keep is not None and saved.exists():
        return json.loads(saved.read_text())
    shutil.rmtree(out, ignore_errors=True)  # a side starts from nothing (no checkpoint to resume)
    launch = ["-m", "isae.experiments.launch", "p1_synthetic", "--profile", args.profile, "--output-root", str(out),
              "--device", "cpu", "--threads", str(threads), "--no-progress",
              *(a for o in args.overrides for a in ("--set", o))]
    cmd = [sys.executable, *(["-m", "torch.distributed.run", "--standalone", "--nnodes=1",
                              f"--nproc_per_node={ranks}"] if ranks > 1 else []), *launch]
    load = os.getloadavg()
    started = time.perf_counter()
    done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": str(threads)}, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    record = json.loads(marker_path(out, "p1_synthetic").read_text())
    row = {"side": f"{ranks} rank(s) × {threads} thread(s)", "ranks": ranks, "threads": threads,
           "wall_s": round(wall, 1), "run_s": record["seconds"], "load_1min_before": round(load[0], 2),
           "unit_seconds": json.dumps(record.get("unit_seconds"))}
    atomic_write_json(saved, row)
    return row


def _same(a: Path, b: Path) -> bool:
    """The same saved weights (byte for byte) and the same merged tables under ``a`` and ``b``."""
    files = [f.relative_to(a) for f in sorted(a.glob("**/saes/*/sae_weights.safetensors"))]
    if not files or any((a / f).read_bytes() != (b / f).read_bytes() for f in files):
        return False
    x, y = (pd.read_pickle(d / "runs" / "p1_synthetic" / "result.pkl") for d in (a, b))
    return list(x) == list(y) and all(x[k][t].equals(y[k][t]) for k in x for t in ("runs", "pairs", "log"))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    p = synthetic_profile(args.profile, **dict(_kv(o) for o in args.overrides))
    units = P1Synthetic(p, ("authors", "paper")).units()
    cost = [sum(units[i].cost for i in share) for share in shares(len(units), args.ranks, [u.cost for u in units])]
    print(f"{device_name(torch.device('cpu'))}; {len(units) * p.n_seeds} SAEs of N={p.d_in}, K={p.d_sae}, "
          f"{p.n_steps} steps of {p.batch_size} in {len(units)} units; training cost per rank "
          f"{[round(c / max(cost), 2) for c in cost]} (balance {sum(cost) / (len(cost) * max(cost)):.3f})")
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        rows = []
        for side, ranks, threads, name in (("one-1t", 1, 1, "one-1t"), ("one-Rt", 1, args.ranks, f"one-{args.ranks}t"),
                                           ("ranks", args.ranks, 1, f"ranks-{args.ranks}")):
            saved = root / name / "bench_row.json"
            if side in args.sides:
                rows.append(_launch(args, root / name, ranks, threads))
            elif saved.exists():
                rows.append(json.loads(saved.read_text()))
            else:
                continue
            print(rows[-1], flush=True)
        if len(rows) < 3:
            print("not every side is measured yet: run the others (--sides ...) with the same --keep")
            return
        identical = [_same(root / "one-1t", root / name)
                     for name in ("one-1t", f"one-{args.ranks}t", f"ranks-{args.ranks}")]
    df = pd.DataFrame(rows)
    df["speedup_vs_1t"] = (df["wall_s"].iloc[0] / df["wall_s"]).round(2)
    df["identical_to_1t"] = identical
    print(df.to_string(index=False))
    print(f"{args.ranks} ranks saved the same weights and tables as one 1-thread process: {identical[2]}")
    if args.out is not None:
        write_results(df, args)


def _kv(text: str) -> tuple[str, object]:
    import yaml

    name, value = text.split("=", 1)
    return name, yaml.safe_load(value)


if __name__ == "__main__":
    main()
