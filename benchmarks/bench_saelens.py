"""Our TopK and AbsTopK training steps against SAELens's, on the CPU, alternating the sides so that load drift
hits both.

Sizes as ``bench_training.py`` (N = 768, K = 4096, k = 40, batch 2048, float32,
Adam). Each round times, one after the other:

* ours: ``bench_training.time_training(arch, "fast", ...)`` — the very function ``bench_training.py``
  times (``SAE.forward`` with the dead mask → backward → ``remove_radial_grad`` → Adam → ``normalize_atoms``),
  in this process;
* theirs: ``benchmarks/saelens/time_saelens_step.py`` as a subprocess (by default with this interpreter:
  SAELens is pinned in the project's environment; ``--saelens-python`` picks another): SAELens's
  ``TopKTrainingSAE`` (once per ``--saelens-variants`` entry) or ``AbsTopKTrainingSAE`` (dense activations
  only: SAELens's AbsTopK ignores ``use_sparse_activations``) driven by ``SAETrainer.step``.

``--architectures`` (default: topk abstopk) picks the pairs; AbsTopK is the speed anchor of P1's models (iSAE is
AbsTopK plus the aRIP term, iSAE-ME AbsTopK with T encoder steps), and SAELens ships no iSAE.

Both sides get the same inputs (unit-norm Gaussian rows and the same dead latents, drawn with the same seed
and the same torch version; checked through a fingerprint), the same number of torch threads, the same
warm-up and step counts. For each dead fraction (``--dead-fracs``: 0, a healthy SAE, so neither side runs
AuxK; and 0.1, so both do) it prints every round's tokens/s, the best and median per
side, and the ratio ours / theirs. This script creates nothing outside ``--out``.

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_saelens.py --threads 1
    .venv/bin/python benchmarks/bench_saelens.py --steps 1 --warmup 1 --rounds 1 --dead-fracs 0   # smoke run
    .venv/bin/python benchmarks/bench_saelens.py --architectures abstopk --threads 1               # AbsTopK only
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import torch
from _common import (  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
    add_size_args,
    check_size_args,
    device_name,
    inputs_fingerprint,
    make_inputs,
    print_load,
    write_results,
)
from bench_training import PeakMemory, time_training  # noqa: E402

from isae.train.trainer import TrainConfig

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SAELENS_SCRIPT = HERE / "saelens" / "time_saelens_step.py"
SAELENS_PYTHON = Path(sys.executable)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_size_args(p, steps_help="timed optimisation steps per measurement")
    p.add_argument("--rounds", type=int, default=2,
                   help="alternations ours → theirs (each side is timed once per round)")
    p.add_argument("--dead-fracs", type=float, nargs="+", default=[0.0, 0.1],
                   help="fractions of latents marked dead on both sides (0: no AuxK on either side)")
    p.add_argument("--architectures", nargs="+", default=["topk", "abstopk"], choices=["topk", "abstopk"],
                   help="models timed on both sides (ours and SAELens's training SAE of the same name)")
    p.add_argument("--saelens-variants", nargs="+", default=["dense", "sparse"], choices=["dense", "sparse"],
                   help="SAELens TopK variants: dense = its default recipe (dense activations, decoder-norm "
                        "rescaling); sparse = use_sparse_activations=True (COO decoder; no rescaling, see README)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads on both sides (None: torch's choice here, and the same count for SAELens)")
    p.add_argument("--saelens-python", type=Path, default=SAELENS_PYTHON,
                   help="python with sae-lens installed (default: this one)")
    p.add_argument("--out", type=Path, default=None, help="optional CSV of every measurement (written atomically)")
    args = p.parse_args(argv)
    check_size_args(p, args, positive=("rounds",))
    if not all(0 <= f < 1 for f in args.dead_fracs):
        p.error(f"--dead-fracs must lie in [0, 1), got {args.dead_fracs}.")
    return args


def check_saelens_env(python: Path) -> None:
    if not python.exists():
        raise SystemExit(f"error: --saelens-python {python} not found; leave it out to use this interpreter "
                         "(SAELens is in the project's environment: make setup).")


def same_inputs(theirs: list[float], ours: list[float]) -> bool:
    """Fingerprints equal up to float rounding: x / ‖x‖ may round its last bit differently from one allocation to
    the next (vectorised reductions depend on alignment), which changes no timing; the dead-latent sum is exact."""
    return len(theirs) == len(ours) and theirs[-1] == ours[-1] and all(
        math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-9) for a, b in zip(theirs[:-1], ours[:-1]))


def saelens_variants(args: argparse.Namespace, arch: str) -> list[str]:
    """SAELens variants timed for ``arch``: AbsTopK has only dense activations."""
    return args.saelens_variants if arch == "topk" else ["dense"]


def run_saelens(args: argparse.Namespace, dead_frac: float, variant: str, lr: float, threads: int,
                arch: str = "topk") -> dict:
    """One SAELens measurement in a subprocess (``--saelens-python``); returns its JSON result."""
    with tempfile.TemporaryDirectory(prefix="bench_saelens_") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [str(args.saelens_python), str(SAELENS_SCRIPT),
               "--d-in", str(args.d_in), "--d-sae", str(args.d_sae), "--k", str(args.k),
               "--batch", str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--dead-frac", repr(dead_frac), "--lr", repr(lr), "--threads", str(threads), "--out", str(out),
               "--architecture", arch]
        if variant == "sparse":
            cmd.append("--sparse-activations")
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
            raise RuntimeError(f"the SAELens step failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
        print("  " + proc.stdout.strip().splitlines()[-1], file=sys.stderr, flush=True)
        return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> pd.DataFrame:
    args = parse_args(argv)
    check_saelens_env(args.saelens_python)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    device = torch.device("cpu")
    N, K, B = args.d_in, args.d_sae, args.batch

    print(f"device: {device_name(device)}")
    print(f"torch {torch.__version__}, threads {threads} on both sides; SAELens side: {args.saelens_python}")
    print_load()
    print(f"sizes: d_in N={N}, d_sae K={K}, k={args.k}, batch={B}, float32, Adam; {args.steps} timed steps after "
          f"{args.warmup} warm-up steps per measurement; {args.rounds} round(s) of ours → SAELens per architecture "
          f"({', '.join(f'{a}: ' + '/'.join(saelens_variants(args, a)) for a in args.architectures)})")
    sys.stdout.flush()

    ns = argparse.Namespace(d_in=N, d_sae=K, k=args.k, batch=B, steps=args.steps, warmup=args.warmup, compile=False)
    lr = TrainConfig(n_steps=1, batch_size=B).learning_rate(K)  # as time_training uses for ours
    mem = PeakMemory(device)
    rows = []
    for dead_frac in args.dead_fracs:
        batches, dead = make_inputs(N, K, B, args.warmup + args.steps, dead_frac)
        fingerprint = inputs_fingerprint(batches, dead)
        n_dead = int(dead.sum())
        for r, arch in ((r, a) for r in range(args.rounds) for a in args.architectures):
            print(f"[{arch}, dead {n_dead}/{K}, round {r + 1}/{args.rounds}]", file=sys.stderr, flush=True)
            ours = time_training(arch, "fast", ns, batches, dead, device, mem)
            rows.append({"architecture": arch, "dead_frac": n_dead / K, "round": r + 1, "side": "ours",
                         "variant": "isae", "tok_s": ours["tok_s"], "ms_step": 1e3 * ours["seconds"] / args.steps,
                         "loss": ours["loss"]})
            for variant in saelens_variants(args, arch):
                theirs = run_saelens(args, dead_frac, variant, lr, threads, arch)
                if not same_inputs(theirs["inputs_fingerprint"], fingerprint):
                    raise RuntimeError("the SAELens side drew other inputs than ours "
                                       f"({theirs['inputs_fingerprint']} vs {fingerprint}); not comparable.")
                if theirs["threads"] != threads:
                    raise RuntimeError(f"the SAELens side ran {theirs['threads']} threads, ours {threads}.")
                rows.append({"architecture": arch, "dead_frac": n_dead / K, "round": r + 1, "side": "saelens",
                             "variant": variant, "tok_s": theirs["tok_s"], "ms_step": theirs["ms_step"],
                             "loss": theirs["loss"], "sae_lens": theirs["sae_lens"]})
    df = pd.DataFrame(rows)

    print()
    print("every measurement (tokens/s):")
    shown = df.assign(tok_s=df["tok_s"].map("{:,.0f}".format), ms_step=df["ms_step"].map("{:,.1f}".format),
                      loss=df["loss"].map("{:.4f}".format))
    print(shown[["architecture", "dead_frac", "round", "side", "variant", "tok_s", "ms_step", "loss"]]
          .to_string(index=False))
    print()
    summary = []
    for (arch, dead_frac), g in df.groupby(["architecture", "dead_frac"], sort=False):
        ours = g[g["side"] == "ours"]["tok_s"]
        for variant in saelens_variants(args, arch):
            theirs = g[(g["side"] == "saelens") & (g["variant"] == variant)]["tok_s"]
            summary.append({
                "model": arch, "dead": f"{100 * dead_frac:.0f}%", "SAELens variant": variant,
                "ours best tok/s": f"{ours.max():,.0f}", "SAELens best tok/s": f"{theirs.max():,.0f}",
                "ratio (best)": f"{ours.max() / theirs.max():.2f}×",
                "ratio (median)": f"{statistics.median(ours) / statistics.median(theirs):.2f}×",
            })
    print(pd.DataFrame(summary).to_string(index=False))
    print()
    print("ours    = isae TopK / AbsTopK: SAE.forward (sparse gather for the k values, sparse decode; AuxK over the "
          "dead latents when any) → backward → remove_radial_grad → Adam → normalize_atoms")
    print("SAELens = TopKTrainingSAE / AbsTopKTrainingSAE via SAETrainer.step: dense encoder, TopK (AbsTopK: by "
          "|pre|, signs kept, dense activations only), decoder (dense: activations × "
          "decoder norms, dense [B,K]@[K,N]; sparse: COO torch.sparse.mm, no norm rescaling), MSE, AuxK over "
          "dead latents when any, firing statistics → backward → clip_grad_norm_(1) → Adam → LR scheduler")
    print("ratio   = ours tok/s ÷ SAELens tok/s (> 1: ours is faster); best = fastest round of each side")

    if args.out is not None:
        out = df.assign(device=device_name(device), torch=torch.__version__, threads=threads, d_in=N, d_sae=K,
                        k=args.k, batch=B, steps=args.steps, warmup=args.warmup)
        write_results(out, args)
    return df


if __name__ == "__main__":
    main()
