"""Batched OMP (``isae.eval.metrics.omp``) next to scikit-learn's OMP and a straightforward per-input torch loop.

At the paper's sizes (K = 4096 unit atoms in N = 768 dimensions, sparsity k = 40) on the current device,
for two kinds of inputs:

* sparse: genuinely k-sparse combinations of the dictionary (random support, Gaussian coefficients) plus
  a little Gaussian noise (``--noise`` × the clean norm), normalised to unit norm;
* gaussian: plain Gaussian inputs, normalised to unit norm (no sparse structure: every pick after the
  first few has a small margin, so this is the hard case for agreeing supports).

It times, measured in the same run:

* ``isae.eval.metrics.omp`` on ``--n`` inputs (its Gram-matrix build included, once per call);
* scikit-learn's OMP on the first ``--n-sklearn`` inputs, in the fastest of its settings found by a short
  calibration (``orthogonal_mp`` with and without the precomputed Gram matrix, float32 and float64; the
  Gram variant is called as ``orthogonal_mp_gram`` with the Gram matrix built once, outside the timing);
* a straightforward per-input torch loop (argmax |Dᵀr| → least squares on the support → new residual,
  k times) on the first ``--n-loop`` inputs, in float32 like the library;

Each kind is timed in ``--repeats`` interleaved rounds (omp on all inputs, then the loop and scikit-learn on
that round's share of their subsets); a method's per-input time is its fastest round, since other load only
adds time. It prints per-input times, the speedups, and the fraction of inputs whose supports (as sets) agree
between each pair of methods (plus, for sparse inputs, the fraction whose true support was recovered).

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_omp.py                  # 10k inputs on cuda, 4096 on cpu
    .venv/bin/python benchmarks/bench_omp.py --d-sae 1024 --d-in 256 --k 16 --n 2048
"""

from __future__ import annotations

import argparse
import inspect
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

# benchmarks/ is on sys.path when run as a script
from _common import device_name, print_load, setup_device, sync, write_results  # noqa: E402

from isae.eval.metrics import omp

try:
    import sklearn
    from sklearn.linear_model import orthogonal_mp, orthogonal_mp_gram
except ImportError:  # benchmark-only dependency: benchmarks/requirements.txt
    sklearn = None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--d-in", type=int, default=768, help="input dimension N")
    p.add_argument("--d-sae", type=int, default=4096, help="number of atoms K")
    p.add_argument("--k", type=int, default=40, help="OMP sparsity (and the sparsity of the sparse inputs)")
    p.add_argument("--n", type=int, default=10_000 if cuda else 4096,
                   help="inputs of each kind given to isae.eval.metrics.omp (default: 10k on cuda, 4096 on cpu, "
                        "where the whole run takes about 2-3 minutes)")
    p.add_argument("--n-sklearn", type=int, default=200, help="inputs of each kind given to scikit-learn (≤ --n)")
    p.add_argument("--n-loop", type=int, default=200, help="inputs of each kind given to the per-input loop (≤ --n)")
    p.add_argument("--noise", type=float, default=0.01,
                   help="sparse inputs: Gaussian noise of norm ≈ this fraction of the clean input's norm")
    p.add_argument("--chunk", type=int, default=None,
                   help="isae.eval.metrics.omp's chunk (inputs per batch); None: omp's own default")
    p.add_argument("--sklearn-variant", default="auto",
                   choices=["auto", "gram-float32", "gram-float64", "plain-float32", "plain-float64"],
                   help="scikit-learn setting; auto: the fastest in a short calibration")
    p.add_argument("--calibrate", type=int, default=8, help="inputs per scikit-learn variant in the calibration")
    p.add_argument("--kinds", nargs="+", default=["sparse", "gaussian"], choices=["sparse", "gaussian"])
    p.add_argument("--repeats", type=int, default=3,
                   help="interleaved rounds per kind; per-input times are the fastest round's (load only adds time)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if cuda else "cpu", help="torch device of omp and the loop")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (None: torch's choice)")
    p.add_argument("--out", type=Path, default=None, help="optional CSV of the results (written atomically)")
    args = p.parse_args(argv)
    for name in ("d_in", "d_sae", "k", "n", "chunk", "calibrate", "repeats"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}.")
    if not 0 < args.k <= min(args.d_in, args.d_sae):
        p.error(f"--k={args.k} must satisfy 0 < k ≤ min(d_in, d_sae) (least squares on k atoms in N dimensions).")
    if not 0 <= args.n_sklearn <= args.n or not 0 <= args.n_loop <= args.n:
        p.error("--n-sklearn and --n-loop must be in [0, --n].")
    if args.noise < 0:
        p.error(f"--noise must be ≥ 0, got {args.noise}.")
    return args


# --- device helpers (as in bench_training.py) ----------------------------------------------------------
def timed(fn, device: torch.device):
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


# --- inputs --------------------------------------------------------------------------------------------
def unit_rows(a: torch.Tensor) -> torch.Tensor:
    return a / a.norm(dim=1, keepdim=True).clamp_min(1e-12)


def make_inputs(kind: str, atoms: torch.Tensor, n: int, k: int, noise: float,
                gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Unit-norm inputs [n, N] and, for "sparse", the true supports as a bool mask [n, K]."""
    K, N = atoms.shape
    if kind == "gaussian":
        return unit_rows(torch.randn(n, N, generator=gen)), None
    support = torch.rand(n, K, generator=gen).argsort(dim=1)[:, :k]
    coef = torch.randn(n, k, generator=gen)
    z = torch.zeros(n, K).scatter_(1, support, coef)
    clean = z @ atoms
    eps = torch.randn(n, N, generator=gen) / N**0.5  # ‖eps‖ ≈ 1
    x = clean + noise * clean.norm(dim=1, keepdim=True) * eps
    return unit_rows(x), z != 0


# --- references ----------------------------------------------------------------------------------------
@torch.no_grad()
def omp_loop(atoms: torch.Tensor, x: torch.Tensor, k: int) -> torch.Tensor:
    """Straightforward OMP, one input at a time: k × (argmax |D r|, least squares on the support, residual)."""
    codes = torch.zeros(x.shape[0], atoms.shape[0], device=x.device)
    for i in range(x.shape[0]):
        xi, r, support = x[i], x[i], []
        for _ in range(k):
            score = (atoms @ r).abs()
            if support:
                score[support] = -1.0  # never re-pick (the residual is orthogonal to them anyway)
            support.append(int(score.argmax()))
            sub = atoms[support].T  # [N, t]
            coef = torch.linalg.lstsq(sub, xi[:, None]).solution[:, 0]
            r = xi - sub @ coef
        codes[i, support] = coef
    return codes


def sklearn_omp(variant: str, atoms64: np.ndarray, grams: dict[str, np.ndarray], x: np.ndarray, k: int) -> np.ndarray:
    """Codes [n, K] from scikit-learn. ``atoms64`` [K, N]; ``grams`` holds the prebuilt Gram matrix per dtype."""
    kind, dtype = variant.split("-")
    X = np.asfortranarray(atoms64.T.astype(dtype))  # sklearn's design matrix: [N, K], one atom per column
    y = np.ascontiguousarray(x.T.astype(dtype))  # [N, n]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "ended prematurely" (counted by the caller)
        if kind == "gram":
            coef = orthogonal_mp_gram(grams[dtype], X.T @ y, n_nonzero_coefs=k)
        else:
            coef = orthogonal_mp(X, y, n_nonzero_coefs=k, precompute=False)
    return np.asarray(coef).reshape(atoms64.shape[0], -1).T


def gram_for(variant: str, atoms64: np.ndarray, grams: dict[str, np.ndarray]) -> float:
    """Build (once) the Gram matrix a Gram variant needs; returns the seconds it took (0 when cached)."""
    kind, dtype = variant.split("-")
    if kind != "gram" or dtype in grams:
        return 0.0
    t0 = time.perf_counter()
    a = atoms64.astype(dtype)
    grams[dtype] = np.asfortranarray(a @ a.T)
    return time.perf_counter() - t0


# --- main ----------------------------------------------------------------------------------------------
def compare_with(row: dict, name: str, codes: torch.Tensor, parts: list[torch.Tensor], times: list[float]
                 ) -> torch.Tensor:
    """Add ``name``'s time per input, its ratio to ours and the support agreement with ``codes`` to ``row``."""
    other = torch.cat(parts)
    row[f"{name}_ms"] = 1e3 * min(times)
    row[f"{name}_ms_median"] = 1e3 * float(np.median(times))
    row[f"speedup_vs_{name}"] = row[f"{name}_ms"] / row["omp_ms"]
    row[f"agree_{name}"], row[f"overlap_{name}"] = supports_agree(codes, other)
    return other


def supports_agree(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(fraction of rows whose supports are equal as sets, mean |supp a ∩ supp b| / |supp a|)."""
    sa, sb = a != 0, b != 0
    equal = (sa == sb).all(1).float().mean().item()
    overlap = ((sa & sb).sum(1).float() / sa.sum(1).clamp_min(1).float()).mean().item()
    return equal, overlap


def main(argv: list[str] | None = None) -> pd.DataFrame:
    args = parse_args(argv)
    device = setup_device(args)
    if sklearn is None and args.n_sklearn:
        print("scikit-learn is not installed (pip install -r benchmarks/requirements.txt): skipping it.")
        args.n_sklearn = 0
    K, N, k = args.d_sae, args.d_in, args.k

    print(f"device: {device_name(device)}")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; numpy {np.__version__}; "
          f"scikit-learn {sklearn.__version__ if sklearn else 'not installed'}")
    chunk_kw = {} if args.chunk is None else {"chunk": args.chunk}
    chunk = args.chunk or inspect.signature(omp).parameters["chunk"].default
    print_load()
    print(f"sizes: K={K} unit atoms in N={N} dimensions, k={k}; omp on {args.n} inputs per kind (chunk "
          f"{chunk}), scikit-learn on {args.n_sklearn}, per-input loop on {args.n_loop}")
    sys.stdout.flush()

    gen = torch.Generator().manual_seed(args.seed)
    atoms = unit_rows(torch.randn(K, N, generator=gen))  # a random unit dictionary
    atoms_dev = atoms.to(device)
    atoms64 = atoms.double().numpy()
    inputs = {kind: make_inputs(kind, atoms, args.n, k, args.noise, gen) for kind in args.kinds}

    # Warm-up (allocator, kernels, lazy init) on a few inputs, untimed.
    omp(atoms_dev, inputs[args.kinds[0]][0][:64].to(device), k, **chunk_kw)
    if args.n_loop:
        omp_loop(atoms_dev, inputs[args.kinds[0]][0][:2].to(device), k)

    grams: dict[str, np.ndarray] = {}
    gram_seconds: dict[str, float] = {}
    variant = args.sklearn_variant
    if args.n_sklearn:
        names = ["gram-float32", "gram-float64", "plain-float32", "plain-float64"]
        for name in names if variant == "auto" else [variant]:
            if name.startswith("gram"):
                gram_seconds[name.split("-")[1]] = gram_for(name, atoms64, grams)
        if variant == "auto":
            # Calibrate on a few inputs of the first kind; the fastest variant is used for the real timing.
            xs = inputs[args.kinds[0]][0][: args.calibrate].double().numpy()
            cal = {}
            for name in names:
                t0 = time.perf_counter()
                sklearn_omp(name, atoms64, grams, xs, k)
                cal[name] = (time.perf_counter() - t0) / xs.shape[0]
            variant = min(cal, key=cal.get)
            print("scikit-learn calibration (ms per input on "
                  f"{xs.shape[0]} {args.kinds[0]} inputs): "
                  + ", ".join(f"{n_} {1e3 * s:.1f}" for n_, s in cal.items()) + f" → using {variant}")
        if variant.startswith("gram"):
            print(f"scikit-learn's Gram matrix ({variant.split('-')[1]}, built once outside its timing): "
                  f"{gram_seconds[variant.split('-')[1]]:.2f} s")
        sys.stdout.flush()

    rows = []
    R = args.repeats
    for kind in args.kinds:
        x, true_support = inputs[kind]
        x_dev = x.to(device)
        t_fast, t_loop, t_sk = [], [], []
        loop_parts, sk_parts, caught = [], [], []
        # R rounds, interleaved so that a burst of load hits every method alike: omp on all n inputs, then
        # the loop and scikit-learn on the round's share of their subsets. Per-input time: the fastest round.
        for r in range(R):
            print(f"[{kind} {r + 1}/{R}] isae.eval.metrics.omp on {args.n} inputs ...", file=sys.stderr, flush=True)
            codes, t = timed(lambda x=x_dev: omp(atoms_dev, x, k, **chunk_kw), device)
            t_fast.append(t / args.n)
            lo, hi = r * args.n_loop // R, (r + 1) * args.n_loop // R
            if hi > lo:
                print(f"[{kind} {r + 1}/{R}] per-input loop on {hi - lo} inputs ...", file=sys.stderr, flush=True)
                part, t = timed(lambda x=x_dev[lo:hi]: omp_loop(atoms_dev, x, k), device)
                loop_parts.append(part.cpu())
                t_loop.append(t / (hi - lo))
            lo, hi = r * args.n_sklearn // R, (r + 1) * args.n_sklearn // R
            if hi > lo:
                print(f"[{kind} {r + 1}/{R}] scikit-learn ({variant}) on {hi - lo} inputs ...", file=sys.stderr,
                      flush=True)
                xs = x[lo:hi].double().numpy()
                with warnings.catch_warnings(record=True) as w:
                    warnings.simplefilter("always", RuntimeWarning)
                    t0 = time.perf_counter()
                    sk = sklearn_omp(variant, atoms64, grams, xs, k)
                    t_sk.append((time.perf_counter() - t0) / (hi - lo))
                caught += w
                sk_parts.append(torch.from_numpy(sk).float())
        codes = codes.cpu()
        row = {"inputs": kind, "omp_ms": 1e3 * min(t_fast), "omp_ms_median": 1e3 * float(np.median(t_fast))}
        if true_support is not None:
            row["omp_true_support"] = ((codes != 0) == true_support).all(1).float().mean().item()
        if loop_parts:
            loop_codes = compare_with(row, "loop", codes[: args.n_loop], loop_parts, t_loop)
        if sk_parts:
            sk_codes = compare_with(row, "sklearn", codes[: args.n_sklearn], sk_parts, t_sk)
            row["sklearn_premature"] = int((sk_codes != 0).sum(1).lt(k).sum())
            if loop_parts:
                m = min(args.n_loop, args.n_sklearn)
                row["loop_agree_sklearn"] = supports_agree(loop_codes[:m], sk_codes[:m])[0]
        rows.append(row)
        print(f"  {kind}: omp {row['omp_ms']:.3f} ms/input (rounds: "
              + " ".join(f"{1e3 * t:.3f}" for t in t_fast) + ")"
              + (f", loop {row['loop_ms']:.2f} (" + " ".join(f"{1e3 * t:.2f}" for t in t_loop) + ")"
                 if loop_parts else "")
              + (f", scikit-learn {row['sklearn_ms']:.2f} (" + " ".join(f"{1e3 * t:.2f}" for t in t_sk) + ")"
                 if sk_parts else ""), file=sys.stderr, flush=True)
    df = pd.DataFrame(rows)

    def pct(col: str) -> pd.Series:
        return (100 * df[col]).map("{:.1f}%".format)

    shown = {"inputs": df["inputs"], "omp ms/input": df["omp_ms"].map("{:.3f}".format)}
    if args.n_loop:
        shown |= {"loop ms/input": df["loop_ms"].map("{:.2f}".format),
                  "× vs loop": df["speedup_vs_loop"].map("{:.1f}×".format),
                  "same supp. as loop": pct("agree_loop")}
    if args.n_sklearn:
        shown |= {"sklearn ms/input": df["sklearn_ms"].map("{:.2f}".format),
                  "× vs sklearn": df["speedup_vs_sklearn"].map("{:.1f}×".format),
                  "same supp. as sklearn": pct("agree_sklearn"),
                  "mean overlap w/ sklearn": pct("overlap_sklearn")}
        if args.n_loop:
            shown["loop same as sklearn"] = pct("loop_agree_sklearn")
    if "omp_true_support" in df:
        shown["omp = true supp."] = df["omp_true_support"].map(lambda v: "-" if pd.isna(v) else f"{100 * v:.1f}%")
    print()
    print(pd.DataFrame(shown).to_string(index=False))
    print()
    print(f"omp     = isae.eval.metrics.omp (float32, batched, chunk {chunk}, its Gram build included) on "
          f"{args.n} inputs per kind")
    if args.n_loop:
        print("loop    = per-input torch loop (float32, argmax |D r| → torch.linalg.lstsq on the support → "
              f"residual, k times) on the first {args.n_loop}; time per input extrapolated")
    if args.n_sklearn:
        print(f"sklearn = scikit-learn {sklearn.__version__} "
              + ("orthogonal_mp_gram (Gram matrix prebuilt once, Dᵀx computed inside the timing)"
                 if variant.startswith("gram") else "orthogonal_mp(precompute=False)")
              + f", {variant.split('-')[1]}, single process, on the first {args.n_sklearn}; "
              f"{int(df['sklearn_premature'].sum())} input(s) stopped before k atoms")
    print(f"ms/input = the fastest of {R} interleaved rounds per method (every round's figure is on stderr; "
          "medians go to --out)")
    print("same supp. = fraction of inputs whose supports are equal as sets; mean overlap = mean |S∩S'|/k; "
          "omp = true supp. = fraction of sparse inputs whose generating support omp recovered")
    print(f"sparse inputs: k={k} random atoms with N(0,1) coefficients + noise of relative norm {args.noise}, "
          "unit-normalised; gaussian inputs: N(0, I) unit-normalised")

    if args.out is not None:
        meta = {"device": device_name(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
                "d_in": N, "d_sae": K, "k": k, "chunk": chunk, "n": args.n, "n_sklearn": args.n_sklearn,
                "n_loop": args.n_loop,
                "sklearn_variant": variant if args.n_sklearn else None, "noise": args.noise}
        write_results(df.assign(**meta), args)
    return df


if __name__ == "__main__":
    main()
