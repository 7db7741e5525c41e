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

    from isae.provenance import write_with_provenance

    params = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    write_with_provenance(args.out, lambda p: df.to_csv(p, index=False), **params)
    print(f"wrote {args.out}")
