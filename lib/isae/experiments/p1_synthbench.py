"""P1's models on a peer's benchmark (notebook 10): SynthSAEBench through SAELens's generator and SAELens's metrics.

Every model is trained and evaluated as in notebook 01 (``pipeline.model_unit``: seeds on one stream, every seed
pair, the random-init floor, recovery of the true directions), and measured a second way by SAELens's own
ground-truth metrics (``sae_lens.synthetic.evals``): MCC (Hungarian-matched |cos| between decoder rows and true
features), uniqueness (distinct best-matching features per latent) and per-latent firing precision, recall and F1
against the true features' firing on held-out rows. A third table, per true feature, holds its best |cos| with any
latent of each SAE, with the feature's firing rate and depth in the hierarchy, for the recovery figure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from isae import pipeline
from isae.core.models import SAE, SAEConfig
from isae.core.runs import RunKey, resolve_device
from isae.data.stream import TensorStream
from isae.data.synthbench import (
    SynthBenchConfig,
    SynthBenchData,
    build_model,
    cached_train_rows,
    feature_depths,
    true_directions,
)
from isae.experiments.executor import Context, Experiment, Unit
from isae.experiments.profiles import SynthBenchProfile
from isae.report import claims
from isae.report.claims import AllOf, Claim, Compare
from isae.report.p1 import getters, paper_table
from isae.train.recipe import recipe as get_recipe
from isae.train.trainer import TrainConfig

SETTING = "synthbench"
BENCH_METRICS = ("mcc", "uniqueness", "precision", "recall", "f1")
"""SAELens's ground-truth metrics, one value per SAE."""
RECOVERED = 0.9
"""A true feature counts as recovered by an SAE when some decoder row has |cos| ≥ this with it (our choice, the
threshold of ``metrics.ground_truth_recovery``)."""


@dataclass
class BenchInputs:
    """What every unit of notebook 10 is built from (the same in every process: all of it is seeded)."""

    bench: SynthBenchConfig
    model: object
    """SAELens's ``SyntheticModel``."""
    data: SynthBenchData
    stream: TensorStream
    x_eval: torch.Tensor
    f_eval: torch.Tensor
    """[n_eval, num_features] the held-out rows' true feature activations."""
    truth: torch.Tensor
    """[num_features, hidden_dim] unit-norm true feature directions."""
    k: int
    d_sae: int
    train_cfg: TrainConfig
    sae_cfgs: dict[str, SAEConfig]

    def describe(self) -> dict:
        """The data's numbers a reader wants first (mean L0, features in the hierarchy, the scale)."""
        l0 = (self.f_eval > 0).sum(1).float()
        depth = feature_depths(self.model)
        return {"features": self.bench.num_features, "hidden_dim": self.bench.hidden_dim,
                "hierarchy_roots": self.bench.total_root_nodes, "in_hierarchy": int((depth >= 0).sum()),
                "mean_l0": float(l0.mean()), "l0_sd": float(l0.std()), "k": self.k, "d_sae": self.d_sae,
                "input_scale": self.data.scale, "train_rows": len(self.stream.rows),
                "n_steps": self.train_cfg.n_steps}


def bench_inputs(p: SynthBenchProfile, cache_dir: str | Path | None, device=None, log=print) -> BenchInputs:
    """The model (built or read from ``cache_dir``), its rows and held-out rows, k (the data's mean L0 unless the
    profile sets it), and the training settings under the profile's recipe."""
    bench = SynthBenchConfig(p.num_features, p.hidden_dim, p.orthogonalization_steps)
    model = build_model(bench, cache_dir, log=log)
    data = SynthBenchData(model, bench, seed=p.data_seed, input_scaling=p.input_scaling)
    x_eval, f_eval = data.held_out(p.n_eval)
    k = p.k or max(1, round(float((f_eval > 0).sum(1).float().mean())))
    d_sae = p.d_sae or bench.num_features
    rows = cached_train_rows(data, p.n_train_rows, cache_dir, log=log)
    stream = TensorStream(rows, p.batch_size, seed=p.data_seed, passes=p.passes, normalize=False)
    rec = get_recipe(p.recipe)
    train_cfg = rec.train_config(stream.n_steps, p.batch_size, log_every=p.log_every,
                                 checkpoint_every=p.checkpoint_every, device=str(resolve_device(device)))
    sae_cfgs = {a: rec.sae_config(bench.hidden_dim, d_sae, k, a) for a in p.models}
    return BenchInputs(bench, model, data, stream, x_eval, f_eval, true_directions(model), k, d_sae, train_cfg,
                       sae_cfgs)


@torch.no_grad()
def saelens_metrics(sae: SAE, x: torch.Tensor, f: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    """SAELens's ground-truth metrics of one SAE, computed by SAELens's own functions: MCC and uniqueness of its
    decoder rows against ``truth``, and firing precision / recall / F1 of its latents on ``x`` against ``f``."""
    from sae_lens.synthetic.evals import (
        ClassificationMetricsCalculator,
        feature_uniqueness,
        mean_correlation_coefficient,
    )

    decoder = sae.W_dec.detach().float().cpu()
    calc = ClassificationMetricsCalculator(decoder, truth)
    calc.add_batch(sae.encode(x.to(sae.W_dec.device)).cpu(), f)
    c = calc.compute()
    return {"mcc": mean_correlation_coefficient(decoder, truth), "uniqueness": feature_uniqueness(decoder, truth),
            "precision": c.precision, "recall": c.recall, "f1": c.f1_score}


@torch.no_grad()
def best_cosines(sae: SAE, truth: torch.Tensor) -> torch.Tensor:
    """[num_features] the best |cos| of each true direction with any decoder row of ``sae``."""
    decoder = sae.W_dec.detach().float().cpu()
    decoder = decoder / decoder.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (truth @ decoder.T).abs().max(dim=1).values


class P1SynthBench(Experiment):
    """Notebook 10: each of the profile's models × seeds on SynthSAEBench. A unit is one model: its seeds trained
    on one stream, evaluated as in notebook 01 and by SAELens's metrics. The result is a dict of tables: runs,
    pairs, log (``pipeline``), bench (SAELens's metrics per SAE, the random-init floor included) and features (per
    true feature and SAE: best |cos|, firing rate, depth)."""

    name = "p1_synthbench"

    def __init__(self, p: SynthBenchProfile, inputs: BenchInputs | None = None):
        """``inputs``: the ``bench_inputs`` of ``p`` when the caller built them already (the notebook shows the
        data first); else built on first use, under the output root."""
        self.p = p
        self._inputs = inputs

    def identity(self) -> dict:
        return {"sizes": self.p.to_dict()}

    def units(self) -> list[Unit]:
        p = self.p
        return [Unit(a, a, pipeline.STEP_COST.get(a, 1.0) * p.n_steps * p.n_seeds) for a in p.models]

    def inputs(self, ctx: Context) -> BenchInputs:
        if self._inputs is None:
            self._inputs = bench_inputs(self.p, ctx.out / "synthbench" / "data", ctx.device, log=ctx.log)
        return self._inputs

    def run_unit(self, unit: Unit, ctx: Context) -> dict:
        arch, p = unit.key, self.p
        bi = self.inputs(ctx)
        ctx.log(f"{ctx.label}training {arch} × {p.n_seeds} seeds on SynthSAEBench ({bi.bench.num_features} features, "
                f"k={bi.k})")
        out = ctx.out / "synthbench"
        tables = pipeline.model_unit(SETTING, bi.stream, bi.x_eval, arch, bi.sae_cfgs[arch], bi.train_cfg, p.n_seeds,
                                     out, true_atoms=bi.truth, progress=ctx.progress, data=bi.data.identity(),
                                     recipe=get_recipe(p.recipe).to_dict(), **ctx.params)
        saes = pipeline.load_saes(out, SETTING, [RunKey(arch, s) for s in range(p.n_seeds)], ctx.device)
        floor = pipeline.untrained_saes(bi.sae_cfgs[arch], bi.stream, bi.train_cfg.geometric_median_samples,
                                        ctx.device)
        bench, features = [], []
        rate = (bi.f_eval > 0).float().mean(0)
        depth = feature_depths(bi.model)
        for key, sae in {**saes, **floor}.items():
            sae.eval()
            label = pipeline.model_label(key, sae)
            bench.append({"model": label, **key.columns(), **saelens_metrics(sae, bi.x_eval, bi.f_eval, bi.truth)})
            if key.trained:
                features.append(pd.DataFrame({"model": label, "seed": key.seed, "feature": range(len(rate)),
                                              "firing_rate": rate.numpy(), "depth": depth.numpy(),
                                              "best_cos": best_cosines(sae, bi.truth).numpy()}))
        return {**tables, "bench": pd.DataFrame(bench), "features": pd.concat(features, ignore_index=True)}

    def merge(self, results: list[dict], ctx: Context) -> dict[str, pd.DataFrame]:
        merged = pipeline.merge_units(results)
        for name in ("bench", "features"):
            merged[name] = pd.concat([r[name] for r in results], ignore_index=True)
        return merged


def summarise_bench(runs: pd.DataFrame, pairs: pd.DataFrame, bench: pd.DataFrame) -> pd.DataFrame:
    """One row per model (trained, then the random-init floor): both kinds of metric, mean and sd over seeds (SAELens's
    metrics, FVU, recovery) or seed pairs (DCS, SAE and oracle IoU)."""
    table = pipeline.summarise(runs, pairs)
    keep = ["model", "trained"] + [c for m in ("mse_fvu", "gt_recovered", "dcs", "sae_iou", "oracle_iou")
                                   for c in (m, f"{m}_sd") if c in table]
    table = table[[c for c in keep if c in table]]
    trained = bench["trained"].astype(bool)
    parts = []
    for is_trained, g in bench.groupby(trained, sort=False):
        stats = g.groupby("model", sort=False)[list(BENCH_METRICS)].agg(["mean", "std"])
        stats.columns = [m if s == "mean" else f"{m}_sd" for m, s in stats.columns]
        counts = g.groupby("model", sort=False).size()  # in the order of ``stats``' rows
        parts.append(stats.reset_index().assign(trained=bool(is_trained), n_seeds=counts.values))
    ours = pd.concat(parts, ignore_index=True)
    return ours.merge(table, on=["model", "trained"], how="left")


def recovery_by(features: pd.DataFrame, by: str, bins: int = 6) -> pd.DataFrame:
    """Share of true features recovered (best |cos| ≥ ``RECOVERED``) per model, averaged over seeds, by firing rate
    (log-spaced bins) or by depth in the hierarchy (−1: outside it); and the share recovered by every seed."""
    f = features.assign(recovered=features["best_cos"] >= RECOVERED)
    if by == "firing_rate":  # features that never fired on the held-out rows fall into the lowest bin
        rates = f["firing_rate"].clip(lower=1e-5)
        edges = torch.logspace(math.log10(float(rates.min())), math.log10(float(rates.max()) * 1.0001), bins + 1)
        labels = [f"{lo:.0e}–{hi:.0e}" for lo, hi in zip(edges[:-1].tolist(), edges[1:].tolist())]
        f = f.assign(group=pd.cut(rates, edges.numpy(), labels=labels, include_lowest=True))
    elif by == "depth":
        f = f.assign(group=f["depth"])
    else:
        raise ValueError(f"by={by!r}: use 'firing_rate' or 'depth'.")
    per_feature = f.groupby(["model", "group", "feature"], observed=True)["recovered"].agg(["mean", "min"])
    out = per_feature.groupby(["model", "group"], observed=True).agg(recovered=("mean", "mean"),
                                                                    every_seed=("min", "mean"),
                                                                    n_features=("mean", "size"))
    return out.reset_index()


def bench_claims(summary: pd.DataFrame, profile: str, model: str = "iSAE-ME") -> pd.DataFrame:
    """P1's identifiability claims carried over to SynthSAEBench, and the benchmark's matching-pursuit failure, by the
    claims engine; beside each, the same test on P1's Table 1 (i.i.d.) where P1 has the numbers."""
    trained = summary[summary["trained"].astype(bool)]

    def q(name: str, metric: str) -> claims.Quantity:
        row = trained[trained["model"] == name]
        label = f"{name} {metric}"
        if row.empty or metric not in row or pd.isna(row[metric].iloc[0]):
            return claims.missing(label)
        r = row.iloc[0]
        level = "pair" if metric in pipeline.PAIR_METRICS else "run"
        return claims.from_seeds(label, float(r[metric]), float(r.get(f"{metric}_sd", float("nan"))),
                                 int(r["n_seeds"]), level)

    paper = getters(paper_table(1), "iid", paper=True)[0]
    out = []
    for other in ("TopK", "AbsTopK"):
        for metric, what in (("sae_iou", "codes (SAE IoU)"), ("dcs", "dictionary (DCS)")):
            out.append(Claim("P1", f"{model} is more identifiable than {other}: {what}", SETTING,
                             Compare(q(model, metric), ">", q(other, metric)),
                             paper_value=f"i.i.d.: {paper(model, metric).mean:.3f} > {paper(other, metric).mean:.3f}",
                             paper_test=Compare(paper(model, metric), ">", paper(other, metric))))
    out.append(Claim("P1", f"{model} recovers the true features better than AbsTopK (SAELens MCC)", SETTING,
                     Compare(q(model, "mcc"), ">", q("AbsTopK", "mcc")), paper_value="not measured in P1"))
    out.append(Claim("SynthSAEBench", f"matching-pursuit failure: {model} reconstructs better than AbsTopK (FVU) "
                     "yet matches the true features worse (MCC)", SETTING,
                     AllOf(Compare(q(model, "mse_fvu"), "<", q("AbsTopK", "mse_fvu")),
                           Compare(q(model, "mcc"), "<", q("AbsTopK", "mcc"))),
                     paper_value="reported for matching-pursuit SAEs, not for iSAE-ME"))
    return claims.claims_table(out, profile)
