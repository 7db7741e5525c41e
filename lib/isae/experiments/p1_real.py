"""P1 on real activations (notebook 03): train the P1 models on cached activations, the random-init floor of
matched cosines, the downstream splice and the sparse probes of the first seed of every model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from isae import pipeline
from isae.core.models import SAE, SAEConfig
from isae.core.provenance import write_with_provenance
from isae.core.runs import RunKey
from isae.data import activations
from isae.data.cache import ActivationCache
from isae.eval import downstream, probing
from isae.experiments.executor import Context, Experiment, Unit
from isae.experiments.profiles import RealProfile
from isae.pipeline import (
    STEP_COST,
    TABLE_COLUMNS,
    ExperimentResult,
    load_saes,
    merge_units,
    model_unit,
    summarise,
    untrained_saes,
)
from isae.train.recipe import recipe as get_recipe
from isae.train.trainer import TrainConfig

#: Our setting name → the caches it trains and evaluates on.
SETTINGS = {"smollm2": ("lm_train", "lm_heldout"), "efficientnet-lite0": ("vision_train", "vision_heldout")}
#: Our setting name → the row of P1's Table 2 it stands in for.
PAPER_SETTING = {"smollm2": "pythia-160m", "efficientnet-lite0": "dinov2"}


@dataclass
class RealSetting:
    """One trained setting: its stream, recipe, model configs and results."""

    name: str
    recipe: str
    stream: object
    train_cfg: TrainConfig
    sae_cfgs: dict[str, SAEConfig]
    result: ExperimentResult
    n_eval: int

    def describe(self, p: RealProfile) -> str:
        """One line: what was trained on what."""
        n = self.stream.steps_per_pass * p.batch_size
        passes = f"{p.passes} passes over " if p.passes > 1 else "one pass over "
        return (f"{self.name}: {len(self.sae_cfgs) * p.n_seeds} SAEs (K={p.d_sae}, k={p.k}, recipe {p.recipe!r}), "
                f"{passes}{self.stream.steps_per_pass} steps of {p.batch_size} = {n:,} activations of dimension "
                f"{self.stream.d_in}; metrics on {self.n_eval} held-out rows, curve on {p.n_curve}")

    def untrained_baseline(self) -> dict[RunKey, SAE]:
        """The random-init TopK SAEs (``untrained_saes``) with b_dec at this stream's geometric median (the four
        architectures share their initial atoms, so one floor serves all)."""
        return untrained_saes(self.sae_cfgs["topk"], self.stream, self.train_cfg.geometric_median_samples,
                              self.train_cfg.resolved_device())

    def first_seeds(self) -> dict[str, SAE]:
        """The seed-0 SAE of every model, by display name."""
        return {sae.cfg.display_name: sae for key, sae in self.result.saes.items() if key.seed == 0 and key.trained}

    def trained(self) -> dict[RunKey, SAE]:
        """Every trained SAE, by run key, in model then seed order."""
        return {key: sae for key, sae in self.result.saes.items() if key.trained}


def eval_inputs(caches: dict[str, ActivationCache], setting: str, p: RealProfile, n: int | None = None):
    """``n`` (default ``p.n_eval``) held-out rows of ``setting``, preprocessed as its SAEs' training rows: unit norm,
    centred per sample first under a recipe with ``center_inputs``."""
    return activations.heldout_activations(caches[SETTINGS[setting][1]], n or p.n_eval,
                                           center=get_recipe(p.recipe).center_inputs)


@dataclass
class RealInputs:
    """What one real setting trains and is evaluated on, at the sizes of a ``RealProfile``: shared by
    ``P1Real``'s units and its ``load``, so that both see exactly the same things."""

    setting: str
    cache: ActivationCache
    stream: object
    train_cfg: TrainConfig
    sae_cfgs: dict[str, SAEConfig]
    x_eval: object
    recipe: dict


def real_inputs(setting: str, caches: dict[str, ActivationCache], p: RealProfile,
                device: str | None = None) -> RealInputs:
    """The stream (``p.passes`` passes over the setting's training cache), training settings, SAE configs of
    ``p.models`` and held-out rows of ``setting``."""
    cache = caches[SETTINGS[setting][0]]
    rec = get_recipe(p.recipe)
    stream = cache.stream(p.batch_size, seed=0, passes=p.passes, center=rec.center_inputs)
    train_cfg = rec.train_config(stream.n_steps, p.batch_size, lr=p.lr, log_every=p.log_every,
                                 checkpoint_every=p.checkpoint_every, device=device,
                                 geometric_median_samples=min(8192, stream.steps_per_pass * p.batch_size))
    sae_cfgs = {a: rec.sae_config(cache.d_in, p.d_sae, p.k, a) for a in p.models}
    return RealInputs(setting, cache, stream, train_cfg, sae_cfgs, eval_inputs(caches, setting, p), rec.to_dict())


class P1Real(Experiment):
    """Notebook 03: P1's four models × seeds on each real setting (``SETTINGS``), ``p.passes`` passes over its
    training cache with ``p.recipe``, a convergence curve of ``p.curve_points`` points and the evaluation on
    ``p.n_eval`` held-out rows with a random-init floor. A unit is one model of one setting (every seed, so the
    curve's seed pairs are evaluated during training). ``load`` gives a ``RealSetting`` per setting, with its saved
    SAEs."""

    name = "p1_real"

    def __init__(self, p: RealProfile, caches: dict[str, ActivationCache], settings: tuple[str, ...] = tuple(SETTINGS)):
        unknown = [s for s in settings if s not in SETTINGS]
        if unknown or not settings:
            raise ValueError(f"settings={settings!r}: use a non-empty tuple drawn from {tuple(SETTINGS)}.")
        self.p, self.caches, self.settings = p, caches, tuple(settings)

    def identity(self) -> dict:
        return {"sizes": self.p.to_dict(), "settings": list(self.settings)}

    def units(self) -> list[Unit]:
        p = self.p
        steps = {s: real_inputs(s, self.caches, p).stream.n_steps for s in self.settings}
        return [Unit(f"{s}-{a}", (s, a), STEP_COST.get(a, 1.0) * steps[s] * p.n_seeds) for s in self.settings
                for a in p.models]

    def run_unit(self, unit: Unit, ctx: Context) -> dict:
        setting, variant = unit.key
        p = self.p
        ri = real_inputs(setting, self.caches, p, str(ctx.device))
        ctx.log(f"{ctx.label}training {variant} × {p.n_seeds} seeds on {setting}")
        return model_unit(setting, ri.stream, ri.x_eval, variant, ri.sae_cfgs[variant], ri.train_cfg, p.n_seeds,
                          ctx.out, progress=ctx.progress, curve_points=p.curve_points, n_curve=p.n_curve,
                          real_profile=p.to_dict(), cache=str(ri.cache.directory), recipe=ri.recipe, **ctx.params)

    def merge(self, results: list[dict], ctx: Context) -> dict:
        by_setting: dict[str, list[dict]] = {}
        for unit, tables in zip(self.units(), results):
            by_setting.setdefault(unit.key[0], []).append(tables)
        return {setting: merge_units(parts) for setting, parts in by_setting.items()}

    def load(self, merged: dict, ctx: Context) -> dict[str, RealSetting]:
        p, settings = self.p, {}
        keys = [RunKey(a, s) for a in p.models for s in range(p.n_seeds)]
        for setting, t in merged.items():
            ri = real_inputs(setting, self.caches, p, str(ctx.device))
            result = ExperimentResult(runs=t["runs"], pairs=t["pairs"], log=t["log"], curve=t["curve"],
                                      saes=load_saes(ctx.out, setting, keys, ctx.device),
                                      x_eval=ri.x_eval.to(ctx.device))
            settings[setting] = RealSetting(setting, p.recipe, ri.stream, ri.train_cfg, ri.sae_cfgs, result,
                                            len(ri.x_eval))
        return settings


def matched_cosines_with_floor(settings: dict[str, RealSetting]) -> pd.DataFrame:
    """Matched |cos| of seed 0 vs seed 1 of every model per setting, and of the first two random-init SAEs (model
    "random init (untrained)")."""
    frames = []
    for name, s in settings.items():
        frames += [pipeline.matched_cosines(s.result.saes, setting=name),
                   pipeline.matched_cosines(s.untrained_baseline(), setting=name).assign(
                       model="random init (untrained)")]
    return pd.concat(frames, ignore_index=True)


def splice_seeds(setting: RealSetting, p: RealProfile, bridge, tokenizer) -> tuple[pd.DataFrame, int]:
    """Downstream CE/KL with every trained SAE spliced in at ``p.lm_hook`` on the first ``p.ce_windows`` held-out
    windows (``downstream.splice_metrics``): one row per SAE (model, seed, run), so that the CE claim compares
    models over seeds. Also returns the number of windows."""
    request = activations.LMRequest(split="heldout", hook=p.lm_hook, context_length=p.context_length,
                                    n_tokens=p.ce_windows * (p.context_length - 1), windows_per_shard=p.ce_windows)
    windows = activations.lm_windows(tokenizer, request)[: p.ce_windows]
    center = get_recipe(p.recipe).center_inputs
    trained = setting.trained()
    by_label = {pipeline.run_label(key): key for key in trained}
    reconstructors = {label: downstream.sae_reconstructor(trained[key], center) for label, key in by_label.items()}
    out = downstream.splice_metrics(bridge, windows.tokens, windows.mask, p.lm_hook, reconstructors)
    keys = [by_label[label] for label in out["model"]]
    out = out.rename(columns={"model": "run"})
    out.insert(0, "seed", [key.seed for key in keys])
    out.insert(0, "model", [trained[key].cfg.display_name for key in keys])
    return out, len(windows)


@dataclass
class ProbeResults:
    summary: pd.DataFrame
    """``probing.probe_summary``: one row per encoder."""
    per_class: pd.DataFrame
    """Every (encoder, class, k) result, with a ``model`` column."""
    n_train: int
    n_test: int


def probe_first_seeds(setting: RealSetting, caches: dict[str, ActivationCache], pooling: str) -> ProbeResults:
    """Sparse probing (``probing.sparse_probe``) of the raw activations and each model's seed-0 SAE codes, pooled
    per image (``pooling``), fitted on ``vision_train`` and scored on ``vision_heldout``."""
    device = setting.train_cfg.resolved_device()
    center = get_recipe(setting.recipe).center_inputs

    def encoder(sae: SAE):
        if not center:
            return sae.encode
        return lambda x: sae.encode(_center_unit(x))  # pooled_codes gives unit rows; centring commutes with scale

    encoders = {"activations (no SAE)": lambda x: x}
    encoders |= {name: encoder(sae) for name, sae in setting.first_seeds().items()}
    results = {}
    for name, encode in encoders.items():
        z_train, y_train = probing.pooled_codes(encode, caches["vision_train"], how=pooling, device=device)
        z_test, y_test = probing.pooled_codes(encode, caches["vision_heldout"], how=pooling, device=device)
        results[name] = probing.sparse_probe(z_train, y_train, z_test, y_test, ks=probing.DEFAULT_K)
    per_class = pd.concat([df.assign(model=name) for name, df in results.items()], ignore_index=True)
    return ProbeResults(probing.probe_summary(results), per_class, len(z_train), len(z_test))


def _center_unit(x):
    x = x - x.mean(dim=1, keepdim=True)
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


SPLICE_COLUMNS = ("ce_clean", "ce_sae", "ce_zero", "ce_recovered", "kl")


def table3(splice: pd.DataFrame, probes: pd.DataFrame) -> pd.DataFrame:
    """Our Table 3: per model, the splice columns (mean over its seeds spliced, ``splice_seeds``; ``ce_sae_sd``
    their sd, ``n_seeds``, ``n_tokens``) and the sparse-probing test accuracy at each k (``sparse_probing_k<k>``,
    seed 0)."""
    by_model = splice.groupby("model", sort=False)
    means = by_model[list(SPLICE_COLUMNS)].mean()
    means.insert(2, "ce_sae_sd", by_model["ce_sae"].std())
    means["n_seeds"] = by_model.size()
    means["n_tokens"] = by_model["n_tokens"].first()
    probe_cols = {f"test_acc_k{k}": f"sparse_probing_k{k}" for k in probing.DEFAULT_K}
    return means.reset_index().merge(probes[["model", *probe_cols]].rename(columns=probe_cols), on="model",
                                     how="left")


def paper_table2_as_ours(paper2: pd.DataFrame) -> pd.DataFrame:
    """P1's Table 2 with its settings renamed to the settings standing in for them (``paper_setting`` keeps
    the paper's name)."""
    ours_setting = {v: k for k, v in PAPER_SETTING.items()}
    return paper2.assign(paper_setting=paper2["setting"], setting=paper2["setting"].map(ours_setting))


def write_table2(tables: str | Path, runs: pd.DataFrame, pairs: pd.DataFrame, **params) -> pd.DataFrame:
    """Table 2's files under ``tables`` (the paper's columns, every metric, the per-run and per-pair rows), each
    with provenance; returns the summary table (``pipeline.summarise``)."""
    table = summarise(runs, pairs)
    for df, name in ((table[list(TABLE_COLUMNS)], "table2_real.csv"), (table, "table2_real_all_metrics.csv"),
                     (runs, "table2_real_runs.csv"), (pairs, "table2_real_pairs.csv")):
        write_with_provenance(Path(tables) / name, lambda f, df=df: df.to_csv(f, index=False), **params)
    return table


def dcs_above_floor(table: pd.DataFrame) -> pd.DataFrame:
    """Per setting of a ``summarise`` table: the range of the trained models' DCS and the DCS of the random-init
    TopK pair (the floor). When trained DCS is close to the floor the dictionaries have not converged, and the
    stability claims are not tested at this budget."""
    trained = table["trained"].astype(bool)
    floor = table[~trained & (table["variant"] == "topk")].set_index("setting")["dcs"]
    by_setting = table[trained].groupby("setting", sort=False)["dcs"]
    return pd.DataFrame({"trained_min": by_setting.min(), "trained_max": by_setting.max(), "floor": floor})


def curves(settings: dict[str, RealSetting]) -> pd.DataFrame:
    """The convergence curves of every setting (``ExperimentResult.curve``), one table."""
    return pd.concat([s.result.curve for s in settings.values()], ignore_index=True)
