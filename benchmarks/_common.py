"""Helpers shared by the benchmark scripts (run them as `python benchmarks/<script>.py`)."""

from __future__ import annotations

import os
import platform

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"cpu: {model} ({os.cpu_count()} logical cores)"


def write_results(df, args) -> None:
    """Write a benchmark's table to ``args.out`` atomically, with a provenance JSON of its arguments beside it."""
    from pathlib import Path

    from isae.core.provenance import write_with_provenance

    params = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    write_with_provenance(args.out, lambda p: df.to_csv(p, index=False), **params)
    print(f"wrote {args.out}")


# --- the training benchmarks' shared sizes and inputs (bench_training, bench_saelens, saelens/time_saelens_step) ---
def add_size_args(p, steps_help: str = "timed optimisation steps") -> None:
    """The paper's training-step sizes as arguments: --d-in, --d-sae, --k, --batch, --steps, --warmup."""
    p.add_argument("--d-in", type=int, default=768, help="input dimension N")
    p.add_argument("--d-sae", type=int, default=4096, help="number of latents K")
    p.add_argument("--k", type=int, default=40, help="active latents per input")
    p.add_argument("--batch", type=int, default=2048, help="inputs (tokens) per step")
    p.add_argument("--steps", type=int, default=5, help=steps_help)
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")


def check_size_args(p, args, positive: tuple[str, ...] = ()) -> None:
    """Refuse sizes from ``add_size_args`` (and the extra ``positive`` ones) that cannot be timed."""
    for name in ("d_in", "d_sae", "k", "batch", "steps") + positive:
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}.")
    if args.warmup < 0:
        p.error(f"--warmup must be ≥ 0, got {args.warmup}.")
    if not 0 < args.k < args.d_sae:
        p.error(f"--k={args.k} must satisfy 0 < k < d_sae={args.d_sae}.")


def make_inputs(d_in: int, d_sae: int, batch: int, n_steps: int, dead_frac: float):
    """(batches, dead): the inputs every training benchmark times, on the CPU.

    min(n_steps, 4) batches of unit-norm Gaussian rows [batch, d_in] from ``Generator().manual_seed(0)``,
    then, from the same generator, a boolean mask [d_sae] with round(dead_frac · d_sae) latents set (the
    first entries of one random permutation, so the masks of different fractions are nested).
    """
    gen = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(min(n_steps, 4)):
        x = torch.randn(batch, d_in, generator=gen)
        batches.append(x / x.norm(dim=1, keepdim=True))
    dead = torch.zeros(d_sae, dtype=torch.bool)
    dead[torch.randperm(d_sae, generator=gen)[: round(dead_frac * d_sae)]] = True
    return batches, dead


def inputs_fingerprint(batches, dead) -> list[float]:
    """Float64 sums of each batch and of the dead latents' indices: equal on both sides ⇔ the same inputs."""
    return [float(b.double().sum()) for b in batches] + [float(dead.nonzero().sum())]


# --- start of a run ----------------------------------------------------------------------------------------------
def setup_device(args) -> torch.device:
    """Apply ``args.threads`` and return ``args.device``, refusing cuda when there is none."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for but torch.cuda.is_available() is False; use --device cpu.")
    return device


def print_load() -> None:
    """Print the 1/5/15-minute load averages, with a warning when other processes use the CPU."""
    if not hasattr(os, "getloadavg"):
        return
    load = os.getloadavg()
    busy = "  WARNING: other processes are using the CPU; timings will be noisy" if load[0] > 0.5 else ""
    if load[0] > (os.cpu_count() or 1) and torch.get_num_threads() > 1:
        busy += " (more load than cores: consider --threads 1, see benchmarks/README.md)"
    print(f"load averages before the run (1, 5, 15 min): {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}{busy}")
