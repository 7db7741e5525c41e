"""The generic identifiability pipeline: train many models × seeds on one stream, evaluate every SAE, every seed pair
and the random-init floor, and summarise mean ± sd. Every P1 experiment (notebooks 01, 03, 06, 07) and the
``isae.compare`` report are built from it; so can a user's own (the README's quickstart).

Models are keyed by ``isae.core.runs.RunKey``; every per-run and per-pair table carries the key's fields as
columns (``variant``, ``seed`` or ``seed_a``/``seed_b``, ``trained``) beside the human-readable labels
``run``, ``pair`` and ``model``, which are rendered from the key here and nowhere else.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from isae.core.io import load_sae, save_sae
from isae.core.models import ARCHITECTURES, SAE, SAEConfig
from isae.core.runs import RunKey
from isae.eval import metrics
from isae.progress import progress_bar
from isae.report.summary import mean_sd
from isae.train.trainer import Probe, Stream, TrainConfig, stream_median, train_many

#: Metrics of one SAE (mean ± sd over seeds) and of a pair of SAEs (mean ± sd over seed pairs).
RUN_METRICS = ("mse", "mse_fvu", "r_s", "l0", "dead_frac", "gt_dcs", "gt_recovered")
PAIR_METRICS = ("sae_iou", "sae_l2", "sae_l2_authors", "oracle_iou", "oracle_l2", "oracle_l2_authors", "dcs", "pw_mcc")
TABLE_METRICS = ("mse", "r_s", "sae_iou", "sae_l2", "oracle_iou", "oracle_l2", "dcs")
#: Where P1's text and the authors' code read a table column differently: the column → the authors' reading
#: (``isae.eval.metrics.single_metrics`` and ``code_l2_resampled``). IoU, DCS and R_S read the same.
AUTHORS_READINGS = {"mse": "mse_fvu", "sae_l2": "sae_l2_authors", "oracle_l2": "oracle_l2_authors"}
PROTOCOLS = ("paper", "authors")
#: The columns of P1's Tables 1 and 2: setting, model, mean and sd of ``TABLE_METRICS``, and the counts.
TABLE_COLUMNS = ("setting", "model", *(c for m in TABLE_METRICS for c in (m, f"{m}_sd")), "n_seeds", "n_pairs")
RANDOM_INIT_SEEDS = (1_000, 1_001, 1_002)
"""Seeds of the random-init baseline (never a trained seed): three, so that its three pairs give the floor a
standard error, as the trained models' three seeds do (the claims engine calls fewer than 3 inconclusive)."""
P1_MODELS = ("topk", "abstopk", "isae", "isae_me")
"""P1's four models, in its tables' order."""


@dataclass
class ExperimentResult:
    """Everything one setting produced: per-run and per-pair metrics, the training log and the SAEs."""

    runs: pd.DataFrame
    pairs: pd.DataFrame
    log: pd.DataFrame
    saes: dict[RunKey, SAE]
    x_eval: torch.Tensor
    """The held-out inputs the metrics were computed on."""
    curve: pd.DataFrame = field(default_factory=pd.DataFrame)
    """Convergence curve (``curve_probe``): the run and pair metrics at the evaluated steps, one row per run
    (``level`` "run") or seed pair ("pair") and step; empty when no curve was asked for."""


def run_label(key: RunKey) -> str:
    """The ``run`` column: "<variant>/seed<N>" (the untrained flag has its own column)."""
    return f"{key.variant}/seed{key.seed}"


def model_label(key: RunKey, sae: SAE) -> str:
    """The ``model`` column: the architecture's display name, "(untrained)" for a random-init baseline."""
    return sae.cfg.display_name + ("" if key.trained else " (untrained)")


def pair_columns(a: RunKey, b: RunKey) -> dict:
    """The key columns of a pair of runs of one variant."""
    return {"variant": a.variant, "seed_a": a.seed, "seed_b": b.seed, "trained": a.trained}


def seed_pairs(keys) -> list[tuple[RunKey, RunKey]]:
    """Every pair of runs that differ only in their seed (same variant, both trained or both not)."""
    groups: dict[tuple[str, bool], list[RunKey]] = {}
    for key in keys:
        groups.setdefault((key.variant, key.trained), []).append(key)
    return [pair for group in groups.values() for pair in itertools.combinations(group, 2)]


def evaluate(saes: dict[RunKey, SAE], x: torch.Tensor, true_atoms: torch.Tensor | None = None,
             progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-SAE metrics and metrics of every seed pair of ``saes`` (``seed_pairs``)."""
    runs = []
    for key, sae in saes.items():
        row = {"run": run_label(key), "model": model_label(key, sae), **key.columns(),
               **metrics.single_metrics(sae, x)}
        if true_atoms is not None:
            row |= metrics.ground_truth_recovery(sae, true_atoms)
        runs.append(row)
    pairs, codes = [], {}
    for a, b in progress_bar(seed_pairs(saes), desc="comparing seed pairs", disable=not progress):
        row = metrics.pair_metrics(saes[a], saes[b], x, codes=codes)
        pairs.append({"pair": f"{run_label(a)} vs {run_label(b)}", "model": model_label(a, saes[a]),
                      **pair_columns(a, b), **row})
    return pd.DataFrame(runs), pd.DataFrame(pairs)


def curve_probe(setting: str, by_name: dict[str, RunKey], x_curve: torch.Tensor, steps: tuple[int, ...],
                batch_size: int) -> Probe:
    """A trainer ``Probe`` that runs ``evaluate`` (every metric, OMP oracle included) on ``x_curve`` at ``steps``,
    rows tagged with the step and the activations seen so far (``tokens``)."""
    def fn(step: int, named: dict[str, SAE]) -> list[dict]:
        runs, pairs = evaluate({by_name[n]: sae for n, sae in named.items()}, x_curve, progress=False)
        rows = ([{"level": "run", **r} for r in runs.to_dict("records")]
                + [{"level": "pair", **r} for r in pairs.to_dict("records")])
        return [{"setting": setting, "step": step, "tokens": step * batch_size, **r} for r in rows]

    return Probe(tuple(sorted(set(steps))), fn)


def curve_steps(n_steps: int, n_points: int) -> tuple[int, ...]:
    """``n_points`` evaluation steps from 0 to ``n_steps``, evenly spaced (0 and the end included; with 6 points,
    0, 20%, ..., 100%: the last 20% of training is one interval)."""
    if n_points < 2:
        raise ValueError(f"n_points={n_points}: a curve needs at least 2 points (the start and the end).")
    return tuple(sorted({round(i * n_steps / (n_points - 1)) for i in range(n_points)}))


@torch.no_grad()
def random_init_saes(cfg: SAEConfig, b_dec: torch.Tensor, device=None,
                     seeds: tuple[int, ...] = RANDOM_INIT_SEEDS) -> dict[RunKey, SAE]:
    """The random-init baseline: SAEs of ``cfg`` with ``seeds`` and b_dec set to ``b_dec``
    (the data's geometric median, as at step 0 of training)."""
    saes = {RunKey(cfg.architecture, seed, trained=False): SAE(cfg, seed=seed).to(device)
            for seed in seeds}
    for sae in saes.values():
        sae.b_dec.copy_(b_dec.to(sae.b_dec.device))
    return saes


def untrained_saes(cfg: SAEConfig, stream: Stream, n_median_samples: int, device) -> dict[RunKey, SAE]:
    """``random_init_saes`` with b_dec at the geometric median of the stream's first ``n_median_samples`` inputs."""
    return random_init_saes(cfg, stream_median(stream, n_median_samples), device)


def sae_dir(out_dir: str | Path, run_name: str, key: RunKey) -> Path:
    """Where ``train_and_evaluate`` saves the trained SAE ``key``: ``out_dir/saes/<run_name>_<arch>_seed<N>``."""
    return Path(out_dir) / "saes" / f"{run_name}_{key.variant}_seed{key.seed}"


def train_and_evaluate(setting: str, stream: Stream, x_eval: torch.Tensor, sae_cfgs: dict[str, SAEConfig],
                       train_cfg: TrainConfig, n_seeds: int, out_dir: str | Path | None = None,
                       true_atoms: torch.Tensor | None = None, progress: bool = True, baseline: bool = True,
                       run_name: str | None = None, curve_points: int = 0, n_curve: int = 512,
                       checkpoint_part: str | None = None, **provenance_params) -> ExperimentResult:
    """Train ``sae_cfgs`` × ``n_seeds`` SAEs on one stream, then evaluate them and (with ``baseline``) a random-init
    floor per architecture (``random_init_saes``, every pair of its seeds) on x_eval. With ``curve_points`` ≥ 2,
    every metric is also evaluated on the first ``n_curve`` rows of x_eval at that many evenly spaced steps
    (``curve_steps``), into ``result.curve``.

    With ``out_dir``: checkpoints under ``out_dir/checkpoints/<run_name>`` (a re-run resumes; under its subfolder
    ``checkpoint_part`` when these SAEs are a part of the setting, as a unit of ``P1Synthetic`` trains), SAEs
    saved under ``out_dir/saes/<run_name>_<arch>_seed<N>`` in SAELens's layout; ``run_name`` defaults to
    ``setting``.
    """
    run_name = run_name or setting
    dev = train_cfg.resolved_device()
    saes = {RunKey(a, s): SAE(cfg, seed=s) for a, cfg in sae_cfgs.items() for s in range(n_seeds)}
    out_dir = Path(out_dir) if out_dir is not None else None
    # The trainer names models by str(key): its checkpoints, aRIP noise seeds and log rows use that name.
    by_name = {str(key): key for key in saes}
    probe = (curve_probe(setting, by_name, x_eval[:n_curve].to(dev), curve_steps(train_cfg.n_steps, curve_points),
                         train_cfg.batch_size) if curve_points else None)
    ckpt = out_dir / "checkpoints" / run_name / (checkpoint_part or "") if out_dir else None
    log = train_many({name: saes[key] for name, key in by_name.items()}, stream, train_cfg, checkpoint_dir=ckpt,
                     progress=progress, probe=probe)
    log.insert(0, "setting", setting)
    if len(log):
        log = log.join(pd.DataFrame([by_name[name].columns() for name in log["model"]], index=log.index))

    x_eval = x_eval.to(dev)
    runs, pairs = evaluate(saes, x_eval, true_atoms=true_atoms, progress=progress)
    if baseline:
        untrained = {}
        for cfg in sae_cfgs.values():
            untrained |= untrained_saes(cfg, stream, train_cfg.geometric_median_samples, dev)
        base_runs, base_pairs = evaluate(untrained, x_eval, true_atoms=true_atoms, progress=False)
        runs = pd.concat([runs, base_runs], ignore_index=True)
        pairs = pd.concat([pairs, base_pairs], ignore_index=True)
    for df in (runs, pairs):
        df.insert(0, "setting", setting)

    if out_dir is not None:
        for key, sae in saes.items():
            save_sae(sae, sae_dir(out_dir, run_name, key), setting=setting, seed=sae.seed, train=train_cfg.__dict__,
                     **provenance_params)
    curve = pd.DataFrame(probe.rows if probe is not None else [])
    return ExperimentResult(runs=runs, pairs=pairs, log=log, saes=saes, x_eval=x_eval, curve=curve)


def matched_cosines(saes: dict, setting: str = "") -> pd.DataFrame:
    """|cos| of every matched atom pair between the two lowest seeds of each variant in ``saes``.

    ``saes`` maps ``RunKey`` to SAEs (``ExperimentResult.saes`` or ``pipeline.untrained_saes``); atoms are
    matched by ``metrics.match_atoms`` (Hungarian on |cos|, as DCS). Returns one row per matched pair: setting,
    model (display name), pair, the pair's key columns and abs_cos. The mean of abs_cos per model is its DCS.
    """
    first_pairs: dict[tuple[str, bool], tuple] = {}
    for a, b in seed_pairs(sorted(saes, key=lambda key: key.seed)):
        first_pairs.setdefault((a.variant, a.trained), (a, b))
    frames = []
    for a, b in first_pairs.values():
        m = metrics.match_atoms(saes[a].W_dec, saes[b].W_dec)
        frames.append(pd.DataFrame({"setting": setting, "model": saes[a].cfg.display_name,
                                    "pair": f"{run_label(a)} vs {run_label(b)}", **pair_columns(a, b),
                                    "abs_cos": np.abs(m.cos)}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["setting", "model", "pair", "variant", "seed_a", "seed_b", "trained", "abs_cos"])


def summarise(runs: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
    """One row per (recipe, setting, model): mean and sd (``<metric>_sd``) over seeds / seed pairs, n_seeds,
    n_pairs (tables without a ``recipe`` column: per (setting, model)).

    Rows: per recipe and setting, trained models in ``ARCHITECTURES`` order, then their random-init baselines.
    Columns follow P1's tables (``TABLE_METRICS``) first, then the extra metrics this project reports and the
    key columns ``variant`` and ``trained``.
    """
    keys = ["recipe", "setting", "model", "variant", "trained"] if "recipe" in runs else \
        ["setting", "model", "variant", "trained"]
    table = mean_sd(runs, keys, RUN_METRICS, count="n_seeds").merge(
        mean_sd(pairs, keys, PAIR_METRICS, count="n_pairs"), on=keys, how="outer")
    order = {name: i for i, name in enumerate(ARCHITECTURES)}
    table = table.assign(_untrained=~table["trained"].astype(bool), _order=table["variant"].map(order).fillna(99))
    table = table.sort_values(keys[:-4] + ["setting", "_untrained", "_order"], kind="stable")
    table = table.drop(columns=["_untrained", "_order"])
    first = keys[:-4] + list(TABLE_COLUMNS)
    return table[[c for c in first if c in table] + [c for c in table if c not in first]].reset_index(drop=True)


def with_protocol(table: pd.DataFrame, protocol: str) -> pd.DataFrame:
    """``table`` (``summarise``'s output) with the ``TABLE_METRICS`` columns in the readings of ``protocol``:
    "paper" (P1's text) leaves it as it is; "authors" puts the authors' readings (``AUTHORS_READINGS``, means and
    sds) in the columns P1's table names, so the table can stand beside the paper's."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol={protocol!r}; use one of {PROTOCOLS}.")
    if protocol == "paper":
        return table
    out = table.copy()
    for column, reading in AUTHORS_READINGS.items():
        for suffix in ("", "_sd"):
            if reading + suffix in out:
                out[column + suffix] = out[reading + suffix]
    return out


#: Relative cost of one training step per architecture, from the step times at P1's sizes in benchmarks/README.md
#: (TopK 93 ms, AbsTopK 92, iSAE 135, iSAE-ME 340); used only to balance the ranks of a run.
STEP_COST = {"topk": 1.0, "abstopk": 1.0, "isae": 1.45, "isae_me": 3.65, "relu": 1.0, "jumprelu": 1.0}


def model_unit(setting: str, stream: Stream, x_eval: torch.Tensor, variant: str, cfg: SAEConfig,
               train_cfg: TrainConfig, n_seeds: int, out_dir: str | Path | None, **kw) -> dict[str, pd.DataFrame]:
    """The unit of work of every P1 experiment: ``n_seeds`` SAEs of one model trained on one stream
    (``train_and_evaluate``, checkpoints under ``checkpoints/<run>/<variant>``), evaluated with their random-init
    floor. Returns its tables (runs, pairs, log, curve); ``merge_units`` puts a setting's units together."""
    r = train_and_evaluate(setting, stream, x_eval, {variant: cfg}, train_cfg, n_seeds, out_dir=out_dir,
                           checkpoint_part=variant, **kw)
    return {"runs": r.runs, "pairs": r.pairs, "log": r.log, "curve": r.curve}


def merge_units(parts: list[dict[str, pd.DataFrame]]) -> dict[str, pd.DataFrame]:
    """One setting's tables from its models' units (``model_unit``, in model order): runs and pairs of the trained
    models first, then their random-init floors; logs and curves model after model."""
    def cat(name: str, rows=None) -> pd.DataFrame:
        frames = [p[name] if rows is None else p[name][p[name]["trained"].astype(bool) == rows] for p in parts]
        frames = [f for f in frames if len(f)]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    return {"runs": pd.concat([cat("runs", True), cat("runs", False)], ignore_index=True),
            "pairs": pd.concat([cat("pairs", True), cat("pairs", False)], ignore_index=True),
            "log": cat("log"), "curve": cat("curve")}


def load_saes(out_dir: str | Path, run_name: str, keys: list[RunKey], device) -> dict[RunKey, SAE]:
    """The saved SAEs ``keys`` of one setting (``sae_dir``), each with its seed."""
    saes = {}
    for key in keys:
        sae = load_sae(sae_dir(out_dir, run_name, key), device=device)
        sae.seed = key.seed
        saes[key] = sae
    return saes


def combine(results: dict[str, ExperimentResult] | dict[str, dict[str, ExperimentResult]]
            ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(runs, pairs, log) of several settings, one table each; of several recipes (``P1Synthetic``'s result) with
    a ``recipe`` column."""
    first = next(iter(results.values()))
    if isinstance(first, dict):
        parts = [combine(by_setting) for by_setting in results.values()]
        return tuple(pd.concat([p[i].assign(recipe=name) for p, name in zip(parts, results)], ignore_index=True)
                     for i in range(3))
    return tuple(pd.concat([getattr(r, part) for r in results.values()], ignore_index=True)
                 for part in ("runs", "pairs", "log"))
