"""Experiment drivers: train models × seeds on one stream, evaluate every seed pair, tabulate mean ± sd.

Notebooks call these; they hold no logic of their own beyond parameters, narrative and plots.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from isae.eval import metrics
from isae.data.synthetic import SyntheticConfig, SyntheticStream
from isae.core.io import save_sae
from isae.core.models import ARCHITECTURES, SAE, SAEConfig
from isae.experiments.profiles import SyntheticProfile
from isae.train.trainer import Stream, TrainConfig, initialise_decoder_bias, train_many

#: Metrics of one SAE (mean ± sd over seeds) and of a pair of SAEs (mean ± sd over seed pairs).
RUN_METRICS = ("mse", "r_s", "l0", "dead_frac", "gt_dcs", "gt_recovered")
PAIR_METRICS = ("sae_iou", "sae_l2", "oracle_iou", "oracle_l2", "dcs", "pw_mcc")
TABLE_METRICS = ("mse", "r_s", "sae_iou", "sae_l2", "oracle_iou", "oracle_l2", "dcs")
UNTRAINED_SEED_OFFSET = 1_000  # random-init baseline SAEs use seeds 1000, 1001 (never a trained seed)


@dataclass
class ExperimentResult:
    """Everything one setting produced: per-run and per-pair metrics, the training log and the SAEs."""

    runs: pd.DataFrame
    pairs: pd.DataFrame
    log: pd.DataFrame
    saes: dict[str, SAE]
    x_eval: torch.Tensor
    """The held-out inputs the metrics were computed on."""


def run_name(architecture: str, seed: int) -> str:
    return f"{architecture}/seed{seed}"


def evaluate(saes: dict[str, SAE], x: torch.Tensor, true_atoms: torch.Tensor | None = None,
             oracle: bool = True, progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-SAE metrics and metrics of every same-architecture pair of ``saes`` (named "arch/seedN")."""
    runs = []
    for name, sae in saes.items():
        row = {"run": name, "model": sae.cfg.display_name, **metrics.single_metrics(sae, x)}
        if true_atoms is not None:
            row |= metrics.ground_truth_recovery(sae, true_atoms)
        runs.append(row)
    groups: dict[str, list[str]] = {}
    for name in saes:
        groups.setdefault(name.split("/")[0], []).append(name)
    pairs, codes = [], {}
    todo = [(a, b) for names in groups.values() for a, b in itertools.combinations(names, 2)]
    for a, b in tqdm(todo, desc="comparing seed pairs", disable=not progress):
        row = metrics.pair_metrics(saes[a], saes[b], x, oracle=oracle, codes=codes)
        pairs.append({"pair": f"{a} vs {b}", "model": saes[a].cfg.display_name, **row})
    return pd.DataFrame(runs), pd.DataFrame(pairs)


def untrained_pair(cfg: SAEConfig, stream: Stream, n_median_samples: int, device) -> dict[str, SAE]:
    """Two random-init SAEs (b_dec at the data's geometric median, as at step 0 of training)."""
    saes = {run_name(cfg.architecture, UNTRAINED_SEED_OFFSET + s): SAE(cfg, seed=UNTRAINED_SEED_OFFSET + s).to(device)
            for s in range(2)}
    initialise_decoder_bias(saes.values(), stream, n_median_samples)
    return saes


def train_and_evaluate(setting: str, stream: Stream, x_eval: torch.Tensor, sae_cfgs: dict[str, SAEConfig],
                       train_cfg: TrainConfig, n_seeds: int, out_dir: str | Path | None = None,
                       true_atoms: torch.Tensor | None = None, progress: bool = True,
                       **provenance_params) -> ExperimentResult:
    """Train ``sae_cfgs`` × ``n_seeds`` SAEs on one stream, then evaluate them and a random-init pair on x_eval.

    With ``out_dir``: checkpoints under ``out_dir/checkpoints/<setting>`` (a re-run resumes), SAEs saved
    under ``out_dir/saes/<setting>_<arch>_seed<N>`` in SAELens's layout.
    """
    dev = train_cfg.resolved_device()
    saes = {run_name(a, s): SAE(cfg, seed=s) for a, cfg in sae_cfgs.items() for s in range(n_seeds)}
    out_dir = Path(out_dir) if out_dir is not None else None
    log = train_many(saes, stream, train_cfg, checkpoint_dir=out_dir / "checkpoints" / setting if out_dir else None,
                     progress=progress)
    log.insert(0, "setting", setting)

    x_eval = x_eval.to(dev)
    runs, pairs = evaluate(saes, x_eval, true_atoms=true_atoms, progress=progress)
    baseline = {}
    for cfg in sae_cfgs.values():
        baseline |= untrained_pair(cfg, stream, train_cfg.geometric_median_samples, dev)
    base_runs, base_pairs = evaluate(baseline, x_eval, true_atoms=true_atoms, progress=False)
    for df in (base_runs, base_pairs):
        df["model"] = df["model"] + " (untrained)"
    runs = pd.concat([runs, base_runs], ignore_index=True)
    pairs = pd.concat([pairs, base_pairs], ignore_index=True)
    for df in (runs, pairs):
        df.insert(0, "setting", setting)

    if out_dir is not None:
        for name, sae in saes.items():
            arch, seed = name.split("/")
            save_sae(sae, out_dir / "saes" / f"{setting}_{arch}_{seed}", setting=setting, seed=sae.seed,
                     train=train_cfg.__dict__, **provenance_params)
    return ExperimentResult(runs=runs, pairs=pairs, log=log, saes=saes, x_eval=x_eval)


def run_synthetic_setting(setting: str, p: SyntheticProfile, out_dir: str | Path | None = None,
                          device: str | None = None, progress: bool = True, **provenance_params) -> ExperimentResult:
    """P1's synthetic experiment for one setting ("iid" or "mixture") at the sizes of ``p``."""
    data_cfg = SyntheticConfig(d_in=p.d_in, n_atoms=p.n_atoms, k=p.k, kind=setting,
                               n_components=p.n_components, spread=p.spread, seed=p.data_seed)
    train_cfg = TrainConfig(n_steps=p.n_steps, batch_size=p.batch_size, lr=p.lr, log_every=p.log_every,
                            checkpoint_every=p.checkpoint_every, device=device)
    stream = SyntheticStream(data_cfg, p.batch_size, seed=p.data_seed, device=train_cfg.resolved_device())
    sae_cfgs = {a: SAEConfig(d_in=p.d_in, d_sae=p.d_sae, k=p.k, architecture=a) for a in p.models}
    x_eval, _ = stream.held_out(p.n_eval)
    return train_and_evaluate(setting, stream, x_eval, sae_cfgs, train_cfg, p.n_seeds, out_dir=out_dir,
                              true_atoms=stream.dictionary, progress=progress, data=data_cfg.to_dict(),
                              **provenance_params)


def summarise(runs: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
    """One row per (setting, model): mean and sd (``<metric>_sd``) over seeds / seed pairs, n_seeds, n_pairs.

    Columns follow P1's tables (``TABLE_METRICS``) first, then the extra metrics this project reports.
    """
    keys = ["setting", "model"]
    run_cols = [c for c in RUN_METRICS if c in runs]
    pair_cols = [c for c in PAIR_METRICS if c in pairs]
    r = runs.groupby(keys, sort=False)[run_cols].agg(["mean", "std"])
    q = pairs.groupby(keys, sort=False)[pair_cols].agg(["mean", "std"])
    table = r.join(q, how="outer")
    table.columns = [m if stat == "mean" else f"{m}_sd" for m, stat in table.columns]
    table["n_seeds"] = runs.groupby(keys, sort=False).size()
    table["n_pairs"] = pairs.groupby(keys, sort=False).size()
    table = table.reset_index()
    order = {name: i for i, name in enumerate(ARCHITECTURES.values())}
    table["_order"] = table["model"].map(lambda m: (m.endswith("(untrained)"), order.get(m.split(" (")[0], 99)))
    table = table.sort_values(["setting", "_order"], kind="stable").drop(columns="_order")
    first = keys + [c for m in TABLE_METRICS for c in (m, f"{m}_sd")] + ["n_seeds", "n_pairs"]
    return table[[c for c in first if c in table] + [c for c in table if c not in first]].reset_index(drop=True)
