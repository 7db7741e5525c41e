"""P2's weighted SAE (WSAE) on real activations: per-dimension loss weights γ, α × seeds trained together.

Cui, Zhang, Wang & Wang (P2) train SAEs on ‖Γ(x − x̂)‖², Γ = diag(γ_1..γ_N), with weights that are smaller
on more polysemantic input dimensions. For a language model γ_j = (variance of dim j)^α; for a vision model
γ_j = (semantic consistency of dim j)^α; α ∈ {0.5, 1} (α = 0 is the plain, uniform SAE). What P2 leaves open
is **our choice**, marked so here and in the notebook:

* Statistics on what the SAE sees: rows scaled to unit norm (the training recipe), the first ``stats_rows``
  rows of the training slice (whole images for vision). Variance is the population variance per dimension.
* **Semantic consistency** of input dim j (vision): patch tokens are max-pooled per image, the
  ``consistency_top`` images with the largest value of dim j are taken, and the consistency is the share of
  them in their most common class (class purity, ``isae.eval.interpretability.label_purity``). The features here
  are signed (a linear bottleneck); ``tail="positive"`` (default) ranks by +x_j, "negative" by −x_j, "both"
  averages the two.
* **Normalisation:** γ = s^α / sqrt(mean_j s_j^{2α}), so mean γ² = 1 (``isae.core.losses.unit_mean_square``):
  for errors spread evenly over the dimensions the weighted loss has the scale of the plain one, and one
  learning rate serves every α. α = 0 gives γ = 1 exactly (the plain loss; ``SAE.reconstruction_loss`` then
  multiplies by 1.0).
* Every α and seed of a setting trains on **one** stream, in the same order (``isae.train.trainer.train_many``);
  SAE seed s has the same initialisation for every α, so "weighted − uniform" is a paired difference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from isae.core.losses import unit_mean_square
from isae.core.models import SAE, SAEConfig
from isae.core.runs import RunKey
from isae.eval import interpretability as interp
from isae.experiments.executor import Context, Experiment, Unit
from isae.experiments.profiles import WEIGHT_ALPHAS, WeightedProfile
from isae.report.p2 import WSAE_HIGHER_IS_BETTER
from isae.report.summary import mean_sd
from isae.train.trainer import TrainConfig, train_many

TAILS = ("positive", "negative", "both")


# ------------------------------------------------------------------------------------------------------
# Per-dimension statistics and weights
# ------------------------------------------------------------------------------------------------------
def unit_rows(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def dimension_variance(x: torch.Tensor) -> torch.Tensor:
    """Population variance of every dimension of the unit-norm rows of ``x`` [n, d] → [d]."""
    return unit_rows(x.double()).var(0, unbiased=False).float()


def semantic_consistency(x: torch.Tensor, groups: torch.Tensor, labels: torch.Tensor, n_top: int,
                         tail: str = "positive") -> torch.Tensor:
    """Class purity [d] of each input dim's ``n_top`` top images (rows max-pooled per image; unit-norm rows)."""
    if tail not in TAILS:
        raise ValueError(f"tail={tail!r}; use one of {TAILS}.")
    x = unit_rows(x.float())
    y = interp.image_labels(groups, labels)

    def purity(sign: float) -> torch.Tensor:
        pooled = interp.pooled_max(lambda v: sign * v, x, groups)
        top = pooled.topk(n_top, dim=0).indices
        return interp.label_purity(y[top])[0]

    if tail == "positive":
        return purity(1.0)
    if tail == "negative":
        return purity(-1.0)
    return (purity(1.0) + purity(-1.0)) / 2


def gamma(scores: torch.Tensor, alpha: float) -> torch.Tensor:
    """P2's weights γ_j = s_j^α, normalised so that mean γ² = 1 (our choice); α = 0 gives exactly 1."""
    scores = torch.as_tensor(scores, dtype=torch.float64)
    if alpha < 0:
        raise ValueError(f"alpha={alpha} must be ≥ 0.")
    if bool((scores < 0).any()) or not bool(torch.isfinite(scores).all()):
        raise ValueError("scores must be finite and ≥ 0 (variances or consistencies).")
    if alpha == 0:
        return torch.ones(len(scores))
    s = scores.clamp_min(float(scores.max()) * 1e-8 if float(scores.max()) > 0 else 1e-12)  # γ must stay > 0
    return unit_mean_square(s**alpha).float()


def gammas(scores: torch.Tensor, alphas: tuple[float, ...] = WEIGHT_ALPHAS) -> dict[float, torch.Tensor]:
    return {float(a): gamma(scores, a) for a in alphas}


def weight_summary(weights: dict[str, dict[float, torch.Tensor]]) -> pd.DataFrame:
    """How concentrated each γ is: max/min, max/median, and the share of Σγ² on the top 1% / 10% of dims."""
    rows = []
    for setting, by_alpha in weights.items():
        for alpha, g in by_alpha.items():
            g2 = np.sort(g.double().numpy() ** 2)[::-1]
            top1, top10 = (float(g2[: max(1, int(round(f * len(g2))))].sum() / g2.sum()) for f in (0.01, 0.10))
            rows.append({"setting": setting, "alpha": alpha, "max/min": float(g.max() / g.min()),
                         "max/median": float(g.max() / g.median()), "mean γ²": float(g.pow(2).mean()),
                         "Σγ² share, top 1% dims": top1, "Σγ² share, top 10% dims": top10})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------------
# Caches: a spread of LM layers
# ------------------------------------------------------------------------------------------------------
def first_windows_rows(positions: np.ndarray, n_windows: int) -> int:
    """Rows of an LM cache that belong to its first ``n_windows`` windows (a window starts where the
    position does not increase). Caches of the same split hold the same windows in the same order, so this
    cuts a larger cache down to a smaller request's tokens."""
    positions = np.asarray(positions).astype(np.int64)
    starts = np.flatnonzero(np.r_[True, positions[1:] <= positions[:-1]])
    return int(starts[n_windows]) if n_windows < len(starts) else len(positions)


@dataclass
class LayerData:
    """The caches of one LM layer: training rows [0, stop_row) of ``train`` and all of ``heldout``."""

    layer: int
    train: object
    stop_row: int
    heldout: object


def lm_layer_caches(root: str | Path, wp: WeightedProfile, p, profile_caches: dict | None = None,
                    device: str | None = None, progress: bool = True) -> dict[int, LayerData]:
    """Open (building when missing) the train / held-out caches of every layer in ``wp.lm_layers``.

    The layer of the real profile's hook reuses its ``lm_train`` / ``lm_heldout`` caches (``profile_caches``),
    cut to the first windows that hold ``wp.lm_train_tokens`` tokens; other layers get
    ``root/lm_layer{L}_train`` and ``root/lm_layer{L}_heldout`` with the same windows (first windows of each
    split in corpus order, ``p.context_length``, ``p.lm_eval_tokens`` held-out tokens). The LM is loaded only
    if some cache has to be built.
    """
    from isae.data.activations import LMRequest, ModelLoader, layer_requests, open_or_build_all

    root = Path(root)
    requests = layer_requests(wp, p)
    opened = open_or_build_all({root / name: req for name, req in requests.items()}, ModelLoader(device), progress)
    by_name = {d.name: cache for d, cache in opened.items()}
    train_windows = LMRequest(n_tokens=wp.lm_train_tokens, context_length=p.context_length).n_windows
    out: dict[int, LayerData] = {}
    for layer in wp.lm_layers:
        if f"lm_layer{layer}_train" in by_name:
            train, heldout = by_name[f"lm_layer{layer}_train"], by_name[f"lm_layer{layer}_heldout"]
        elif profile_caches is not None:
            train, heldout = profile_caches["lm_train"], profile_caches["lm_heldout"]
        else:
            raise ValueError(f"layer {layer} is the real profile's hook ({p.lm_hook}): pass profile_caches "
                             "(notebook 02's lm_train / lm_heldout)")
        stop = first_windows_rows(train.extra("positions"), train_windows)
        out[layer] = LayerData(layer=layer, train=train, stop_row=stop, heldout=heldout)
    return out


def cache_rows(cache, stop: int | None = None, start: int = 0) -> torch.Tensor:
    """Rows [start, stop) of a cache as a float32 tensor scaled to unit norm (the SAEs' inputs)."""
    stop = len(cache) if stop is None else min(stop, len(cache))
    return unit_rows(torch.from_numpy(np.asarray(cache.rows(start, stop))).float())


def lm_statistics(cache, stop_row: int, wp: WeightedProfile) -> torch.Tensor:
    """Per-dim variance of the first min(stop_row, stats_rows) unit-norm training rows (the LM scores)."""
    return dimension_variance(cache_rows(cache, min(stop_row, wp.stats_rows)))


def vision_statistics(cache, wp: WeightedProfile, tail: str = "positive") -> torch.Tensor:
    """Per-dim semantic consistency over the first whole images within ``stats_rows`` training rows."""
    per_image = int(cache.spec["tokens_per_image"])
    stop = max(per_image, (min(len(cache), wp.stats_rows) // per_image) * per_image)
    x = cache_rows(cache, stop)
    groups = torch.as_tensor(cache.extra("image")[:stop].astype(np.int64))
    labels = torch.as_tensor(cache.extra("labels")[:stop].astype(np.int64))
    n_images = len(torch.unique(groups))
    return semantic_consistency(x, groups, labels, min(wp.consistency_top, n_images), tail=tail)


# ------------------------------------------------------------------------------------------------------
# Held-out sets
# ------------------------------------------------------------------------------------------------------
@dataclass
class TextEval:
    x: torch.Tensor
    tokens: np.ndarray
    prev_tokens: np.ndarray


@dataclass
class VisionEval:
    x: torch.Tensor
    groups: torch.Tensor
    labels: torch.Tensor


def text_eval_set(cache, device: str | torch.device = "cpu") -> TextEval:
    """Every row of a held-out LM cache (unit norm) with its token id and the token before it."""
    tokens = cache.extra("tokens").astype(np.int64)
    return TextEval(x=cache_rows(cache).to(device), tokens=tokens,
                    prev_tokens=interp.previous_tokens(tokens, cache.extra("positions")))


def vision_eval_set(cache, device: str | torch.device = "cpu") -> VisionEval:
    """Every patch token of a held-out vision cache (unit norm) with its image index and class label."""
    return VisionEval(x=cache_rows(cache).to(device), groups=torch.as_tensor(cache.extra("image").astype(np.int64)),
                      labels=torch.as_tensor(cache.extra("labels").astype(np.int64)))


def interpretability_of(encode, data: TextEval | VisionEval, n_top: int) -> pd.DataFrame:
    """Per-latent measures of ``encode`` on a held-out set (text or vision, by the type of ``data``)."""
    if isinstance(data, TextEval):
        return interp.text_interpretability(encode, data.x, data.tokens, data.prev_tokens, n_top)
    return interp.vision_interpretability(encode, data.x, data.groups, data.labels, n_top)


def chance_levels(data: TextEval | VisionEval, n_top: int, seed: int = 0) -> dict[str, float]:
    """Purity of ``n_top`` random held-out inputs (tokens, contexts or images): what a latent scores by chance."""
    if isinstance(data, TextEval):
        return {"token_purity": interp.random_purity(data.tokens, n_top, seed=seed),
                "context_purity": interp.random_purity(data.prev_tokens, n_top, seed=seed)}
    return {"class_purity": interp.random_purity(interp.image_labels(data.groups, data.labels).numpy(), n_top,
                                                 seed=seed)}


# ------------------------------------------------------------------------------------------------------
# Training and evaluation
# ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, order=True)
class WSAEKey(RunKey):
    """A weighted-SAE run: a ``RunKey`` with its loss-weight exponent α and, for a uniform control at a smaller
    k, that k. ``variant`` is "alpha=0.5" (α at the setting's k) or "uniform k=8" (a control)."""

    alpha: float = 0.0
    control_k: int | None = None

    @classmethod
    def of(cls, alpha: float, seed: int, control_k: int | None = None) -> WSAEKey:
        variant = f"uniform k={control_k}" if control_k is not None else f"alpha={alpha:g}"
        return cls(variant=variant, seed=seed, alpha=0.0 if control_k is not None else float(alpha),
                   control_k=control_k)

    @property
    def control(self) -> bool:
        return self.control_k is not None

    def columns(self) -> dict:
        return {"variant": self.variant, "alpha": self.alpha, "control_k": self.control_k, "seed": self.seed}


def make_saes(d_in: int, d_sae: int, k: int, weights: dict[float, torch.Tensor], n_seeds: int,
              control_ks: tuple[int, ...] = ()) -> dict[WSAEKey, SAE]:
    """TopK SAEs, one per (α, seed) with loss weights γ(α), plus uniform controls with smaller k (one per
    (k_c, seed)). Seed s has the same initialisation for every α (and for the controls)."""
    saes = {}
    for alpha, g in weights.items():
        for s in range(n_seeds):
            sae = SAE(SAEConfig(d_in=d_in, d_sae=d_sae, k=k, architecture="topk"), seed=s)
            sae.set_loss_weight(g)
            saes[WSAEKey.of(alpha, s)] = sae
    for kc in control_ks:
        for s in range(n_seeds):
            saes[WSAEKey.of(0.0, s, kc)] = SAE(SAEConfig(d_in=d_in, d_sae=d_sae, k=kc, architecture="topk"), seed=s)
    return saes


def train_setting(setting: str, stream, weights: dict[float, torch.Tensor], d_sae: int, k: int, n_seeds: int,
                  train_cfg: TrainConfig, control_ks: tuple[int, ...] = (),
                  progress: bool = True) -> tuple[dict[WSAEKey, SAE], pd.DataFrame]:
    """Train every (α, seed) SAE of one setting, and the uniform controls, on ``stream`` (one pass, one order).
    Returns (SAEs, log)."""
    saes = make_saes(stream.d_in, d_sae, k, weights, n_seeds, control_ks)
    log = train_many(saes, stream, train_cfg, progress=progress)
    log.insert(0, "setting", setting)
    by_name = {str(key): key for key in saes}
    keys = [by_name[n] for n in log["model"]]
    log["variant"] = [key.variant for key in keys]
    log["alpha"] = [key.alpha for key in keys]
    log["seed"] = [key.seed for key in keys]
    return saes, log


@torch.no_grad()
def reconstruction(sae: SAE, x: torch.Tensor, chunk: int = 4096) -> dict[str, float]:
    """Unweighted MSE mean‖x − x̂‖² (comparable across α), the SAE's own weighted MSE, L0 and dead fraction."""
    mse, wmse, l0 = [], [], []
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool, device=x.device)
    for s in range(0, x.shape[0], chunk):
        xs = x[s : s + chunk]
        z = sae.encode(xs)
        err = xs - sae.decode(z)
        mse.append(err.pow(2).sum(1))
        wmse.append((err * sae.loss_weight).pow(2).sum(1))
        l0.append((z != 0).sum(1).float())
        fired |= (z != 0).any(0)
    return {"mse": float(torch.cat(mse).mean()), "weighted_mse": float(torch.cat(wmse).mean()),
            "l0": float(torch.cat(l0).mean()), "dead_frac": float((~fired).float().mean())}


def evaluate_setting(setting: str, saes: dict[WSAEKey, SAE], data: TextEval | VisionEval, n_top: int,
                     progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs, latents): one row per SAE (reconstruction + interpretability averages over live latents) and
    the per-latent measures of every SAE."""
    from isae.progress import progress_bar

    runs, latents = [], []
    for key, sae in progress_bar(saes.items(), desc=f"evaluating {setting}", disable=not progress):
        per_latent = interpretability_of(sae.encode, data, n_top)
        runs.append({"setting": setting, "variant": key.variant, "alpha": key.alpha, "k": sae.cfg.k,
                     "control": key.control, "seed": key.seed, **reconstruction(sae, data.x),
                     **interp.summarise_latents(per_latent)})
        latents.append(per_latent.assign(setting=setting, variant=key.variant, alpha=key.alpha, k=sae.cfg.k,
                                         control=key.control, seed=key.seed))
    return pd.DataFrame(runs), pd.concat(latents, ignore_index=True)


def input_dims_reference(setting: str, data: TextEval | VisionEval, n_top: int) -> dict:
    """The interpretability measures of the raw input dimensions (identity "encoder", positive tail)."""
    return {"setting": setting, **interp.summarise_latents(interpretability_of(lambda v: v, data, n_top))}


@dataclass
class SettingResult:
    """Everything one setting (an LM layer or the vision model) produced."""

    runs: pd.DataFrame
    """One row per (α, seed): reconstruction and interpretability averages on the held-out set."""
    latents: pd.DataFrame
    """Per-latent measures of every SAE."""
    log: pd.DataFrame
    chance: dict[str, float]
    """Purity of random held-out inputs (the chance level of each purity)."""
    inputs: dict
    """The same measures for the raw input dimensions (positive tail)."""
    info: dict
    """Rows, steps, sizes and seconds."""
    saes: dict[WSAEKey, SAE]


def run_setting(setting: str, train_cache, stop_row: int, heldout_cache, weights: dict[float, torch.Tensor],
                d_sae: int, k: int, wp: WeightedProfile, device: str | None = None,
                progress: bool = True) -> SettingResult:
    """Train every (α, seed) TopK SAE of a setting on one pass over rows [0, stop_row) of ``train_cache``
    (one stream, one order), then evaluate all of them on every row of ``heldout_cache``.

    The held-out cache decides the measures: rows with a "tokens" extra are text, rows with "labels" and
    "image" extras are vision.
    """
    import time

    started = time.perf_counter()
    stream = train_cache.stream(wp.batch_size, seed=0, stop_row=stop_row)
    n_steps = stream.steps_per_pass
    cfg = TrainConfig(n_steps=n_steps, batch_size=wp.batch_size, lr=wp.lr, log_every=min(wp.log_every, n_steps),
                      checkpoint_every=n_steps, device=device,
                      geometric_median_samples=min(8192, n_steps * wp.batch_size))
    dev = cfg.resolved_device()
    is_text = "tokens" in heldout_cache.manifest["shards"][0]["extras"]
    data = text_eval_set(heldout_cache, dev) if is_text else vision_eval_set(heldout_cache, dev)
    saes, log = train_setting(setting, stream, weights, d_sae, k, wp.n_seeds, cfg, control_ks=wp.control_ks(k),
                              progress=progress)
    trained = time.perf_counter()
    runs, latents = evaluate_setting(setting, saes, data, wp.n_top, progress=False)
    info = {"setting": setting, "kind": "text" if is_text else "vision", "d_in": stream.d_in, "d_sae": d_sae,
            "expansion": d_sae / stream.d_in, "k": k, "control_ks": ",".join(map(str, wp.control_ks(k))),
            "train_rows": n_steps * wp.batch_size, "steps": n_steps,
            "heldout_rows": int(data.x.shape[0]), "n_saes": len(saes),
            "train_seconds": round(trained - started, 1), "eval_seconds": round(time.perf_counter() - trained, 1)}
    return SettingResult(runs=runs, latents=latents, log=log, chance=chance_levels(data, wp.n_top),
                         inputs=input_dims_reference(setting, data, wp.n_top), info=info, saes=saes)


# ------------------------------------------------------------------------------------------------------
# Every setting of the notebook
# ------------------------------------------------------------------------------------------------------
Source = tuple  # (train cache, training rows used, held-out cache)


def setting_sources(caches: dict, layers: dict[int, LayerData]) -> dict[str, Source]:
    """Each setting's (train cache, training rows used, held-out cache): "layer<L>" for every LM layer of
    ``layers``, then "vision" (notebook 02's vision caches, every training row)."""
    sources = {f"layer{L}": (d.train, d.stop_row, d.heldout) for L, d in layers.items()}
    sources["vision"] = (caches["vision_train"], len(caches["vision_train"]), caches["vision_heldout"])
    return sources


def setting_weights(sources: dict[str, Source], wp: WeightedProfile, tail: str = "positive"
                    ) -> tuple[dict[str, torch.Tensor], dict[str, dict[float, torch.Tensor]]]:
    """(scores, weights) by setting: per-dim variance for an LM layer, semantic consistency (``tail``) for vision,
    and γ(α) for every α of ``wp``."""
    scores = {s: vision_statistics(train, wp, tail=tail) if s == "vision" else lm_statistics(train, stop, wp)
              for s, (train, stop, _) in sources.items()}
    return scores, {s: gammas(v, wp.alphas) for s, v in scores.items()}


def setting_size(setting: str, wp: WeightedProfile) -> tuple[int, int]:
    """(K, k) of a setting's SAEs."""
    return (wp.vision_d_sae, wp.vision_k) if setting == "vision" else (wp.lm_d_sae, wp.lm_k)


def run_settings(sources: dict[str, Source], weights: dict[str, dict[float, torch.Tensor]], wp: WeightedProfile,
                 device: str | None = None, progress: bool = True, only: tuple[str, ...] | None = None,
                 log=print) -> dict[str, SettingResult]:
    """``run_setting`` for every setting of ``sources`` (or those in ``only``), in order, with one line each."""
    results = {}
    for setting, (train_cache, stop_row, heldout_cache) in sources.items():
        if only is not None and setting not in only:
            continue
        d_sae, k = setting_size(setting, wp)
        results[setting] = run_setting(setting, train_cache, stop_row, heldout_cache, weights[setting], d_sae, k,
                                       wp, device=device, progress=progress)
        r = results[setting].info
        log(f"{setting}: {r['n_saes']} SAEs (K={r['d_sae']} = {r['expansion']:.1f}×{r['d_in']}, k={r['k']}; "
            f"uniform controls k={r['control_ks']}) on {r['steps']} steps × {wp.batch_size} = {r['train_rows']:,} "
            f"rows; {r['heldout_rows']:,} held-out rows; train {r['train_seconds']:.0f} s, eval "
            f"{r['eval_seconds']:.0f} s")
    return results


# ------------------------------------------------------------------------------------------------------
# Tables
# ------------------------------------------------------------------------------------------------------
def summarise(runs: pd.DataFrame, measures: tuple[str, ...]) -> pd.DataFrame:
    """Mean and sd over seeds (``<m>_sd``) per (setting, variant), with α, k and n_seeds (``mean_sd``)."""
    return mean_sd(runs, ["setting", "variant", "alpha", "k"], measures, count="n_seeds")


def paired_gains(runs: pd.DataFrame, measures: tuple[str, ...]) -> pd.DataFrame:
    """Weighted (α > 0) minus uniform (α = 0) at the same k, paired by seed, per setting, α and measure
    (uniform controls at smaller k are left out).

    Columns: uniform (mean over seeds), weighted, diff and diff_sd (mean ± sd of the per-seed differences),
    gain_pct = 100 · diff / uniform (relative), and better (the change goes the measure's good direction).
    """
    rows = []
    if "control" in runs:
        runs = runs[~runs["control"].astype(bool)]
    for (setting, alpha), w in runs[runs["alpha"] > 0].groupby(["setting", "alpha"], sort=False):
        u = runs[(runs["setting"] == setting) & (runs["alpha"] == 0)].set_index("seed")
        w = w.set_index("seed")
        seeds = sorted(set(u.index) & set(w.index))
        for m in measures:
            if m not in runs:
                continue
            d = w.loc[seeds, m].to_numpy() - u.loc[seeds, m].to_numpy()
            base = float(u.loc[seeds, m].mean())
            diff = float(np.mean(d))
            sd = float(np.std(d, ddof=1)) if len(d) > 1 else float("nan")
            up = WSAE_HIGHER_IS_BETTER.get(m, True)
            rows.append({"setting": setting, "alpha": alpha, "measure": m, "uniform": base,
                         "weighted": float(w.loc[seeds, m].mean()), "diff": diff, "diff_sd": sd,
                         "gain_pct": 100 * diff / base if base else float("nan"),
                         "better": bool(diff > 0) if up else bool(diff < 0),
                         "beyond_2se": bool(abs(diff) > 2 * sd / math.sqrt(len(d))) if len(d) > 1 else False,
                         "n_seeds": len(d)})
    return pd.DataFrame(rows)


def frontier_comparison(runs: pd.DataFrame, measure: str) -> pd.DataFrame:
    """Every weighted SAE's ``measure`` beside the uniform SAEs' at the same *unweighted* MSE.

    Weighting raises the unweighted MSE, and a plain SAE that reconstructs worse (smaller k) may also look
    purer. The **uniform frontier** of a (setting, seed) is the measure of its uniform SAEs — α = 0 at the
    setting's k and the controls at smaller k — against their MSE, linearly interpolated; ``excess`` is the
    weighted SAE's measure minus the frontier's at its MSE (NaN when its MSE lies outside the frontier's
    range: no extrapolation). Returns one row per (setting, α): mean and sd over seeds of weighted, frontier
    and excess, with the number of seeds that could be matched.
    """
    rows = []
    for (setting, seed), g in runs.groupby(["setting", "seed"], sort=False):
        u = g[g["alpha"] == 0].sort_values("mse")
        for _, w in g[g["alpha"] > 0].iterrows():
            inside = len(u) >= 2 and u["mse"].min() <= w["mse"] <= u["mse"].max()
            f = float(np.interp(w["mse"], u["mse"], u[measure])) if inside else float("nan")
            rows.append({"setting": setting, "alpha": w["alpha"], "seed": seed, "mse": w["mse"],
                         "weighted": w[measure], "frontier": f, "excess": w[measure] - f})
    per_seed = pd.DataFrame(rows)
    if per_seed.empty:
        return per_seed
    g = per_seed.groupby(["setting", "alpha"], sort=False)
    out = g[["mse", "weighted", "frontier", "excess"]].mean()
    out["excess_sd"] = g["excess"].std()
    out["n_matched"] = g["excess"].count()
    out.insert(0, "measure", measure)
    return out.reset_index()


class P2Weighted(Experiment):
    """Notebook 05: the weighted and uniform SAEs of every setting (LM layers, vision) with their measures. A unit
    is one setting (all α and seeds on one stream); its SAEs are not kept (``saes`` is empty), as the notebook
    reads only the tables. ``load`` gives a ``SettingResult`` per setting."""

    name = "p2_weighted"

    def __init__(self, sources: dict[str, Source], weights: dict, wp: WeightedProfile, p, tail: str):
        self.sources, self.weights, self.wp, self.p, self.tail = sources, weights, wp, p, tail

    def identity(self) -> dict:
        return {"sizes": self.wp.to_dict(), "real_sizes": self.p.to_dict(), "consistency_tail": self.tail}

    def units(self) -> list[Unit]:
        return [Unit(setting, setting, float(stop * setting_size(setting, self.wp)[0] * train.d_in))
                for setting, (train, stop, _) in self.sources.items()]

    def run_unit(self, unit: Unit, ctx: Context) -> SettingResult:
        r = run_settings(self.sources, self.weights, self.wp, device=str(ctx.device), progress=ctx.progress,
                         only=(unit.key,), log=lambda line: ctx.log(ctx.label + line))[unit.key]
        return replace(r, saes={})

    def merge(self, results: list[SettingResult], ctx: Context) -> dict[str, SettingResult]:
        return {unit.key: r for unit, r in zip(self.units(), results)}
