"""Where one training step of an architecture goes: step times of each model side by side, then a torch.profiler
table (self CPU time) of the last one's steps.

    .venv/bin/python benchmarks/profile_step.py                       # AbsTopK beside iSAE-ME at P1's sizes
    .venv/bin/python benchmarks/profile_step.py --models topk isae --rows 25
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from isae.core.models import SAE, SAEConfig
from isae.train.trainer import make_optimizer


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--d-in", type=int, default=768)
    p.add_argument("--d-sae", type=int, default=4096)
    p.add_argument("--k", type=int, default=40)
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--steps", type=int, default=3, help="timed (and then profiled) steps per model")
    p.add_argument("--models", nargs="+", default=["abstopk", "isae_me"], help="the last one is profiled")
    p.add_argument("--rows", type=int, default=18, help="rows of the profiler table")
    args = p.parse_args(argv)

    x = torch.randn(args.batch, args.d_in, generator=torch.Generator().manual_seed(0))
    x = x / x.norm(dim=1, keepdim=True)
    print(f"N={args.d_in}, K={args.d_sae}, k={args.k}, batch {args.batch}, float32, {torch.get_num_threads()} threads")
    for arch in args.models:
        sae = SAE(SAEConfig(d_in=args.d_in, d_sae=args.d_sae, k=args.k, architecture=arch), seed=0)
        opt = make_optimizer(sae, 1e-4)

        def step(sae=sae, opt=opt):
            opt.zero_grad(set_to_none=True)
            sae(x).losses["total"].backward()
            opt.step()

        for _ in range(2):  # warm-up
            step()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        print(f"{arch}: {(time.perf_counter() - t0) / args.steps * 1000:.0f} ms per step", flush=True)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    print(f"{args.models[-1]}, {args.steps} steps:")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
