"""Time SAELens's TopK or AbsTopK training step (``TopKTrainingSAE`` / ``AbsTopKTrainingSAE`` driven by
``SAETrainer.step``) on the CPU.

``benchmarks/bench_saelens.py`` calls it as a subprocess (SAELens is in the project's environment), alternating with
our own step; it can also be run on its own::

    .venv/bin/python benchmarks/saelens/time_saelens_step.py --steps 5 --warmup 2
    .venv/bin/python benchmarks/saelens/time_saelens_step.py --dead-frac 0.1 --out /tmp/saelens.json
    .venv/bin/python benchmarks/saelens/time_saelens_step.py --architecture abstopk --steps 5

One timed step is exactly what ``SAETrainer.fit`` does per batch through its public seam
``SAETrainer.step``: ``TopKTrainingSAE.training_forward_pass`` (encoder, TopK, decoder with the activations
rescaled by the decoder row norms, MSE, AuxK over the trainer's dead-latent mask), the trainer's firing
statistics, ``backward``, ``clip_grad_norm_(1.0)``, Adam, ``zero_grad`` and the (constant) LR scheduler.
SAELens does not renormalise the decoder after the step (``rescale_acts_by_decoder_norm`` divides by the
norms inside every forward instead), so there is no such step to time. ``--architecture abstopk``: the same step
with ``AbsTopKTrainingSAE`` (SAELens's AbsTopK: top k by |pre-activation|, signs kept; AuxK by magnitude), which
subclasses TopK's training SAE and always uses dense activations.

The inputs come from ``benchmarks/_common.make_inputs``, the function ``bench_training.py`` and
``bench_saelens.py`` use too (same seed, same torch version, hence the same numbers): unit-norm Gaussian rows
and the latents marked dead.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for _common (torch only, no isae)
from _common import add_size_args, check_size_args, inputs_fingerprint, make_inputs  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_size_args(p)
    p.add_argument("--architecture", choices=["topk", "abstopk"], default="topk",
                   help="SAELens's TopKTrainingSAE or AbsTopKTrainingSAE")
    p.add_argument("--dead-frac", type=float, default=0.0,
                   help="fraction of latents kept marked dead in the trainer, so AuxK runs (0: AuxK skipped)")
    p.add_argument("--sparse-activations", action="store_true",
                   help="TopKTrainingSAEConfig(use_sparse_activations=True): COO activations and torch.sparse.mm "
                        "in the decoder (default False: dense batch × d_sae activations and a dense decoder matmul); "
                        "turns rescale_acts_by_decoder_norm off, which fails in backward with sparse activations")
    p.add_argument("--lr", type=float, default=None,
                   help="Adam learning rate (default: ours, 2e-4 / sqrt(d_sae / 2^14))")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (None: torch's choice)")
    p.add_argument("--out", type=Path, default=None, help="optional JSON file for the result")
    args = p.parse_args(argv)
    check_size_args(p, args)
    if not 0 <= args.dead_frac < 1:
        p.error(f"--dead-frac must be in [0, 1), got {args.dead_frac}.")
    if args.architecture == "abstopk" and args.sparse_activations:
        p.error("--sparse-activations: SAELens's AbsTopK always uses dense activations; drop the flag.")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("WANDB_MODE", "disabled")  # never log anywhere; log_to_wandb=False below as well
    import warnings

    warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")
    import sae_lens
    from sae_lens import (
        AbsTopKTrainingSAE,
        AbsTopKTrainingSAEConfig,
        SAETrainer,
        TopKTrainingSAE,
        TopKTrainingSAEConfig,
    )
    from sae_lens.config import LoggingConfig, SAETrainerConfig

    N, K, B = args.d_in, args.d_sae, args.batch
    n_total = args.warmup + args.steps
    lr = args.lr if args.lr is not None else 2e-4 / math.sqrt(K / 2**14)
    batches, dead = make_inputs(N, K, B, n_total, args.dead_frac)
    n_dead = int(dead.sum())

    # SAELens's default recipe rescales the activations by the decoder row norms in every forward. With
    # use_sparse_activations=True that combination fails in backward here (sae-lens 6.54.12, torch 2.14.1, CPU:
    # "Could not run 'aten::view' with arguments from the 'SparseCPU' backend"), so the sparse variant turns the
    # rescaling off: it is then SAELens's sparse decoder with a free (never renormalised) decoder norm.
    sae_cls, cfg_cls = {"topk": (TopKTrainingSAE, TopKTrainingSAEConfig),
                        "abstopk": (AbsTopKTrainingSAE, AbsTopKTrainingSAEConfig)}[args.architecture]
    cfg = cfg_cls(d_in=N, d_sae=K, k=args.k, dtype="float32", device="cpu",
                  use_sparse_activations=args.sparse_activations,
                  rescale_acts_by_decoder_norm=not args.sparse_activations)
    torch.manual_seed(0)
    sae = sae_cls(cfg)
    # A dead-feature window longer than the run: no latent becomes dead by itself, so the trainer's mask is
    # exactly the one set below before every step (none with --dead-frac 0, AuxK then skipped as in ours).
    window = max(1000, n_total + 1)
    trainer_cfg = SAETrainerConfig(  # lr_end = lr / 10 is the runner's default (unused by the constant schedule)
        total_training_samples=B * n_total, train_batch_size_samples=B, lr=lr, lr_end=lr / 10, device="cpu",
        autocast=False, dead_feature_window=window, logger=LoggingConfig(log_to_wandb=False))
    trainer = SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=iter(()))
    sae.to("cpu")  # what SAETrainer.fit does first

    def mark_dead() -> None:
        # Keep the chosen latents dead in the trainer's own bookkeeping (a latent that fires is reset to 0).
        trainer.n_forward_passes_since_fired.masked_fill_(dead, window + 1)

    def step(x: torch.Tensor) -> torch.Tensor:
        mark_dead()
        out = trainer.step(x)  # forward + losses, firing stats, backward, clip, Adam, zero_grad, LR schedule
        trainer.n_training_steps += 1  # as fit() does after step()
        return out.loss.detach()

    for i in range(args.warmup):
        step(batches[i % len(batches)])
    mark_dead()
    if not torch.equal(trainer.dead_neurons, dead):
        raise RuntimeError("the trainer's dead-latent mask is not the intended one")
    t0 = time.perf_counter()
    for i in range(args.steps):
        loss = step(batches[(args.warmup + i) % len(batches)])
    seconds = time.perf_counter() - t0
    loss = float(loss)
    if not math.isfinite(loss):
        raise RuntimeError(f"SAELens {args.architecture}: the loss became {loss}; the timing is of a broken step.")

    tok_s = B * args.steps / seconds
    variant = "sparse" if args.sparse_activations else "dense"
    result = {
        "side": "saelens", "architecture": args.architecture, "variant": variant,
        "sae_lens": sae_lens.__version__, "torch": torch.__version__,
        "threads": torch.get_num_threads(), "d_in": N, "d_sae": K, "k": args.k, "batch": B,
        "steps": args.steps, "warmup": args.warmup, "dead_frac": n_dead / K, "n_dead": n_dead,
        "seconds": seconds, "tok_s": tok_s, "ms_step": 1e3 * seconds / args.steps, "loss": loss,
        "aux_k": min(N // 2, n_dead) if n_dead else 0,
        "rescale_acts_by_decoder_norm": cfg.rescale_acts_by_decoder_norm,
        "aux_loss_coefficient": cfg.aux_loss_coefficient, "lr": lr,
        "inputs_fingerprint": inputs_fingerprint(batches, dead),
    }
    print(f"SAELens {sae_lens.__version__} {type(sae).__name__} ({variant} activations, rescale_acts_by_decoder_norm="
          f"{cfg.rescale_acts_by_decoder_norm}), torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}: {args.steps} steps in {seconds:.2f} s → {tok_s:,.0f} tokens/s "
          f"({1e3 * seconds / args.steps:.1f} ms/step), {n_dead}/{K} latents dead, last loss {loss:.4f}",
          flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=1) + "\n")
        tmp.replace(args.out)
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
