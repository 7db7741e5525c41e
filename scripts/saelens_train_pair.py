"""Train SAEs with SAELens itself (its ``SAETrainer``) on an activation cache of this project, several seeds, and
save them with SAELens's own export (``save_inference_model``): SAELens-written SAEs for ``python -m isae.compare``.

Reads the cache's ``.npy`` shards with numpy only::

    .venv/bin/python scripts/saelens_train_pair.py --cache outputs/smoke/activations/lm_train \\
        --out outputs/saelens_pair --architecture topk --seeds 0 1
    .venv/bin/python -m isae.compare outputs/saelens_pair/topk_seed0 outputs/saelens_pair/topk_seed1 \\
        --activations outputs/smoke/activations/lm_heldout --oracle --out outputs/compare/saelens_topk

SAELens's recipe as its runner sets it up: ``normalize_activations="expected_average_only_in"`` (the scaling factor
is estimated from the data and folded into the weights at the end of ``fit``, so the saved SAE takes raw
activations), TopK's ``rescale_acts_by_decoder_norm`` default, Adam at a constant learning rate, AuxK over latents
dead for ``--dead-window`` steps. Batches: rows of the cache shuffled by a seeded generator (the SAE seed), so the
seeds differ in both initialisation and data order, as separate SAELens runs do.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch


def cache_rows(directory: Path) -> np.ndarray:
    """Every row of an ``isae.data.cache`` folder (its manifest's shards, in order), float32."""
    manifest = json.loads((directory / "manifest.json").read_text())
    if not manifest.get("complete"):
        raise SystemExit(f"error: the cache at {directory} is incomplete; build it with notebook 02 first.")
    return np.concatenate([np.load(directory / s["file"]) for s in manifest["shards"]]).astype(np.float32)


def batches(x: torch.Tensor, batch: int, seed: int):
    """Endless seeded shuffled batches of the rows of x (a new permutation each pass)."""
    g = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(len(x), generator=g)
        for s in range(0, len(x) - batch + 1, batch):
            yield x[perm[s : s + batch]]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--cache", type=Path, required=True, help="an activation cache folder (manifest.json + shards)")
    p.add_argument("--out", type=Path, required=True, help="where <architecture>_seed<N>/ folders are written")
    p.add_argument("--architecture", choices=["topk", "abstopk"], default="topk")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--d-sae", type=int, default=1024)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--lr", type=float, default=3e-4, help="SAELens's default")
    p.add_argument("--dead-window", type=int, default=200, help="steps without firing before a latent counts as dead")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    os.environ.setdefault("WANDB_MODE", "disabled")
    import warnings

    warnings.filterwarnings("ignore")
    import sae_lens
    from sae_lens import (
        AbsTopKTrainingSAE,
        AbsTopKTrainingSAEConfig,
        SAETrainer,
        TopKTrainingSAE,
        TopKTrainingSAEConfig,
    )
    from sae_lens.config import LoggingConfig, SAETrainerConfig

    x = torch.from_numpy(cache_rows(args.cache))
    classes = {"topk": (TopKTrainingSAE, TopKTrainingSAEConfig),
               "abstopk": (AbsTopKTrainingSAE, AbsTopKTrainingSAEConfig)}
    sae_cls, cfg_cls = classes[args.architecture]
    print(f"sae_lens {sae_lens.__version__}: {args.architecture}, {len(x)} rows of d_in={x.shape[1]} from "
          f"{args.cache}, d_sae={args.d_sae}, k={args.k}, {args.steps} steps of {args.batch}", flush=True)
    for seed in args.seeds:
        t0 = time.perf_counter()
        torch.manual_seed(seed)
        cfg = cfg_cls(d_in=x.shape[1], d_sae=args.d_sae, k=args.k, dtype="float32", device="cpu",
                      normalize_activations="expected_average_only_in")
        sae = sae_cls(cfg)
        trainer_cfg = SAETrainerConfig(total_training_samples=args.batch * args.steps,
                                       train_batch_size_samples=args.batch, lr=args.lr, lr_end=args.lr / 10,
                                       device="cpu", autocast=False,
                                       dead_feature_window=args.dead_window, n_batches_for_norm_estimate=20,
                                       logger=LoggingConfig(log_to_wandb=False))
        trainer = SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=batches(x, args.batch, seed))
        trained = trainer.fit()
        folder = args.out / f"{args.architecture}_seed{seed}"
        trained.save_inference_model(folder)
        with torch.no_grad():
            xs = x[:1024]
            fvu = float((trained(xs) - xs).pow(2).sum() / (xs - xs.mean(0)).pow(2).sum())
        print(f"seed {seed}: {time.perf_counter() - t0:.0f} s, FVU on the first 1024 rows {fvu:.3f}, "
              f"L0 {trained.cfg.metadata.l0:.1f}, dead {trained.cfg.metadata.num_dead_features} → {folder}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
