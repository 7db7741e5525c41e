"""S seeds × M models trained together from one data stream, next to S·M separate runs of one model each.

Both sides call ``isae.train.trainer.train_many`` on the same ``SyntheticStream`` for the same number of steps:

* together: ONE call with all S·M models (every batch is produced once and fed to every model in turn);
* separate: S·M calls with one model each (every call produces the whole stream again, including the
  ``geometric_median_samples`` inputs that initialise b_dec).

It prints the wall time of each side and their ratio (goal: together ÷ separate ≤ 1), the share
of each side's time spent producing data batches (``stream.batch``, timed through a wrapper), and whether
every model ends identical in both settings (max |ΔW_dec|).

Default sizes are modest so that the whole run takes a couple of minutes on the 2-core CPU (d_in 256,
d_sae 1024, k 16, batch 1024, 40 steps, 4 models × 2 seeds); ``--paper`` switches to the paper's sizes
(N = 768, K = 4096, k = 40, batch 2048, ground truth of 4096 atoms with 40-sparse codes).

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_many.py
    .venv/bin/python benchmarks/bench_many.py --paper --steps 10 --seeds 3
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd
import torch

# benchmarks/ is on sys.path when run as a script
from _common import device_name, print_load, setup_device, sync, write_results  # noqa: E402

import isae.train.trainer
from isae.core.models import ARCHITECTURES, K_SPARSE, SAE, SAEConfig
from isae.data.synthetic import SyntheticConfig, SyntheticStream
from isae.train.trainer import TrainConfig, train_many

PAPER = {"d_in": 768, "d_sae": 4096, "k": 40, "batch": 2048, "n_atoms": 4096, "data_k": 40}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--paper", action="store_true",
                   help="paper sizes: " + ", ".join(f"{k}={v}" for k, v in PAPER.items()) + " (overrides those)")
    p.add_argument("--d-in", type=int, default=256, help="input dimension N")
    p.add_argument("--d-sae", type=int, default=1024, help="latents K of every SAE")
    p.add_argument("--k", type=int, default=16, help="active latents per input")
    p.add_argument("--batch", type=int, default=1024, help="inputs per step")
    p.add_argument("--n-atoms", type=int, default=None, help="ground-truth atoms of the stream (default: d_sae)")
    p.add_argument("--data-k", type=int, default=None, help="non-zeros of the ground-truth codes (default: k)")
    p.add_argument("--steps", type=int, default=40, help="optimiser steps of every run")
    p.add_argument("--seeds", type=int, default=2, help="S: seeds per model")
    p.add_argument("--models", nargs="+", default=list(K_SPARSE), choices=list(ARCHITECTURES),
                   help="the M architectures")
    p.add_argument("--gm-samples", type=int, default=TrainConfig.geometric_median_samples,
                   help="TrainConfig.geometric_median_samples (inputs that initialise b_dec in every call)")
    p.add_argument("--order", choices=["together-first", "separate-first"], default="together-first",
                   help="which side runs first")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (None: torch's choice)")
    p.add_argument("--out", type=Path, default=None, help="optional CSV of the results (written atomically)")
    args = p.parse_args(argv)
    if args.paper:
        for k, v in PAPER.items():
            setattr(args, k, v)
    args.n_atoms = args.n_atoms or args.d_sae
    args.data_k = args.data_k or args.k
    for name in ("d_in", "d_sae", "k", "batch", "steps", "seeds", "n_atoms", "data_k", "gm_samples"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}.")
    return args


# --- helpers (device ones as in bench_training.py) -----------------------------------------------------
class TimedStream:
    """Wraps a stream and adds up the seconds spent in ``batch`` (synchronised on cuda) and the calls."""

    def __init__(self, stream: SyntheticStream):
        self.stream = stream
        self.seconds = 0.0
        self.calls = 0
        self.init_seconds = 0.0
        """Seconds of ``initialise_decoder_bias`` (its batches and the Weiszfeld iterations)."""
        self.init_stream_seconds = 0.0
        """The part of ``seconds`` spent on the batches of ``initialise_decoder_bias``."""

    @property
    def d_in(self) -> int:
        return self.stream.d_in

    @property
    def steps_per_pass(self) -> int | None:
        return self.stream.steps_per_pass

    def identity(self) -> dict:
        return self.stream.identity()

    def batch(self, step: int) -> torch.Tensor:
        sync(self.stream.device)
        t0 = time.perf_counter()
        x = self.stream.batch(step)
        sync(self.stream.device)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return x


def make_saes(args: argparse.Namespace) -> dict[str, SAE]:
    return {f"{ARCHITECTURES[arch]} seed {seed}": SAE(SAEConfig(d_in=args.d_in, d_sae=args.d_sae, k=args.k,
                                                                architecture=arch), seed=seed)
            for seed in range(args.seeds) for arch in args.models}


def run(saes: dict[str, SAE], stream: SyntheticStream, cfg: TrainConfig, device: torch.device) -> dict[str, float]:
    """Train ``saes`` in one train_many call; returns its seconds, the stream's seconds and calls, and the
    seconds of the b_dec initialisation (timed by wrapping ``isae.train.trainer.initialise_decoder_bias``)."""
    timed = TimedStream(stream)
    original = isae.train.trainer.initialise_decoder_bias

    def timed_init(saes_, stream_, n_samples):
        before = timed.seconds
        t0 = time.perf_counter()
        original(saes_, stream_, n_samples)
        sync(device)
        timed.init_seconds += time.perf_counter() - t0
        timed.init_stream_seconds += timed.seconds - before

    isae.train.trainer.initialise_decoder_bias = timed_init
    try:
        sync(device)
        t0 = time.perf_counter()
        train_many(saes, timed, cfg, progress=False)
        sync(device)
        seconds = time.perf_counter() - t0
    finally:
        isae.train.trainer.initialise_decoder_bias = original
    return {"seconds": seconds, "stream_seconds": timed.seconds, "batch_calls": timed.calls,
            "init_seconds": timed.init_seconds, "init_stream_seconds": timed.init_stream_seconds}


def main(argv: list[str] | None = None) -> pd.DataFrame:
    args = parse_args(argv)
    device = setup_device(args)
    S, M = args.seeds, len(args.models)

    print(f"device: {device_name(device)}")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    print_load()
    print(f"sizes: d_in N={args.d_in}, d_sae K={args.d_sae}, k={args.k}, batch={args.batch}, {args.steps} steps; "
          f"stream: {args.n_atoms} ground-truth atoms, {args.data_k}-sparse codes; b_dec from {args.gm_samples} inputs")
    print(f"S={S} seeds × M={M} models ({', '.join(ARCHITECTURES[a] for a in args.models)}) = {S * M} SAEs")
    sys.stdout.flush()

    stream = SyntheticStream(SyntheticConfig(d_in=args.d_in, n_atoms=args.n_atoms, k=args.data_k, seed=0),
                             batch_size=args.batch, seed=0, device=device)
    cfg = TrainConfig(n_steps=args.steps, batch_size=args.batch, geometric_median_samples=args.gm_samples,
                      log_every=max(args.steps, 1), checkpoint_every=10**9, device=str(device))

    # Warm-up: one short call, so that neither side pays for lazy initialisation.
    warm = TrainConfig(n_steps=1, batch_size=args.batch, geometric_median_samples=args.batch, device=str(device))
    train_many({k: v for k, v in list(make_saes(args).items())[:M]}, stream, warm, progress=False)

    def together():
        print(f"together: one train_many call with {S * M} SAEs ...", file=sys.stderr, flush=True)
        saes = make_saes(args)
        return saes, run(saes, stream, cfg, device)

    def separate():
        saes = make_saes(args)
        total: dict[str, float] = {}
        for i, (name, sae) in enumerate(saes.items()):
            print(f"separate: train_many call {i + 1}/{S * M} ({name}) ...", file=sys.stderr, flush=True)
            for key, value in run({name: sae}, stream, cfg, device).items():
                total[key] = total.get(key, 0) + value
        return saes, total

    if args.order == "together-first":
        saes_t, tog = together()
        saes_s, sep = separate()
    else:
        saes_s, sep = separate()
        saes_t, tog = together()

    diffs = {name: float((saes_t[name].W_dec.detach() - saes_s[name].W_dec.detach()).abs().max()) for name in saes_t}
    rows = []
    for side, r, calls in (("together", tog, 1), ("separate", sep, S * M)):
        rows.append({"side": side, "calls": calls, **r, "stream_share": r["stream_seconds"] / r["seconds"],
                     "init_share": r["init_seconds"] / r["seconds"],
                     "ms_per_model_step": 1e3 * (r["seconds"] - r["init_seconds"]) / (S * M * args.steps)})
    df = pd.DataFrame(rows)
    shown = pd.DataFrame({
        "side": df["side"], "train_many calls": df["calls"], "seconds": df["seconds"].map("{:.1f}".format),
        "stream.batch calls": df["batch_calls"],
        "stream s": df["stream_seconds"].map("{:.1f}".format),
        "stream share": (100 * df["stream_share"]).map("{:.1f}%".format),
        "b_dec init s": df["init_seconds"].map("{:.1f}".format),
        "init share": (100 * df["init_share"]).map("{:.1f}%".format),
        "ms per model-step (no init)": df["ms_per_model_step"].map("{:.1f}".format),
    })
    print()
    print(shown.to_string(index=False))
    print()
    ratio = tog["seconds"] / sep["seconds"]
    no_init = (tog["seconds"] - tog["init_seconds"]) / (sep["seconds"] - sep["init_seconds"])
    no_data = ((tog["seconds"] - tog["init_seconds"] - tog["stream_seconds"] + tog["init_stream_seconds"])
               / (sep["seconds"] - sep["init_seconds"] - sep["stream_seconds"] + sep["init_stream_seconds"]))
    print(f"ratio together ÷ separate = {ratio:.2f} (goal ≤ 1: {'met' if ratio <= 1 else 'NOT met'}); "
          f"training steps only (no b_dec init): {no_init:.2f}; training steps without their batches: {no_data:.2f}")
    print("stream s / share = time inside stream.batch (b_dec initialisation's batches included) and its share of the"
          " side's time; b_dec init = initialise_decoder_bias (its batches + Weiszfeld), once per train_many call")
    print("same final W_dec, together vs separate (max |Δ| per SAE): "
          + ", ".join(f"{n} {d:.1e}" for n, d in diffs.items()))

    if args.out is not None:
        meta = {"device": device_name(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
                "d_in": args.d_in, "d_sae": args.d_sae, "k": args.k, "batch": args.batch, "steps": args.steps,
                "seeds": S, "models": " ".join(args.models), "ratio": ratio, "ratio_no_init": no_init}
        write_results(df.assign(**meta), args)
    return df


if __name__ == "__main__":
    main()
