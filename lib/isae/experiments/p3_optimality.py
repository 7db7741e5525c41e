"""Notebook 09's driver: P3's first-order optimality structure, checked on trained SAEs and on the optimum itself.

Every experiment trains small SAEs with the shared trainer (``isae.train.trainer.train_many``) on the
hierarchical generator (``isae.data.hierarchy``), P1's signed synthetic data or the project's real activations
(notebook 02's caches), and measures them with ``isae.eval.optimality``. Sizes come from ``profiles.P3Profile``.
"""

from __future__ import annotations

import math

import pandas as pd
import torch

from isae.core.models import SAE, SAEConfig
from isae.data.activations import heldout_activations
from isae.data.cache import ActivationCache
from isae.data.hierarchy import HierarchyConfig, HierarchyStream
from isae.data.synthetic import SyntheticConfig, SyntheticStream
from isae.eval import metrics, optimality
from isae.experiments.p1_real import SETTINGS as REAL_SETTINGS
from isae.experiments.profiles import P3Profile
from isae.report import claims
from isae.report.claims import AllOf, Claim, Compare
from isae.report.summary import mean_sd
from isae.train.trainer import TrainConfig, train_many

CONTRASTS = ("topk", "abstopk")
"""k-sparse models the conditions need not hold for (they do not minimise an L1 objective)."""


def hierarchy_config(p: P3Profile, **overrides) -> HierarchyConfig:
    return HierarchyConfig(d_in=p.d_in, n_parents=p.n_parents, children_per_parent=p.children_per_parent,
                           n_free=p.n_free, **overrides)


def train(stream, archs: dict[str, SAEConfig], p: P3Profile, seeds: tuple[int, ...], progress: bool = False,
          n_steps: int | None = None) -> dict[tuple[str, int], SAE]:
    """SAEs of ``archs`` (name → config) × ``seeds`` on ``stream`` for ``n_steps`` (default ``p.n_steps``) steps
    of ``p.batch_size``."""
    n_steps = n_steps or p.n_steps
    saes = {(name, s): SAE(cfg, seed=s) for name, cfg in archs.items() for s in seeds}
    cfg = TrainConfig(n_steps=n_steps, batch_size=p.batch_size, lr=p.lr, log_every=max(1, n_steps // 10),
                      checkpoint_every=n_steps, geometric_median_samples=min(4096, n_steps * p.batch_size))
    train_many({f"{n}/seed{s}": sae for (n, s), sae in saes.items()}, stream, cfg, progress=progress)
    return {key: sae.eval() for key, sae in saes.items()}


def model_configs(d_in: int, d_sae: int, k: int, l1_coefs: tuple[float, ...], contrasts: bool = True
                  ) -> dict[str, SAEConfig]:
    """ReLU+L1 at every L1 weight ("relu λ=<λ>", λ = l1_coef / 2) and, with ``contrasts``, TopK and AbsTopK."""
    out = {f"relu λ={optimality.sae_lambda(c):g}": SAEConfig(d_in=d_in, d_sae=d_sae, k=k, architecture="relu",
                                                            l1_coef=c) for c in l1_coefs}
    if contrasts:
        out |= {a: SAEConfig(d_in=d_in, d_sae=d_sae, k=k, architecture=a) for a in CONTRASTS}
    return out


@torch.no_grad()
def conditions_table(saes: dict, x: torch.Tensor, lam: float, optimum: dict | None = None) -> pd.DataFrame:
    """C1–C3 per SAE (λ = its own for ReLU+L1, ``lam`` for the contrasts) on x, for the SAE's own codes and for
    the exact lasso codes of its dictionary and bias; with ``optimum`` (``optimality.learn_dictionary``'s output)
    one more row for the reference optimum."""
    rows = []
    if optimum is not None:
        s, _ = optimality.conditions(optimum["atoms"], optimum["bias"], x, optimum["codes"], lam)
        rows.append({"model": "optimum (alternating)", "seed": 0, "codes": "lasso", "lambda": lam, **s,
                     "outer_steps": optimum["n_outer"], "converged": optimum["converged"]})
    for (name, seed), sae in saes.items():
        lam_m = optimality.sae_lambda(sae.cfg.l1_coef) if sae.cfg.architecture == "relu" else lam
        own = metrics.sae_codes(sae, x)
        lasso = optimality.nonneg_lasso(sae.W_dec, x - sae.b_dec, lam_m, z0=own.clamp_min(0))
        for what, z in (("SAE encoder", own), ("lasso", lasso)):
            s, _ = optimality.conditions(sae.W_dec, sae.b_dec, x, z.clamp_min(0) if what == "lasso" else z, lam_m)
            rows.append({"model": name, "seed": seed, "codes": what, "lambda": lam_m, **s})
    return pd.DataFrame(rows)


@torch.no_grad()
def absorption(atoms: torch.Tensor, z: torch.Tensor, stream: HierarchyStream, mags: torch.Tensor) -> dict[str, float]:
    """Splitting and absorption on hierarchical data, averaged over (parent, child) pairs: each true feature's
    latent is the atom with the largest cosine to its direction. On inputs where a child fires and its latent is
    active: ``nested_rate`` (the parent's latent active too: a strictly nested pair) and ``absorbed_rate`` (the
    parent's latent off). ``parent_alone_rate``: the parent's latent active when the parent fires without any
    child. ``absorbed_direction``: cos(child latent's atom, parent) − cos(child direction, parent) (> 0: the
    child's atom has taken in the parent's direction). ``distinct_latents``: share of pairs whose two latents
    differ."""
    cfg = stream.cfg
    dirs = stream.directions
    u = atoms / atoms.norm(dim=1, keepdim=True).clamp_min(1e-12)
    latent = (dirs @ u.T).argmax(1)  # feature → its latent
    on = z != 0
    rows = []
    for c in range(cfg.n_children):
        p = cfg.parent_of(c)
        child = cfg.n_parents + c
        lp, lc = int(latent[p]), int(latent[child])
        child_on = (mags[:, child] > 0) & on[:, lc]
        kids = slice(cfg.n_parents + p * cfg.children_per_parent, cfg.n_parents + (p + 1) * cfg.children_per_parent)
        alone = (mags[:, p] > 0) & (mags[:, kids] == 0).all(1)
        nan = float("nan")
        rows.append({
            "nested_rate": float(on[child_on, lp].float().mean()) if child_on.any() and lp != lc else nan,
            "absorbed_rate": float((~on[child_on, lp]).float().mean()) if child_on.any() and lp != lc else nan,
            "parent_alone_rate": float(on[alone, lp].float().mean()) if alone.any() else nan,
            "absorbed_direction": float(u[lc] @ dirs[p] - dirs[child] @ dirs[p]),
            "distinct_latents": float(lp != lc)})
    return pd.DataFrame(rows).mean().to_dict()


def absorption_sweep(p: P3Profile, progress: bool = False) -> pd.DataFrame:
    """``absorption`` for ReLU+L1 at each of ``p.l1_coefs`` and for TopK / AbsTopK, at each co-occurrence
    ``p.p_child`` value, per seed."""
    rows = []
    for p_child in p.p_child_values:
        stream = HierarchyStream(hierarchy_config(p, p_child=p_child), p.batch_size, seed=0)
        x, mags = stream.held_out(p.n_eval)
        cfgs = model_configs(p.d_in, p.d_sae, p.k, p.l1_coefs)
        for (name, seed), sae in train(stream, cfgs, p, tuple(range(p.n_seeds)), progress).items():
            rows.append({"p_child": p_child, "model": name, "seed": seed,
                         **absorption(sae.W_dec, metrics.sae_codes(sae, x), stream, mags)})
    return pd.DataFrame(rows)


def antipodal_table(p: P3Profile, progress: bool = False, caches: dict[str, ActivationCache] | None = None
                    ) -> pd.DataFrame:
    """Antipodal pairs (cos < −0.9) for ReLU+L1, TopK and AbsTopK, per seed: on P1's signed synthetic data
    (codes ±), and with ``caches`` (notebook 02's, by name) on each real setting's activations (``real_stream``),
    SAEs of ``p.real_d_sae`` latents for ``p.real_steps`` steps."""
    data = SyntheticConfig(d_in=p.d_in, n_atoms=p.n_signed_atoms, k=p.k)
    stream = SyntheticStream(data, p.batch_size, seed=0)
    x, _ = stream.held_out(p.n_eval)
    cfgs = model_configs(p.d_in, p.d_sae, p.k, p.l1_coefs[:1])
    rows = [{"data": "synthetic, signed codes", "model": name, "seed": seed,
             **optimality.antipodal_pairs(sae.W_dec, metrics.sae_codes(sae, x))}
            for (name, seed), sae in train(stream, cfgs, p, tuple(range(p.n_seeds)), progress).items()]
    for setting in REAL_SETTINGS if caches else ():
        stream, xs = real_stream(caches, setting, p)
        cfgs = model_configs(stream.d_in, p.real_d_sae, p.real_k, p.real_l1_coefs)
        trained = train(stream, cfgs, p, tuple(range(p.n_seeds)), progress, n_steps=p.real_steps)
        rows += [{"data": setting, "model": name, "seed": seed,
                  **optimality.antipodal_pairs(sae.W_dec, metrics.sae_codes(sae, xs))}
                 for (name, seed), sae in trained.items()]
    return pd.DataFrame(rows)


def real_stream(caches: dict[str, ActivationCache], setting: str, p: P3Profile):
    """(training stream, held-out inputs) of a real setting: unit-norm rows (not centred per sample: the SAEs'
    bias b takes the mean; our choice), enough passes over the training cache for ``p.real_steps`` steps, and
    ``p.n_eval`` held-out rows."""
    train_name, eval_name = REAL_SETTINGS[setting]
    one_pass = caches[train_name].stream(p.batch_size, seed=0).steps_per_pass
    stream = caches[train_name].stream(p.batch_size, seed=0, passes=math.ceil(p.real_steps / one_pass))
    return stream, heldout_activations(caches[eval_name], p.n_eval)


def wide_limit(p: P3Profile, progress: bool = False) -> pd.DataFrame:
    """At fixed λ (the first of ``p.l1_coefs``), K from ``p.width_factors`` × the true feature count, on the
    hierarchical data: the ReLU+L1 SAE (per seed) and the alternating optimum — ray alignment (mean max-cos of
    atoms to normalised centred data points), L0, the share of latents that fire, and C3."""
    cfg = hierarchy_config(p)
    stream = HierarchyStream(cfg, p.batch_size, seed=0)
    x, _ = stream.held_out(p.n_eval)
    lam = optimality.sae_lambda(p.l1_coefs[0])
    rows = []
    for factor in p.width_factors:
        k_atoms = max(2, round(factor * cfg.n_features))
        cfgs = model_configs(p.d_in, k_atoms, min(p.k, k_atoms - 1), p.l1_coefs[:1], contrasts=False)
        for (_, seed), sae in train(stream, cfgs, p, tuple(range(p.n_seeds)), progress).items():
            z = optimality.nonneg_lasso(sae.W_dec, x - sae.b_dec, lam)
            s, _ = optimality.conditions(sae.W_dec, sae.b_dec, x, z, lam)
            rows.append({"width": factor, "K": k_atoms, "model": "ReLU+L1 (lasso codes)", "seed": seed,
                         "ray_alignment": optimality.ray_alignment(sae.W_dec, x, sae.b_dec), **s})
        opt = optimality.learn_dictionary(x[: p.n_fit], k_atoms, lam, n_outer=p.wide_n_outer, seed=0)
        s, _ = optimality.conditions(opt["atoms"], opt["bias"], x[: p.n_fit], opt["codes"], lam)
        rows.append({"width": factor, "K": k_atoms, "model": "optimum (alternating)", "seed": 0,
                     "ray_alignment": optimality.ray_alignment(opt["atoms"], x, opt["bias"]), **s,
                     "outer_steps": opt["n_outer"], "converged": opt["converged"]})
    return pd.DataFrame(rows)


def real_wide_limit(caches: dict[str, ActivationCache], p: P3Profile, setting: str = "smollm2",
                    progress: bool = False) -> pd.DataFrame:
    """The wide-dictionary sweep on real activations: ReLU+L1 SAEs at the first weight of ``p.real_l1_coefs`` with K
    = ``p.real_width_factors`` × d_in, per seed, measured with the exact lasso codes of their dictionaries on
    ``p.n_fit`` held-out rows (ray alignment, L0, share of latents that fire, C1–C3). No alternating optimum here:
    at these widths it does not converge within the CPU budget (our choice)."""
    stream, x = real_stream(caches, setting, p)
    x = x[: p.n_fit]
    rows = []
    for factor in p.real_width_factors:
        k_atoms = max(2, round(factor * stream.d_in))
        cfgs = model_configs(stream.d_in, k_atoms, min(p.real_k, k_atoms - 1), p.real_l1_coefs[:1], contrasts=False)
        for (name, seed), sae in train(stream, cfgs, p, tuple(range(p.n_seeds)), progress,
                                       n_steps=p.real_steps).items():
            lam = optimality.sae_lambda(sae.cfg.l1_coef)
            z = optimality.nonneg_lasso(sae.W_dec, x - sae.b_dec, lam, z0=metrics.sae_codes(sae, x).clamp_min(0))
            s, _ = optimality.conditions(sae.W_dec, sae.b_dec, x, z, lam)
            rows.append({"data": setting, "width": factor, "K": k_atoms, "model": f"{name} (lasso codes)",
                         "seed": seed, "ray_alignment": optimality.ray_alignment(sae.W_dec, x, sae.b_dec), **s})
    return pd.DataFrame(rows)


def solver_check(p: P3Profile, progress: bool = False) -> tuple[pd.DataFrame, dict, dict]:
    """Section 1: ReLU+L1 SAEs (every L1 weight) and the contrasts trained on the hierarchical data, the
    alternating optimum at the first λ on ``p.n_fit`` inputs, and ``conditions_table`` for all of them on those
    inputs. Returns (table, SAEs, optimum)."""
    stream = HierarchyStream(hierarchy_config(p), p.batch_size, seed=0)
    x, _ = stream.held_out(p.n_eval)
    x = x[: p.n_fit]
    saes = train(stream, model_configs(p.d_in, p.d_sae, p.k, p.l1_coefs), p, tuple(range(p.n_seeds)), progress)
    lam = optimality.sae_lambda(p.l1_coefs[0])
    opt = optimality.learn_dictionary(x, p.d_sae, lam, n_outer=p.n_outer, seed=0)
    return conditions_table(saes, x, lam, opt), saes, opt


def summarise(table: pd.DataFrame, keys: list[str], exclude: tuple[str, ...] = ("seed",)) -> pd.DataFrame:
    """Mean and sd over seeds of every numeric column of ``table`` per ``keys`` (``report.summary.mean_sd``)."""
    value_cols = [c for c in table.select_dtypes("number").columns if c not in (*keys, *exclude)]
    return mean_sd(table, keys, value_cols, count="n_seeds")


def _per_seed(rows: pd.DataFrame, column: str, label: str) -> claims.Quantity:
    """``column`` averaged within each seed (over L1 weights or models), then mean ± se over seeds."""
    if not len(rows) or column not in rows:
        return claims.missing(label)
    return claims.from_values(label, rows.groupby("seed")[column].mean().tolist())


def p3_claims(conds: pd.DataFrame, absorb: pd.DataFrame, antipodal: pd.DataFrame, wide: pd.DataFrame,
              profile: str, wide_real: pd.DataFrame | None = None) -> pd.DataFrame:
    """P3's predictions, decided by the claims engine (``isae.report.claims``); thresholds are our choices,
    stated in each claim. The alternating optimum is one deterministic fit (exact numbers); when it had not
    converged, its claims are not tested. ``wide_real``: ``real_wide_limit``'s table, when it ran."""
    out = []
    opt = conds[conds["model"] == "optimum (alternating)"]
    if len(opt):
        o = opt.iloc[0]
        converged = bool(o.get("converged", True))
        out.append(Claim(
            "P3", "a local optimum satisfies C1–C3 (our thresholds: C1, C2 < 0.01, C3 median < 0.05)", "hierarchy",
            AllOf(Compare(claims.exact("C1 deviation", o["c1_active_mean_dev"]), "<", claims.exact("0.01", 0.01)),
                  Compare(claims.exact("C2", o["c2"]), "<", claims.exact("0.01", 0.01)),
                  Compare(claims.exact("C3 median", o["c3_median"]), "<", claims.exact("0.05", 0.05))),
            unconverged="" if converged else f"the alternating solver had not converged after "
                                             f"{int(o['outer_steps'])} outer steps"))
    relu = conds[conds["model"].str.startswith("relu") & (conds["codes"] == "SAE encoder")]
    contrast = conds[conds["model"].isin(CONTRASTS) & (conds["codes"] == "SAE encoder")]
    out.append(Claim("P3", "a trained ReLU+L1 SAE is closer to C3 than TopK / AbsTopK", "hierarchy",
                     Compare(_per_seed(relu, "c3_median", "C3 median ReLU+L1"), "<",
                             _per_seed(contrast, "c3_median", "C3 median TopK, AbsTopK"))))
    rl = absorb[absorb["model"].str.startswith("relu")]
    out.append(Claim("P3", "absorption, not strictly nested latents (ReLU+L1: absorbed rate > nested rate)",
                     "hierarchy", Compare(_per_seed(rl, "absorbed_rate", "absorbed rate"), ">",
                                          _per_seed(rl, "nested_rate", "nested rate")),
                     note=f"child atom's extra cos with parent {rl['absorbed_direction'].mean():+.3f}" if len(rl)
                     else ""))
    for data, rows_d in antipodal.groupby("data", sort=False):
        relu_n = _per_seed(rows_d[rows_d["model"].str.startswith("relu")], "antipodal_pairs", "ReLU+L1 pairs")
        abstopk = _per_seed(rows_d[rows_d["model"] == "abstopk"], "antipodal_pairs", "AbsTopK pairs")
        synthetic = data == "synthetic, signed codes"
        out.append(Claim("P3", "dense antipodal pairs under ReLU+L1" + (" on signed data" if synthetic else "")
                         + ", not under AbsTopK", data if not synthetic else "synthetic signed",
                         AllOf(Compare(relu_n, ">", claims.exact("0", 0)), Compare(relu_n, ">", abstopk)),
                         note="pairs with cos < −0.9, mean over L1 weights within a seed"))
    w = wide[wide["model"] == "optimum (alternating)"].sort_values("K")
    if len(w) >= 2:
        first, last = w.iloc[0], w.iloc[-1]
        unconverged = [int(r.K) for r in w.itertuples() if not bool(getattr(r, "converged", True))]
        out.append(Claim("P3", "wide limit: atoms approach rays through the data as K grows (optimum)", "hierarchy",
                         Compare(claims.exact(f"ray alignment at K={int(last['K'])}", last["ray_alignment"]), ">",
                                 claims.exact(f"at K={int(first['K'])}", first["ray_alignment"])),
                         unconverged=f"the optimum had not converged at K={unconverged}" if unconverged else ""))
    for (data, model), wr in (wide_real.groupby(["data", "model"], sort=False) if wide_real is not None
                              and len(wide_real) else ()):
        ks = sorted(wr["K"].unique())
        if len(ks) < 2:
            continue
        at = {k: claims.from_values(f"ray alignment at K={k}", wr.loc[wr["K"] == k, "ray_alignment"].tolist())
              for k in (ks[0], ks[-1])}
        out.append(Claim("P3", f"wide limit on real activations: atoms approach rays through the data as K grows "
                               f"({model})", data, Compare(at[ks[-1]], ">", at[ks[0]])))
    return claims.claims_table(out, profile)
