"""Run an experiment on one process, on many (torchrun) or as a SLURM job array; the notebooks then read it.

    torchrun --nproc_per_node=4 -m isae.experiments.launch p1_synthetic --profile paper
    python -m isae.experiments.launch p1_synthetic --profile smoke --set n_steps=10 --set settings=[iid]
    torchrun --nproc_per_node=2 -m isae.experiments.launch caching --profile default
    torchrun --nproc_per_node=8 -m isae.experiments.launch p1_real --profile paper
    sbatch --array=0-7 --wrap "python -m isae.experiments.launch p2_weighted --profile paper"

Each experiment (``EXPERIMENTS``) is the notebook's own description (``isae.experiments.executor.Experiment``):
``p1_synthetic`` notebook 01, ``p1_real`` notebook 03 and ``p2_weighted`` notebook 05 (their caches built or
opened first, shared among the ranks), ``p2_toy`` notebook 04, ``p1_recipe`` notebook 06, ``p1_scale`` notebook 07
and ``p1_synthbench`` notebook 10. ``execute`` runs its units; afterwards the notebook at the same profile and
parameters reads the completed run (its ``results_from`` parameter). ``caching`` builds notebook 02's activation
caches, each cache's shards shared among the ranks (run it before a job array). Without torchrun or a job array
it is one process: the same code with world size 1.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

import yaml


def _override(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set {text!r}: use name=value, e.g. --set n_steps=40000")
    name, value = text.split("=", 1)
    return name.strip(), yaml.safe_load(value)


def _p1_synthetic(world, args, overrides: dict, out: Path):
    from isae.experiments.p1_synthetic import P1Synthetic
    from isae.experiments.profiles import HEADLINE_RECIPES, synthetic_profile

    recipes = HEADLINE_RECIPES[args.profile] if args.recipes is None else tuple(args.recipes)
    return P1Synthetic(synthetic_profile(args.profile, **overrides), recipes)


def _p1_real(world, args, overrides: dict, out: Path):
    from isae.experiments.caching import profile_caches
    from isae.experiments.p1_real import P1Real
    from isae.experiments.profiles import real_profile

    caches = profile_caches(world, args.profile, out, device=args.device, progress=not args.no_progress, **overrides)
    return P1Real(real_profile(args.profile, **overrides), caches)


def _p2_toy(world, args, overrides: dict, out: Path):
    from isae.experiments.p2_toy import P2Toy
    from isae.experiments.profiles import toy_profile

    return P2Toy(toy_profile(args.profile, **overrides))


def _p2_weighted(world, args, overrides: dict, out: Path):
    """Notebook 05's caches, scores and weights on every rank (the caches' shards shared). ``--set`` names
    weighted-profile fields, and ``consistency_tail``."""
    from isae.data.cache import partitioned_builds
    from isae.experiments import p2_weighted
    from isae.experiments.caching import profile_caches
    from isae.experiments.profiles import real_profile, weighted_profile

    tail = overrides.pop("consistency_tail", "positive")
    if tail not in p2_weighted.TAILS:
        raise SystemExit(f"--set consistency_tail={tail}: use one of {p2_weighted.TAILS}.")
    p, wp = real_profile(args.profile), weighted_profile(args.profile, **overrides)
    progress = not args.no_progress
    caches = profile_caches(world, args.profile, out, device=args.device, progress=progress, wp=wp)
    with partitioned_builds(world.rank, world.world_size, world.barrier):
        layers = p2_weighted.lm_layer_caches(out / "activations", wp, p, profile_caches=caches,
                                             device=str(world.device(args.device)), progress=progress)
    sources = p2_weighted.setting_sources(caches, layers)
    _, weights = p2_weighted.setting_weights(sources, wp, tail=tail)
    return p2_weighted.P2Weighted(sources, weights, wp, p, tail)


def _p1_recipe(world, args, overrides: dict, out: Path):
    """Notebook 06 at its parameters' defaults (the profile's ``ABLATION_GRIDS``); ``--set models=[...]``,
    ``--set bases=[...]``, ``--set elements=[...]`` (or ``all``), ``--set settings=[...]`` as its parameters."""
    from isae.experiments.p1_recipe import P1RecipeAblation
    from isae.experiments.profiles import ablation_grid, synthetic_profile

    grid = ablation_grid(args.profile, **{k: overrides.pop(k) for k in ("models", "bases", "elements", "settings")
                                          if k in overrides})
    return P1RecipeAblation(synthetic_profile(args.profile, settings=grid.settings, **overrides), grid.models,
                            grid.elements, grid.bases)


def _p1_scale(world, args, overrides: dict, out: Path):
    """Notebook 07 at its parameters' defaults (i.i.d. data, AbsTopK and iSAE-ME, the profile's points and recipes);
    ``--set points=[[N, steps], ...]``, ``--set recipes=[...]``, ``--set models=[...]`` as its parameters."""
    from isae.experiments.p1_scale import P1Scale, scale_points
    from isae.experiments.profiles import SCALE_POINTS, SCALE_RECIPES, synthetic_profile

    points = scale_points(overrides.pop("points", SCALE_POINTS[args.profile]))
    recipes = tuple(overrides.pop("recipes", SCALE_RECIPES[args.profile]))
    base = synthetic_profile(args.profile, **{"settings": ["iid"], "models": ["abstopk", "isae_me"], **overrides})
    return P1Scale(base, points, recipes)


def _p1_synthbench(world, args, overrides: dict, out: Path):
    """Notebook 10 at the profile's sizes (``--set models=[...]``, ``--set n_seeds=...`` as its parameters)."""
    from isae.experiments.p1_synthbench import P1SynthBench
    from isae.experiments.profiles import synthbench_profile

    return P1SynthBench(synthbench_profile(args.profile, **overrides))


#: Each experiment's name → how the launcher builds it (world, parsed arguments, --set overrides, output root).
EXPERIMENTS: dict[str, Callable] = {"p1_synthetic": _p1_synthetic, "p1_real": _p1_real, "p2_toy": _p2_toy,
                                    "p2_weighted": _p2_weighted, "p1_recipe": _p1_recipe, "p1_scale": _p1_scale,
                                    "p1_synthbench": _p1_synthbench}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m isae.experiments.launch", description=__doc__.split("\n\n")[0])
    p.add_argument("experiment", choices=[*EXPERIMENTS, "caching"])
    p.add_argument("--profile", default="default", help="smoke | default | paper (the notebooks' profile)")
    p.add_argument("--set", dest="overrides", type=_override, action="append", default=[], metavar="NAME=VALUE",
                   help="override a profile field, as a notebook parameter would (YAML value: --set n_steps=40000, "
                        "--set 'models=[topk, isae_me]'); repeatable")
    p.add_argument("--recipes", nargs="+", default=None,
                   help="p1_synthetic: training recipes, the headline's first (default: notebook 01's, "
                        "profiles.HEADLINE_RECIPES; e.g. authors+lr authors paper); p1_real takes the real-data "
                        "profile's recipe (--set recipe=...)")
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
    if args.experiment != "p1_synthetic" and args.recipes is not None:
        p.error("--recipes applies to p1_synthetic only.")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    import torch

    from isae.core.provenance import repo_root
    from isae.experiments.caching import profile_caches
    from isae.experiments.executor import close_world, execute, init_world
    from isae.experiments.profiles import check_profile

    check_profile(args.profile)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    overrides = dict(args.overrides)
    out = args.output_root or repo_root() / "outputs" / args.profile
    command = "python -m isae.experiments.launch " + shlex.join(argv if argv is not None else sys.argv[1:])
    world = init_world(args.timeout_hours)
    try:
        if args.experiment == "caching":
            profile_caches(world, args.profile, out, device=args.device, progress=not args.no_progress, **overrides)
        else:
            exp = EXPERIMENTS[args.experiment](world, args, overrides, out)
            execute(exp, out, world=world, device=args.device, progress=not args.no_progress, results_from=None,
                    command=command, profile=args.profile, launcher=command)
    finally:
        close_world(world)
    return 0


if __name__ == "__main__":
    sys.exit(main())
