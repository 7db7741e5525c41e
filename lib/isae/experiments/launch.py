"""Launch an experiment on one process or many (torchrun); the notebooks then read what it wrote.

    torchrun --nproc_per_node=4 -m isae.experiments.launch p1_synthetic --profile paper
    python -m isae.experiments.launch p1_synthetic --profile smoke --set n_steps=10 --set settings=[iid]
    torchrun --nproc_per_node=2 -m isae.experiments.launch caching --profile default
    torchrun --nproc_per_node=8 -m isae.experiments.launch p1_real --profile paper
    torchrun --nproc_per_node=5 -m isae.experiments.launch p2_weighted --profile paper
    torchrun --nproc_per_node=4 -m isae.experiments.launch p2_toy --profile paper

``p1_synthetic`` is notebook 01's training and evaluation (``isae.experiments.distributed``), ``p1_real``
notebook 03's and ``p2_weighted`` notebook 05's (their caches built first, shared among the ranks), ``p2_toy``
notebook 04's; afterwards the notebook at the same profile and parameters reads the results (its
``results_from`` parameter) instead of training. ``caching`` builds notebook 02's activation caches, each
cache's shards shared among the ranks.
Without torchrun (WORLD_SIZE unset) it is one process: the same code with world size 1.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

import yaml


def _override(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set {text!r}: use name=value, e.g. --set n_steps=40000")
    name, value = text.split("=", 1)
    return name.strip(), yaml.safe_load(value)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from isae.experiments.distributed import EXPERIMENTS
    from isae.train.recipe import RECIPES

    p = argparse.ArgumentParser(prog="python -m isae.experiments.launch", description=__doc__.split("\n\n")[0])
    p.add_argument("experiment", choices=EXPERIMENTS)
    p.add_argument("--profile", default="default", help="smoke | default | paper (the notebooks' profile)")
    p.add_argument("--set", dest="overrides", type=_override, action="append", default=[], metavar="NAME=VALUE",
                   help="override a profile field, as a notebook parameter would (YAML value: --set n_steps=40000, "
                        "--set 'models=[topk, isae_me]'); repeatable")
    p.add_argument("--recipes", nargs="+", default=["authors", "paper"], choices=list(RECIPES),
                   help="p1_synthetic: training recipes, the headline's first (notebook 01's default); p1_real takes "
                        "the real-data profile's recipe (--set recipe=...)")
    p.add_argument("--output-root", type=Path, default=None, help="default: <repo>/outputs/<profile>")
    p.add_argument("--device", default=None,
                   help="None: cuda:<local rank> when torch sees CUDA, else cpu; 'cpu' forces the CPU")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads per rank (default: OMP_NUM_THREADS, which torchrun sets to 1)")
    p.add_argument("--deterministic", action="store_true",
                   help="torch.use_deterministic_algorithms(True) and CUBLAS_WORKSPACE_CONFIG=:4096:8 (GPUs: "
                        "run-to-run identical where torch has deterministic kernels, an error naming the op where "
                        "it has none)")
    p.add_argument("--timeout-hours", type=float, default=72.0, help="longest wait at a barrier")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads {args.threads}: must be ≥ 1.")
    if args.experiment != "p1_synthetic" and args.recipes != ["authors", "paper"]:
        p.error("--recipes applies to p1_synthetic only.")
    return args


def run_weighted(world, args: argparse.Namespace, overrides: dict, out: Path, command: str) -> None:
    """Notebook 05's caches, scores and weights on every rank (the caches' shards shared), then its training and
    evaluation shared by setting. ``--set`` names weighted-profile fields, and ``consistency_tail``."""
    from isae.data.cache import partitioned_builds
    from isae.experiments import distributed, p2_weighted
    from isae.experiments.profiles import real_profile, weighted_profile

    tail = overrides.pop("consistency_tail", "positive")
    if tail not in p2_weighted.TAILS:
        raise SystemExit(f"--set consistency_tail={tail}: use one of {p2_weighted.TAILS}.")
    p, wp = real_profile(args.profile), weighted_profile(args.profile, **overrides)
    progress = not args.no_progress
    caches = distributed.profile_caches(world, args.profile, out, device=args.device, progress=progress, wp=wp)
    with partitioned_builds(world.rank, world.world_size, world.barrier):
        layers = p2_weighted.lm_layer_caches(out / "activations", wp, p, profile_caches=caches,
                                             device=str(world.device(args.device)), progress=progress)
    sources = p2_weighted.setting_sources(caches, layers)
    _, weights = p2_weighted.setting_weights(sources, wp, tail=tail)
    distributed.run_weighted_distributed(world, sources, weights, wp, p, tail, out, device=args.device,
                                         progress=progress, profile=args.profile, command=command)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    import torch

    from isae.core.provenance import repo_root
    from isae.experiments import distributed
    from isae.experiments.profiles import check_profile, real_profile, synthetic_profile, toy_profile

    check_profile(args.profile)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    overrides = dict(args.overrides)
    out = args.output_root or repo_root() / "outputs" / args.profile
    command = "python -m isae.experiments.launch " + shlex.join(argv if argv is not None else sys.argv[1:])
    world = distributed.init_world(args.timeout_hours)
    try:
        if args.experiment == "p1_synthetic":
            p = synthetic_profile(args.profile, **overrides)
            distributed.run_synthetic_distributed(world, p, tuple(args.recipes), out, device=args.device,
                                                  progress=not args.no_progress, profile=args.profile,
                                                  command=command)
        elif args.experiment == "p1_real":
            p = real_profile(args.profile, **overrides)
            caches = distributed.profile_caches(world, args.profile, out, device=args.device,
                                                progress=not args.no_progress, **overrides)
            distributed.run_real_distributed(world, p, caches, out, device=args.device, progress=not args.no_progress,
                                             profile=args.profile, command=command)
        elif args.experiment == "p2_toy":
            distributed.run_toy_distributed(world, toy_profile(args.profile, **overrides), out, device=args.device,
                                            progress=not args.no_progress, profile=args.profile, command=command)
        elif args.experiment == "p2_weighted":
            run_weighted(world, args, overrides, out, command)
        else:
            distributed.profile_caches(world, args.profile, out, device=args.device, progress=not args.no_progress,
                                       **overrides)
    finally:
        distributed.close_world(world)
    return 0


if __name__ == "__main__":
    sys.exit(main())
