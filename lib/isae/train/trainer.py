"""Train several SAEs (models × seeds) from ONE data stream, in identical order, with Gao et al.'s recipe.

Shared by every model: unit-norm inputs (the stream's job); b_dec initialised to the geometric median of a data
sample; tied encoder init and random unit atoms (``SAE.__init__``); Adam; atoms renormalised after every step;
AuxK against latents that have not fired for ``dead_after_tokens`` tokens. ``TrainConfig`` holds the options in
which P1's two recipes differ (``isae.train.recipe``): radial-gradient removal, learning-rate warm-up and decay,
gradient clipping, bf16 ranking, the loss scale.

A checkpoint (models, optimisers, dead counters, noise generators, logs) is written atomically every
``checkpoint_every`` steps; ``train_many`` resumes from it and ends identical to an uninterrupted run. It is signed
with the configs and the code that trains (``isae.core.provenance.TRAINING_CODE``, file by file): one written by
other code is refused, not reused nor silently retrained over.

``train_bank`` trains a *bank* (many independent models in one module that supplies its own per-model losses,
e.g. P2's tied toy SAEs) with Adam and a constant-then-linearly-decaying learning rate. Both run on the same
loop core: batch ``step`` of one ``Stream`` at step ``step``, and one optimiser-step routine.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import pandas as pd
import torch
import torch.nn as nn

from isae.core.models import K_SPARSE, SAE
from isae.core.provenance import EVALUATION_CODE, TRAINING_CODE, atomic_torch_save, code_difference, code_fingerprint
from isae.core.runs import RunKey, resolve_device
from isae.core.seeding import derive_seed
from isae.progress import progress_bar


class Stream(Protocol):
    """One seeded data stream: ``batch(step)`` is a pure function of (seed, step), so every model trained from
    it sees the same inputs in the same order, and a resumed run sees what an uninterrupted one would."""

    d_in: int
    steps_per_pass: int | None
    """Batches in one pass over a finite source; None for an unbounded one (fresh draws every step)."""

    def batch(self, step: int) -> torch.Tensor: ...

    def identity(self) -> dict:
        """What determines the batches (a checkpoint records it and refuses another stream)."""
        ...


LOSS_NORMALISERS = ("none", "first_batch_variance")


class TrainingDiverged(RuntimeError):
    """Raised when a loss becomes non-finite; the last good checkpoint on disk is kept."""


@dataclass
class TrainConfig:
    """Optimisation settings shared by every model trained together."""

    n_steps: int
    """Optimiser steps (each sees one fresh batch: fully online, no input seen twice)."""
    batch_size: int = 2048
    lr: float | None = None
    """Adam learning rate; None → 2e-4 / sqrt(d_sae / 2^14), sparsify's scaling (our choice)."""
    dead_after_tokens: int | None = None
    """AuxK dead window; None → min(10M, run tokens / 10): Gao et al.'s 10M scaled to short runs (our choice)."""
    geometric_median_samples: int = 8192
    """Inputs used to initialise b_dec by Weiszfeld iterations."""
    log_every: int = 50
    checkpoint_every: int = 1000
    device: str | None = None
    """"cuda" when available, else "cpu" (None picks)."""
    bf16_selection: bool = False
    """k-sparse models: rank latents with a bfloat16 encoder product, code values still float32 (our option;
    faster, approximate only at near-ties; see ``SAE._encoder_selection``). Off: everything in float32."""
    warmup_steps: int = 0
    """Linear learning-rate warm-up over the first steps (0: none)."""
    decay_frac: float = 0.0
    """Linear learning-rate decay over this last fraction of the steps (0: a constant learning rate)."""
    grad_clip: float | None = None
    """Clip each model's global gradient norm (all its parameters) to this value before the step (None: never)."""
    remove_radial_grad: bool = True
    """Remove the gradient component parallel to each atom before the step (Gao et al.); the atoms are
    renormalised after every step either way."""
    loss_normaliser: str = "none"
    """"none": the reconstruction term is mean_x ‖x − x̂‖². "first_batch_variance": it is divided by N times the
    per-element variance of the first training batch, i.e. per-element MSE / variance (≈ the fraction of
    variance unexplained), the other terms unchanged."""

    def __post_init__(self) -> None:
        if self.n_steps <= 0:
            raise ValueError(f"n_steps={self.n_steps} must be positive.")
        if self.batch_size <= 0:
            raise ValueError(f"batch_size={self.batch_size} must be positive.")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr={self.lr} must be positive (or None for the default scaling).")
        if self.log_every <= 0 or self.checkpoint_every <= 0:
            raise ValueError("log_every and checkpoint_every must be positive.")
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps={self.warmup_steps!r} must be an integer ≥ 0.")
        if not 0.0 <= self.decay_frac <= 1.0:
            raise ValueError(f"decay_frac={self.decay_frac} must lie in [0, 1].")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip={self.grad_clip} must be positive (or None for no clipping).")
        if self.loss_normaliser not in LOSS_NORMALISERS:
            raise ValueError(f"loss_normaliser={self.loss_normaliser!r}; use one of {LOSS_NORMALISERS}.")

    def learning_rate(self, d_sae: int) -> float:
        """The base (peak) learning rate."""
        return self.lr if self.lr is not None else 2e-4 / math.sqrt(d_sae / 2**14)

    def lr_factor(self, step: int) -> float:
        """The learning rate of 0-based ``step`` as a fraction of the base rate: (step + 1) / warmup_steps during
        the warm-up, 1 after it, and (n_steps − step) / (n_steps − start) from start = int(n_steps · (1 −
        decay_frac)) on, so the last step runs at 1 / (n_steps − start) of the base rate, not 0."""
        start = int(self.n_steps * (1.0 - self.decay_frac))
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.decay_frac > 0 and step >= start:
            return (self.n_steps - step) / (self.n_steps - start)
        return 1.0

    def dead_window(self) -> int:
        if self.dead_after_tokens is not None:
            return self.dead_after_tokens
        return max(self.batch_size, min(10_000_000, self.n_steps * self.batch_size // 10))

    def resolved_device(self) -> torch.device:
        return resolve_device(self.device)


@torch.no_grad()
def geometric_median(x: torch.Tensor, n_iter: int = 200, tol: float = 1e-7) -> torch.Tensor:
    """Weiszfeld iterations for argmin_m Σ_i ‖x_i − m‖, started at the mean."""
    m = x.mean(0)
    for _ in range(n_iter):
        w = 1.0 / (x - m).norm(dim=1).clamp_min(1e-8)
        m_new = (w[:, None] * x).sum(0) / w.sum()
        if (m_new - m).norm() <= tol * m.norm().clamp_min(1e-8):
            return m_new
        m = m_new
    return m


@torch.no_grad()
def stream_median(stream: Stream, n_samples: int) -> torch.Tensor:
    """The geometric median of the stream's first ``n_samples`` inputs (a finite stream, one with
    ``steps_per_pass``, shorter than that contributes all of its batches)."""
    batches, n = [], 0
    step = 0
    last = stream.steps_per_pass
    while n < n_samples and (last is None or step < last):
        batches.append(stream.batch(step))
        n += batches[-1].shape[0]
        step += 1
    return geometric_median(torch.cat(batches)[:n_samples])


@torch.no_grad()
def initialise_decoder_bias(saes: Iterable[SAE], stream: Stream, n_samples: int) -> None:
    """Set every SAE's b_dec to ``stream_median(stream, n_samples)``."""
    median = stream_median(stream, n_samples)
    for sae in saes:
        sae.b_dec.copy_(median.to(sae.b_dec.device))


@torch.no_grad()
def set_mse_scale(saes: Iterable[SAE], first_batch: torch.Tensor) -> None:
    """Make every SAE's reconstruction term per-element MSE / the first batch's per-element variance, the mean
    over features of each feature's (biased) variance in the batch."""
    variance = (first_batch - first_batch.mean(0)).float().pow(2).mean()
    for sae in saes:
        sae.mse_scale.fill_(1.0 / (first_batch.shape[1] * variance.item()))


def make_optimizer(sae: SAE, lr: float) -> torch.optim.Adam:
    """Adam over the SAE's trainable parameters, in torch's fused implementation."""
    return torch.optim.Adam([p for p in sae.parameters() if p.requires_grad], lr=lr, fused=True)


def _fired(out, d_sae: int) -> torch.Tensor:
    """Bool [d_sae]: latents that were non-zero for at least one input of the batch."""
    if out.idx is not None:
        fired = torch.zeros(d_sae, dtype=torch.bool, device=out.idx.device)
        return fired.index_fill(0, out.idx[out.vals.detach() != 0], True)
    return (out.z.detach() != 0).any(0)


# ------------------------------------------------------------------------------------------------------
# The loop core shared by ``train_many`` (SAEs) and ``train_bank`` (banks of toy models)
# ------------------------------------------------------------------------------------------------------
class _Steps:
    """Steps [start, n_steps) with their batches: ``for step, x in loop`` gives batch ``step`` of the stream (moved
    to ``device`` unless None), with a progress bar (``loop.bar``)."""

    def __init__(self, stream: Stream, start: int, n_steps: int, device: torch.device | None, progress: bool,
                 desc: str):
        self.stream, self.device = stream, device
        self.bar = progress_bar(range(start, n_steps), initial=start, total=n_steps, disable=not progress, desc=desc,
                        unit="step")

    def __iter__(self):
        for step in self.bar:
            x = self.stream.batch(step)
            yield step, (x.to(self.device) if self.device is not None else x)


def _optimiser_step(loss: torch.Tensor, opt: torch.optim.Optimizer, name: str, step: int,
                    before: Callable[[], None] | None = None, after: Callable[[], None] | None = None,
                    where: str = "no checkpoint was kept") -> None:
    """One update from ``loss``: refuse a non-finite loss, zero the gradients, backward, ``before`` (e.g. remove
    the radial gradient), the optimiser's step, ``after`` (e.g. renormalise the atoms)."""
    if not torch.isfinite(loss):
        raise TrainingDiverged(f"{name}: loss became {loss.item()} at step {step}; {where}. "
                               "Lower the learning rate or check the inputs.")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if before is not None:
        before()
    opt.step()
    if after is not None:
        after()


def _before_step(sae: SAE, cfg: TrainConfig) -> Callable[[], None]:
    """What runs between backward and the optimiser step: the radial-gradient removal and the clipping."""
    def before() -> None:
        if cfg.remove_radial_grad:
            sae.remove_radial_grad()
        if cfg.grad_clip is not None:
            nn.utils.clip_grad_norm_([p for p in sae.parameters() if p.requires_grad], cfg.grad_clip)
    return before


def _check_inputs(saes: dict[str | RunKey, SAE], stream: Stream, cfg: TrainConfig) -> None:
    if not saes:
        raise ValueError("saes is empty: pass at least one model to train.")
    for name, sae in saes.items():
        if sae.cfg.d_in != stream.d_in:
            raise ValueError(f"SAE {name!r} has d_in={sae.cfg.d_in} but the stream yields d_in={stream.d_in}.")


@dataclass
class Probe:
    """Metrics evaluated at chosen steps of a training run (e.g. convergence curves).

    ``fn(step, saes)`` gets the models by name after ``step`` optimiser steps (0: at initialisation, b_dec set)
    and returns rows; they collect in ``rows`` and travel in the checkpoint, so a resumed run has the whole curve.
    ``fn`` must not draw from global random state (training would then depend on it)."""

    steps: tuple[int, ...]
    fn: Callable[[int, dict], list[dict]]
    rows: list[dict] = field(default_factory=list)


def _check_signature(theirs: dict, ours: dict, ckpt_path: Path) -> None:
    """Refuse a checkpoint of another experiment (naming the signature's parts that differ) or of other code (naming
    the files): resuming it would not give what this code and these configs train."""
    parts = {"train": "train (TrainConfig)", "models": "models (configs, seeds or loss weights)",
             "stream": "stream (the data stream)", "probe_steps": "probe_steps"}
    differ = [parts.get(k, k) for k in sorted(theirs.keys() | ours.keys())
              if k != "code" and theirs.get(k) != ours.get(k)]
    if differ:
        raise ValueError(f"{ckpt_path} was written by a different experiment (differs in {', '.join(differ)}); "
                         "delete it or use another checkpoint_dir.")
    if theirs.get("code") != ours["code"]:
        raise ValueError(f"{ckpt_path} was written by other code ({code_difference(theirs.get('code'), ours['code'])})"
                         f": its SAEs would not be what this code trains; delete {ckpt_path.parent} (or `make clean`) "
                         "or pass another output_root/checkpoint_dir.")


def train_many(
    saes: dict[str | RunKey, SAE],
    stream: Stream,
    cfg: TrainConfig,
    checkpoint_dir: str | Path | None = None,
    progress: bool = True,
    probe: Probe | None = None,
) -> pd.DataFrame:
    """Train every SAE in ``saes`` on the same batches, in the same order. Returns the training log.

    ``saes`` is keyed by name or ``RunKey``; the log has one row per (model, logged step), ``model`` being
    ``str(key)``: loss, mse, l0 and dead fraction. With
    ``checkpoint_dir`` the run resumes from ``checkpoint.pt`` there when present (the checkpoint must come
    from the same models, seeds, stream and settings and from the same training code, else a ValueError says what
    differs). ``probe`` evaluates the models at its steps during training (its ``rows``, kept in the checkpoint:
    then the metrics code is part of the checkpoint's code too, ``EVALUATION_CODE``).
    """
    _check_inputs(saes, stream, cfg)
    device = cfg.resolved_device()
    window = cfg.dead_window()
    for sae in saes.values():
        sae.to(device)
    opts = {n: make_optimizer(s, cfg.learning_rate(s.cfg.d_sae)) for n, s in saes.items()}
    # Each model's aRIP noise depends only on its name and seed, not on which models it is trained beside.
    gens = {n: torch.Generator(device).manual_seed(derive_seed(f"arip-noise:{n}", s.seed)) for n, s in saes.items()}
    since_fired = {n: torch.zeros(s.cfg.d_sae, dtype=torch.long, device=device) for n, s in saes.items()}
    log: list[dict] = []
    start = 0

    ckpt_path = Path(checkpoint_dir) / "checkpoint.pt" if checkpoint_dir is not None else None
    signature = {"train": asdict(cfg),
                 "models": {n: (s.cfg.to_dict(), s.seed, s.loss_weight.cpu().tolist()) for n, s in saes.items()},
                 "stream": stream.identity()}
    if probe is not None:
        signature["probe_steps"] = sorted(probe.steps)
    signature["code"] = code_fingerprint(EVALUATION_CODE if probe is not None else TRAINING_CODE)
    if ckpt_path is not None and ckpt_path.exists():
        state = torch.load(ckpt_path, map_location=device, weights_only=False)
        _check_signature(state["signature"], signature, ckpt_path)
        start, log = state["step"], state["log"]
        for n in saes:
            saes[n].load_state_dict(state["models"][n])
            opts[n].load_state_dict(state["opts"][n])
            gens[n].set_state(state["gens"][n].cpu())
            since_fired[n] = state["since_fired"][n].to(device)
        if probe is not None:
            probe.rows[:] = state["probe_rows"]
    else:
        initialise_decoder_bias(saes.values(), stream, cfg.geometric_median_samples)
        if cfg.loss_normaliser == "first_batch_variance":
            set_mse_scale(saes.values(), stream.batch(0))
        if probe is not None:
            probe.rows.clear()
            if 0 in probe.steps:
                probe.rows += probe.fn(0, saes)

    def save_checkpoint(step: int) -> None:
        if ckpt_path is None:
            return
        atomic_torch_save({
            "signature": signature, "step": step, "log": log,
            "models": {n: s.state_dict() for n, s in saes.items()},
            "opts": {n: o.state_dict() for n, o in opts.items()},
            "gens": {n: g.get_state() for n, g in gens.items()},
            "since_fired": since_fired, "probe_rows": probe.rows if probe is not None else None,
        }, ckpt_path)

    where = f"the last good checkpoint is kept at {ckpt_path}" if ckpt_path else "no checkpoint was kept"
    loop = _Steps(stream, start, cfg.n_steps, device, progress, f"training {len(saes)} SAEs")
    base_lr = {n: cfg.learning_rate(s.cfg.d_sae) for n, s in saes.items()}
    for step, x in loop:
        factor = cfg.lr_factor(step)
        for name, sae in saes.items():
            for group in opts[name].param_groups:
                group["lr"] = base_lr[name] * factor
            dead = since_fired[name] >= window
            k_sparse = sae.cfg.architecture in K_SPARSE
            out = sae(x, dead_mask=dead if k_sparse else None, generator=gens[name],
                      bf16_selection=cfg.bf16_selection and k_sparse)
            loss = out.losses["total"]
            _optimiser_step(loss, opts[name], str(name), step, before=_before_step(sae, cfg),
                            after=sae.normalize_atoms, where=where)
            fired = _fired(out, sae.cfg.d_sae)
            since_fired[name] += x.shape[0]
            since_fired[name][fired] = 0
            if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.n_steps:
                l0 = (out.vals != 0).sum(1) if out.idx is not None else (out.z != 0).sum(1)
                log.append({"model": str(name), "step": step + 1, "loss": loss.item(),
                            "mse": out.losses["mse"].item(), "l0": l0.float().mean().item(),
                            "dead_frac": (since_fired[name] >= window).float().mean().item()})
        if log and (step + 1) % cfg.log_every == 0:
            loop.bar.set_postfix(mse=f"{sum(r['mse'] for r in log[-len(saes):]) / len(saes):.3f}")
        if probe is not None and step + 1 in probe.steps:
            probe.rows += probe.fn(step + 1, saes)
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.n_steps:
            save_checkpoint(step + 1)
    return pd.DataFrame(log)


# ------------------------------------------------------------------------------------------------------
# Banks: many independent models in one module that supplies its own loss (e.g. the tied toy SAEs)
# ------------------------------------------------------------------------------------------------------
class Bank(Protocol):
    """Independent models stored as one module: ``losses(x)`` gives per-model losses [n_models] ("total" is
    optimised; "mse" is logged), so the sum's gradient is every model's own."""

    n_models: int

    def losses(self, x: torch.Tensor) -> dict[str, torch.Tensor]: ...


@dataclass(frozen=True)
class BankTrainConfig:
    """Optimisation of a bank: Adam on its trainable parameters, a fresh batch every step (the stream's batch
    size), the learning rate constant and then decayed linearly to 0 over the last ``decay_frac`` of the steps
    (our choices)."""

    n_steps: int = 4000
    lr: float = 5e-3
    decay_frac: float = 0.2
    log_every: int = 100

    def __post_init__(self) -> None:
        if self.n_steps <= 0 or not self.lr > 0 or self.log_every <= 0:
            raise ValueError("n_steps, lr and log_every must be positive.")
        if not 0.0 <= self.decay_frac <= 1.0:
            raise ValueError(f"decay_frac={self.decay_frac} must lie in [0, 1].")

    def lr_at(self, step: int) -> float:
        """Learning rate of (0-based) ``step``."""
        start = self.n_steps * (1.0 - self.decay_frac)
        if step < start:
            return self.lr
        return self.lr * (self.n_steps - step) / max(self.n_steps - start, 1.0)


def train_bank(bank: nn.Module, stream: Stream, cfg: BankTrainConfig, progress: bool = True) -> pd.DataFrame:
    """Train every model of ``bank`` on ``stream`` (batch ``step`` at step ``step``). Returns the log: one row per
    (model index, logged step) with the model's loss and mse."""
    opt = torch.optim.Adam([p for p in bank.parameters() if p.requires_grad], lr=cfg.lr)
    log = []
    for step, x in _Steps(stream, 0, cfg.n_steps, None, progress, f"training a bank of {bank.n_models} models"):
        for group in opt.param_groups:
            group["lr"] = cfg.lr_at(step)
        losses = bank.losses(x)
        _optimiser_step(losses["total"].sum(), opt, type(bank).__name__, step)
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.n_steps:
            for i in range(bank.n_models):
                log.append({"model": i, "step": step + 1, "loss": losses["total"][i].item(),
                            "mse": losses["mse"][i].item()})
    return pd.DataFrame(log)
