"""Training throughput of the k-sparse SAEs next to a naive dense reference step, measured in the same run.

For each model (TopK, AbsTopK, iSAE, iSAE-ME by default) at the paper's sizes (N = 768, K = 4096, k = 40,
batch 2048) on the current device, this times two full optimisation steps:

* fast: ``SAE.forward`` with a dead mask of 0% (AuxK idle, a healthy SAE) and of 10% of the latents (so
  AuxK runs) → ``loss.backward()`` → ``remove_radial_grad`` → fused Adam step → ``normalize_atoms``.
  iSAE/iSAE-ME use the model's own aRIP estimator (the stochastic "noise" one by default).
* reference: ``isae.core.reference.dense_loss`` (every tensor batch × K; the *exact* aRIP estimator; no AuxK)
  → backward → the same optimiser steps.

With ``--bf16-selection`` (on by default) the fast path is timed a second time with
``TrainConfig.bf16_selection`` (latents ranked by a bfloat16 encoder product, values recomputed in float32),
and the share of chosen latents it has in common with the float32 selection is printed.

Every step is timed on its own, with one encoder-sized float32 matmul timed right after it. It prints the
median step time, tokens/s (batch ÷ median step) and the speed-up over the reference; each step's fraction
of the roofline (median matmul time ÷ median step time: 100% would be a step that costs only the one
unavoidable dense encoder product, 2·batch·N·K flop, in float32); the iSAE-ME overhead over iSAE; and the
peak memory of every measurement.

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_training.py                       # paper sizes, cuda if available
    .venv/bin/python benchmarks/bench_training.py --steps 3 --warmup 1 --out outputs/bench/training.csv
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import itertools
import resource
import statistics
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from _common import (  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
    add_size_args,
    check_size_args,
    device_name,
    make_inputs,
    print_load,
    setup_device,
    sync,
    write_results,
)
from tqdm.auto import tqdm

from isae.core.models import ARCHITECTURES, K_SPARSE, SAE, SAEConfig
from isae.core.reference import dense_loss
from isae.train.trainer import TrainConfig, make_optimizer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_size_args(p, steps_help="timed optimisation steps per model and path")
    p.add_argument("--models", nargs="+", default=list(K_SPARSE), choices=list(K_SPARSE),
                   help="architectures to time")
    p.add_argument("--dead-fracs", type=float, nargs="+", default=[0.0, 0.1],
                   help="fractions of latents marked dead in the fast path, one timing each: 0 is a healthy "
                        "SAE (AuxK idle), > 0 exercises AuxK on that many dead latents")
    p.add_argument("--bf16-selection", action=argparse.BooleanOptionalAction, default=True,
                   help="also time the fast path with TrainConfig.bf16_selection (latents ranked by a bfloat16 "
                        "encoder product, values in float32) and report how many chosen latents it shares with "
                        "the float32 selection")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                   help="run the fast path's SAE.forward through torch.compile (default mode); its compilation "
                        "happens during the warm-up steps, which must then be at least 2 (forward, then backward)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="torch device to time on")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (None: torch's choice)")
    p.add_argument("--matmul-seconds", type=float, default=1.0,
                   help="minimum time spent measuring the roofline matmul")
    p.add_argument("--out", type=Path, default=None, help="optional CSV of the results (written atomically)")
    args = p.parse_args(argv)
    check_size_args(p, args)
    if not all(0 <= f < 1 for f in args.dead_fracs):
        p.error(f"--dead-fracs must each be in [0, 1), got {args.dead_fracs}.")
    if args.compile and args.warmup < 2:
        p.error(f"--compile needs --warmup ≥ 2 so that compilation stays out of the timed steps, got {args.warmup}.")
    return args


# --- device helpers ----------------------------------------------------------------------------------
class PeakMemory:
    """Peak memory of a phase above the memory in use when it started, in MiB.

    CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``. CPU: a rough figure, the
    growth of the process's resident-set high-water mark (``resource.getrusage(...).ru_maxrss``); freed heap
    is trimmed (glibc ``malloc_trim``) and the mark reset through /proc/self/clear_refs first where Linux
    allows it, else phases after a larger one read 0. Memory the allocator still caches reads low.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.cpu_reset_ok: bool | None = None

    @property
    def label(self) -> str:
        if self.device.type == "cuda":
            return "torch.cuda.max_memory_allocated above phase start"
        reset = "peak reset per phase" if self.cpu_reset_ok else "peak NOT reset: later phases under-report"
        return f"ROUGH: getrusage ru_maxrss growth over phase start ({reset})"

    def start(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            try:  # hand freed heap back to the OS so that its reuse shows up as growth
                ctypes.CDLL("libc.so.6").malloc_trim(0)
            except (OSError, AttributeError):
                pass
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")  # reset the peak RSS to the current RSS (Linux ≥ 4.0)
                self.cpu_reset_ok = self.cpu_reset_ok is not False
            except OSError:
                self.cpu_reset_ok = False
            self._base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux

    def stop(self) -> float:
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return (peak - self._base) / 2**20


# --- measurements --------------------------------------------------------------------------------------
def matmul_throughput(batch: int, n: int, k: int, device: torch.device, min_seconds: float) -> float:
    """flop/s of x @ W.T for x [batch, n], W [k, n] in float32 (2·batch·n·k flop per product).

    The product is written into a preallocated output: a fresh [batch, k] output costs page faults on the
    CPU, which the limit should not include.
    """
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, n, generator=gen).to(device)
    w = torch.randn(k, n, generator=gen).to(device)
    out = torch.empty(batch, k, device=device)
    for _ in range(3):
        torch.mm(x, w.T, out=out)
    reps = 1
    while True:
        sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.mm(x, w.T, out=out)
        sync(device)
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds or reps >= 1 << 16:
            return 2.0 * batch * n * k * reps / elapsed
        reps = max(reps * 2, int(reps * 1.2 * min_seconds / max(elapsed, 1e-9)))


def time_training(arch: str, path: str, args: argparse.Namespace, batches: list[torch.Tensor],
                  dead: torch.Tensor | None, device: torch.device, mem: PeakMemory,
                  probe: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
                  bf16_selection: bool = False) -> dict:
    """Time ``args.steps`` optimisation steps of one model on one path ("fast" or "reference").

    Every step is timed on its own. With ``probe`` = (x, W, out), one encoder-sized product x @ W.T is also
    timed after every step, so that the roofline fraction compares step and matmul measured moments apart
    (the machine's speed drifts by several per cent over a run). Returns total seconds and tokens/s over
    all steps, and the median step and median probe times.
    """
    mem.start()
    cfg = SAEConfig(d_in=args.d_in, d_sae=args.d_sae, k=args.k, architecture=arch)
    sae = SAE(cfg, seed=0).to(device)
    lr = TrainConfig(n_steps=1, batch_size=args.batch).learning_rate(cfg.d_sae)
    opt = make_optimizer(sae, lr)
    gen = torch.Generator(device).manual_seed(10_007)
    model = torch.compile(sae) if args.compile and path == "fast" else sae

    def step(x: torch.Tensor) -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        if path == "fast":
            loss = model(x, dead_mask=dead, generator=gen, bf16_selection=bf16_selection).losses["total"]
        else:
            loss = dense_loss(sae, x)
        loss.backward()
        sae.remove_radial_grad()
        opt.step()
        sae.normalize_atoms()
        return loss.detach()

    label = f"{ARCHITECTURES[arch]:>7} {path + (' bf16-sel' if bf16_selection else ''):<9}"
    for i in range(args.warmup):
        step(batches[i % len(batches)])
    sync(device)
    bar = tqdm(range(args.steps), desc=label, unit="step", leave=False, file=sys.stderr,
               disable=None)  # disable=None: no bar when stderr is not a terminal
    step_s, probe_s = [], []
    for i in bar:
        t0 = time.perf_counter()
        loss = step(batches[(args.warmup + i) % len(batches)])
        sync(device)
        step_s.append(time.perf_counter() - t0)
        if probe is not None:
            t0 = time.perf_counter()
            torch.mm(probe[0], probe[1].T, out=probe[2])
            sync(device)
            probe_s.append(time.perf_counter() - t0)
    bar.close()
    peak_mib = mem.stop()
    loss = float(loss)
    if not torch.isfinite(torch.tensor(loss)):
        raise RuntimeError(f"{arch} {path}: the loss became {loss}; the timing is of a broken step.")
    seconds = sum(step_s)
    tok_s = args.batch * args.steps / seconds
    print(f"  {label} {args.steps} steps in {seconds:7.2f} s → {tok_s:10.0f} tokens/s, "
          f"peak {peak_mib:7.0f} MiB, last loss {loss:.4f}", file=sys.stderr, flush=True)
    step = sae = opt = model = None  # free the model, its optimiser state and the closure before the next one
    return {"seconds": seconds, "tok_s": tok_s, "median_step_s": statistics.median(step_s),
            "median_probe_s": statistics.median(probe_s) if probe_s else float("nan"),
            "peak_mib": peak_mib, "loss": loss}


@torch.no_grad()
def selection_agreement(arch: str, args: argparse.Namespace, x: torch.Tensor, device: torch.device) -> float:
    """Fraction of the latents chosen with bf16_selection that the float32 selection also chooses (same SAE, same x)."""
    sae = SAE(SAEConfig(d_in=args.d_in, d_sae=args.d_sae, k=args.k, architecture=arch), seed=0).to(device)
    fp32 = sae.encode_sparse(x).idx
    bf16 = sae.encode_sparse(x, bf16_selection=True).idx
    return float((bf16[:, :, None] == fp32[:, None, :]).any(2).float().mean())


def main(argv: list[str] | None = None) -> pd.DataFrame:
    args = parse_args(argv)
    device = setup_device(args)
    N, K, B = args.d_in, args.d_sae, args.batch

    print(f"device: {device_name(device)}")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"float32 matmul precision {torch.get_float32_matmul_precision()!r}")
    if device.type == "cpu":
        print_load()
    print(f"sizes: d_in N={N}, d_sae K={K}, k={args.k}, batch={B}; {args.steps} timed steps after "
          f"{args.warmup} warm-up steps per model and path"
          + ("; fast path through torch.compile" if args.compile else ""))
    sys.stdout.flush()

    # Unit-norm inputs (Gaussian rows, normalised), shared by every model and path; nested dead masks.
    batches = [x.to(device) for x in make_inputs(N, K, B, args.warmup + args.steps, 0.0)[0]]
    dead_masks = {frac: make_inputs(N, K, B, args.warmup + args.steps, frac)[1].to(device)
                  for frac in args.dead_fracs}

    print("measuring the roofline matmul ...", file=sys.stderr, flush=True)
    flops = matmul_throughput(B, N, K, device, args.matmul_seconds)
    limit_tok_s = flops / (2.0 * N * K)

    mem = PeakMemory(device)
    gen_probe = torch.Generator().manual_seed(1)
    # (x, W, out): the probe writes into a preallocated output, like the encoder's own blocks, so page faults
    # of a fresh [B, K] output (12% of the product's time on the CPU here) do not inflate the limit.
    probe = (torch.randn(B, N, generator=gen_probe).to(device), torch.randn(K, N, generator=gen_probe).to(device),
             torch.empty(B, K, device=device))
    rows = []
    runs_per_model = len(dead_masks) + 1
    for i, arch in enumerate(args.models):
        print(f"[{i + 1}/{len(args.models)}] {ARCHITECTURES[arch]}: {runs_per_model} timings", file=sys.stderr,
              flush=True)
        ref = time_training(arch, "reference", args, batches, None, device, mem, probe)
        bf16_options = [False, True] if args.bf16_selection else [False]
        for (_frac, dead), bf16 in itertools.product(dead_masks.items(), bf16_options):
            fast = time_training(arch, "fast", args, batches, dead, device, mem, probe, bf16_selection=bf16)
            rows.append({
                "model": ARCHITECTURES[arch], "dead_frac": float(dead.float().mean()),
                "selection": "bfloat16" if bf16 else "float32",
                "shared_latents": selection_agreement(arch, args, batches[0], device) if bf16 else 1.0,
                "fast_tok_s": B / fast["median_step_s"], "ref_tok_s": B / ref["median_step_s"],
                "speedup": ref["median_step_s"] / fast["median_step_s"],
                "fast_roofline_frac": fast["median_probe_s"] / fast["median_step_s"],
                "ref_roofline_frac": ref["median_probe_s"] / ref["median_step_s"],
                "fast_ms_step": 1e3 * fast["median_step_s"], "ref_ms_step": 1e3 * ref["median_step_s"],
                "fast_peak_mib": fast["peak_mib"], "ref_peak_mib": ref["peak_mib"],
                "fast_loss": fast["loss"], "ref_loss": ref["loss"],
            })
    df = pd.DataFrame(rows)

    shown = pd.DataFrame({
        "model": df["model"],
        "dead": (100 * df["dead_frac"]).map("{:.0f}%".format),
        "selection": df["selection"].map({"float32": "fp32", "bfloat16": "bf16"}),
        "fast tok/s": df["fast_tok_s"].map("{:,.0f}".format),
        "ref tok/s": df["ref_tok_s"].map("{:,.0f}".format),
        "speedup": df["speedup"].map("{:.1f}×".format),
        "fast % roofline": (100 * df["fast_roofline_frac"]).map("{:.1f}%".format),
        "ref % roofline": (100 * df["ref_roofline_frac"]).map("{:.1f}%".format),
        "fast ms/step": df["fast_ms_step"].map("{:,.1f}".format),
        "ref ms/step": df["ref_ms_step"].map("{:,.1f}".format),
        "fast peak MiB": df["fast_peak_mib"].map("{:,.0f}".format),
        "ref peak MiB": df["ref_peak_mib"].map("{:,.0f}".format),
    })
    print()
    print(f"roofline: [{B}×{N}]·[{N}×{K}] matmul runs at {flops / 1e9:,.1f} GFLOP/s → the one dense encoder "
          f"product (2·N·K = {2 * N * K / 1e6:.2f} MFLOP per token) limits training to {limit_tok_s:,.0f} tokens/s")
    print()
    print(shown.to_string(index=False))
    print()
    print("fast      = SAE.forward with the 'dead' fraction of latents marked dead (0%: AuxK idle, as in a healthy "
          "SAE; >0: AuxK on those latents; aRIP with the model's own estimator, the stochastic 'noise' one by "
          "default) → backward → remove_radial_grad → fused Adam → normalize_atoms")
    print("reference = isae.core.reference.dense_loss (dense batch×K tensors; EXACT aRIP estimator; no AuxK) → "
          "backward → the same optimiser steps; timed once per model")
    print("ms/step   = median over the timed steps (each timed on its own); tok/s = batch ÷ median step")
    print("speedup   = reference median step ÷ fast median step; % roofline = median time of the encoder-sized "
          "matmul, timed right after every step, ÷ median step time (the matmul limit above is for scale)")
    print(f"peak MiB  = {mem.label}; includes the model, its gradients and Adam state")
    if args.bf16_selection:
        print("selection = fp32: every product in float32; bf16: latents ranked by a bfloat16 encoder product, "
              "values recomputed in float32 (TrainConfig.bf16_selection). Chosen latents shared with the fp32 "
              "selection on the first batch, at init: " + ", ".join(
                  f"{m} {100 * v:.2f}%" for m, v in df[df["selection"] == "bfloat16"].groupby("model", sort=False)
                  ["shared_latents"].first().items()))
    for frac in sorted(df["dead_frac"].unique()):
        part = df[(df["dead_frac"] == frac) & (df["selection"] == "float32")].set_index("model")
        if {"iSAE", "iSAE-ME"} <= set(part.index):
            a, b = part.loc["iSAE"], part.loc["iSAE-ME"]
            print(f"iSAE-ME overhead over iSAE at {100 * frac:.0f}% dead (step time ratio): "
                  f"fast {a['fast_tok_s'] / b['fast_tok_s']:.2f}×, reference {a['ref_tok_s'] / b['ref_tok_s']:.2f}×")

    if args.out is not None:
        meta = {"device": device_name(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
                "compiled": args.compile,
                "d_in": N, "d_sae": K, "k": args.k, "batch": B, "steps": args.steps, "warmup": args.warmup,
                "matmul_gflops": flops / 1e9, "limit_tok_s": limit_tok_s,
                "memory_measure": mem.label}
        out = df.assign(**meta)
        write_results(out, args)
    return df


if __name__ == "__main__":
    main()
