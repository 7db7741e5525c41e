"""P2's toy model of superposition: when does a tied SAE recover the true features, and does weighting help?

Cui, Zhang, Wang & Wang (P2) model superposition as x_p = W_p x: n = 200 non-negative sparse true features
x ∈ R^n are written into n_p = 20 observed ("polysemantic") dimensions. A tied SAE with n_m latents reads
them back, x_m = σ(W_m x_p), x̂_p = W_mᵀ x_m, and is trained on ‖Γ(x_p − x̂_p)‖² (Γ = I: the plain SAE;
Γ = diag(γ): P2's weighted SAE, WSAE). P2 claims the SAE recovers the true features (rows of W_m ∝
columns of W_p) only when (1) the features are extremely sparse, (2) σ is a sparse activation and
(3) n_m ≥ n; and that weights smaller on more polysemantic input dims narrow the gap between the SAE loss
and the loss on the true features.

Everything P2 does not specify is **our choice** and is marked so below:

* non-zero feature values ~ Uniform(0, 1) (as in Elhage et al.'s toy models); feature i is zero with
  probability S, independently of the others;
* W_p: "gaussian" — i.i.d. N(0, 1) entries, columns scaled to unit norm (every input dim is equally
  polysemantic); "heterogeneous" — input dim j loads on each feature with probability ρ_j, ρ_j geometric
  from ``density_min`` to 1 over the n_p dims, Gaussian values, unit columns (dims range from nearly
  monosemantic to fully polysemantic, which P2's weighting principle needs to have anything to act on);
* the SAE has no biases (P2's equations have none); ``bias=True`` adds a per-latent encoder bias;
* rows of W_m are initialised as random unit vectors; Adam on W_m (and b); no atom normalisation (the tied
  loss fixes the atom scale by itself: a recovered atom has unit norm);
* TopK keeps the k = 2 largest pre-activations and clips them at 0 (codes ≥ 0, like isae's TopK);
  JumpReLU is pre·1[pre > 0.1] with a fixed threshold.

The toy data (``isae.toy.data``) and the tied SAE bank (``isae.toy.model``) are the toy's own pieces; the
bank trains with ``isae.train.trainer.train_bank``, the loss is ``isae.core.losses.weighted_mse``, the tables
are summarised with ``isae.report.summary.mean_sd``, the claims live in ``isae.report.p2`` and the figures in
``isae.plots.p2``. This module holds the drivers: conditions, experiments and ground-truth measures. All
models of an experiment see the same batches in the same order (one seeded stream); seeds differ only in
the SAE init.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, field

import pandas as pd
import torch

from isae.core.runs import resolve_device
from isae.eval.metrics import match_atoms
from isae.experiments.executor import Context, Experiment, Unit
from isae.experiments.profiles import ToyProfile
from isae.progress import progress_bar
from isae.report.summary import mean_sd
from isae.toy.data import ToyConfig, ToyStream, wsae_weights
from isae.toy.model import ACTIVATION_NAMES, ToySAE, ToySAEConfig, activate
from isae.train.trainer import BankTrainConfig, train_bank

#: Notebook 04's experiments (``experiment_conditions``): the sparsity sweep, the hidden-size ablation, the WSAE.
TOY_EXPERIMENTS = ("sparsity", "hidden", "weighted")
RECOVERY_THRESHOLD = 0.9
"""A true feature is *recovered* when its Hungarian-matched atom has |cos| above this (P2-style, our value)."""
PROBE_VALUE = 0.5
"""Value of the single active feature in the isolated-feature probe: E[x_i | x_i > 0] under Uniform(0, 1)."""


def antipodal_fraction(atoms: torch.Tensor, threshold: float = -0.9) -> float:
    """Fraction of atoms with an (almost) antipodal partner: min_j cos(a_i, a_j) < ``threshold``.

    A tied ReLU SAE can reconstruct *linearly* with pairs ±a (relu(aᵀx) a − relu(−aᵀx) a = (aᵀx) a): a high
    fraction says the SAE has built a dense linear code instead of finding the sparse features."""
    if atoms.shape[0] < 2:
        return 0.0
    u = atoms / atoms.norm(dim=1, keepdim=True).clamp_min(1e-12)
    cos = (u @ u.T).fill_diagonal_(1.0)
    return float((cos.min(1).values < threshold).float().mean())


@torch.no_grad()
def toy_metrics(sae: ToySAE, w_p: torch.Tensor, x: torch.Tensor, x_p: torch.Tensor,
                gamma: torch.Tensor | None = None) -> list[dict[str, float]]:
    """Ground-truth measures of every model of the bank on held-out (x, x_p). One dict per model.

    * ``recovered`` — fraction of true features (columns of W_p) whose Hungarian-matched atom (row of W_m;
      ``isae.eval.metrics.match_atoms`` on |cos|) has |cos| > 0.9; unmatched features (n_m < n) count as missed.
    * ``matched_cos`` — mean matched |cos| over the n true features (unmatched count 0).
    * ``features_per_latent`` — the average number of true features that activate a latent (1 =
      monosemantic): for latent m, P[m,i] = E_x[ |x_i · (W_m W_p)[m,i]| · 1(x_m ≠ 0) ] is how much feature i
      drives the latent's pre-activation when the latent fires; its participation ratio (Σ_i P)²/Σ_i P² is
      the effective number of features behind the latent, averaged over live latents (that fire on x).
    * ``isolated_features_per_latent`` — P2's literal count: the number of features i whose isolated input
      (x = 0.5·e_i) makes the latent fire, averaged over latents that fire for at least one of them.
    * ``live_frac`` — fraction of latents that fire on x.
    * ``antipodal_frac`` — fraction of live atoms with an antipodal partner (``antipodal_fraction``).
    * ``mse_rel`` — E‖x_p − x̂_p‖² / E‖x_p‖².
    * ``loss_sae`` — the (weighted) SAE objective, relative: E‖Γ(x_p − x̂_p)‖² / E‖Γx_p‖² (Γ = ``gamma`` or I).
    * ``loss_true`` — reconstruction of the *true* features, relative: E‖x − x̃‖² / E‖x‖², where the SAE's
      estimate of feature i is the coefficient of its matched atom in x̂_p projected on w_i,
      x̃_i = x_m[π(i)] · ‖W_m[π(i)]‖ · cos(W_m[π(i)], w_i) (0 for unmatched features).
    * ``gap`` = loss_true − loss_sae: how far the objective the SAE minimises is from the one we care about.
    """
    x_m, x_hat = sae(x_p)
    pre = sae.preact(x_p)
    rows = []
    probe = activate(sae.preact(PROBE_VALUE * w_p.T), sae.cfg)  # [M, n_features, n_latents]
    g = gamma if gamma is not None else torch.ones(w_p.shape[0], device=w_p.device)
    for i in range(sae.n_models):
        W = sae.W[i]
        fires = x_m[i] != 0  # [N, n_m]
        live = fires.any(0)
        G = W @ w_p  # [n_m, n]: pre-activation of latent m per unit of feature i
        P = G.abs() * (fires.T.to(x.dtype) @ x)  # [n_m, n]
        pr = P.sum(1).pow(2) / P.pow(2).sum(1).clamp_min(1e-30)
        iso = (probe[i] != 0).sum(0)  # features that fire each latent in isolation
        m = match_atoms(w_p.T, W)
        cos = torch.as_tensor(m.cos, dtype=x.dtype, device=x.device)
        feats = torch.as_tensor(m.rows, device=x.device)
        lats = torch.as_tensor(m.perm, device=x.device)
        x_tilde = torch.zeros_like(x)
        x_tilde[:, feats] = x_m[i][:, lats] * W[lats].norm(dim=1) * cos
        err = x_p - x_hat[i]
        loss_sae = float((err * g).pow(2).sum() / (x_p * g).pow(2).sum())
        loss_true = float((x - x_tilde).pow(2).sum() / x.pow(2).sum())
        rows.append({
            "recovered": float((cos.abs() > RECOVERY_THRESHOLD).sum()) / w_p.shape[1],
            "matched_cos": float(cos.abs().sum()) / w_p.shape[1],
            "features_per_latent": float(pr[live].mean()) if bool(live.any()) else float("nan"),
            "isolated_features_per_latent": (float(iso[iso > 0].float().mean()) if bool((iso > 0).any())
                                             else float("nan")),
            "live_frac": float(live.float().mean()),
            "antipodal_frac": antipodal_fraction(W[live]),
            "l0": float(fires.sum(1).float().mean()),
            "mse_rel": float(err.pow(2).sum() / x_p.pow(2).sum()),
            "loss_sae": loss_sae,
            "loss_true": loss_true,
            "gap": loss_true - loss_sae,
            "pre_norm": float(pre[i].norm(dim=1).mean()),
        })
    return rows


# ------------------------------------------------------------------------------------------------------
# Experiments
# ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ToyCondition:
    """One cell of an experiment: an SAE configuration, the data sparsity and the loss weighting."""

    sparsity: float
    activation: str = "topk"
    n_latents: int = 200
    alpha: float = 0.0
    """WSAE exponent: γ_j = PR_j^(−α) (0 = uniform weights)."""
    bias: bool = False
    l1_coef: float = 0.0

    @property
    def label(self) -> str:
        name = ACTIVATION_NAMES[self.activation]
        if self.l1_coef > 0:
            name += f" + L1 ({self.l1_coef:g})"
        if self.bias:
            name += " + bias"
        return name


@dataclass
class ToyResult:
    """Per-model metrics (one row per condition × seed), the training log and the trained banks."""

    runs: pd.DataFrame
    log: pd.DataFrame
    banks: dict[tuple, ToySAE] = field(default_factory=dict)
    stream: ToyStream | None = None


def toy_stream(p: ToyProfile, w_p: str = "gaussian", device: str | torch.device | None = None) -> ToyStream:
    """The seeded stream every bank of an experiment at the sizes of ``p`` trains on."""
    data_cfg = ToyConfig(n_features=p.n_features, n_input=p.n_input, w_p=w_p, seed=p.data_seed)
    return ToyStream(data_cfg, p.batch_size, seed=p.data_seed, device=resolve_device(device))


def toy_banks(conditions: Sequence[ToyCondition]) -> dict[tuple, list[ToyCondition]]:
    """The banks of an experiment, in training order: conditions sharing (activation, n_latents, bias, l1) by that
    key (the key of ``ToyResult.banks``)."""
    groups: dict[tuple, list[ToyCondition]] = {}
    for c in dict.fromkeys(conditions):
        groups.setdefault((c.activation, c.n_latents, c.bias, c.l1_coef), []).append(c)
    return groups


def run_toy_experiment(conditions: Sequence[ToyCondition], p: ToyProfile, w_p: str = "gaussian",
                       device: str | torch.device | None = None, progress: bool = True,
                       only: Collection[tuple] | None = None) -> ToyResult:
    """Train ``p.n_seeds`` seeds of every condition on one seeded stream and measure them on held-out data.

    Conditions sharing (activation, n_latents, bias, l1) are trained together as one bank; every model sees
    the same batches (coupled across sparsities). Metrics are computed on held-out inputs at each model's S
    and with its own Γ (``loss_sae`` is the objective it was trained on). ``device``: None → cuda when
    available, else cpu. ``only``: train just these banks (``toy_banks`` keys; a rank's share), measured as in
    the whole experiment.
    """
    stream = toy_stream(p, w_p, device)
    train_cfg = BankTrainConfig(n_steps=p.n_steps, lr=p.lr, log_every=p.log_every)
    groups = {key: conds for key, conds in toy_banks(conditions).items() if only is None or key in only}
    levels = sorted({c.sparsity for c in conditions})
    x_eval, xp_eval = stream.held_out(p.n_eval, sparsity=levels)
    runs, logs, banks = [], [], {}
    for key, conds in progress_bar(groups.items(), desc=f"training {len(conditions)} conditions × {p.n_seeds} seeds",
                           unit="bank", disable=not progress):
        activation, n_latents, bias, l1 = key
        members = [(c, s) for c in conds for s in range(p.n_seeds)]
        sae = ToySAE(ToySAEConfig(n_input=p.n_input, n_latents=n_latents, activation=activation, bias=bias,
                                  l1_coef=l1), seeds=[s for _, s in members]).to(device)
        sae.set_gamma(torch.stack([wsae_weights(stream.w_p, c.alpha) for c, _ in members]))
        log = train_bank(sae, stream.coupled([c.sparsity for c, _ in members]), train_cfg, progress=False)
        which = [levels.index(c.sparsity) for c, _ in members]
        for (c, s), i in zip(members, range(len(members))):
            one = _slice(sae, i)
            row = toy_metrics(one, stream.w_p, x_eval[which[i]], xp_eval[which[i]], gamma=sae.gamma[i])[0]
            runs.append({**asdict(c), "model": c.label, "seed": s, "w_p": w_p, "bank_index": i, **row})
        log["condition"] = [members[i][0].label for i in log["model"]]
        log["sparsity"] = [members[i][0].sparsity for i in log["model"]]
        log["alpha"] = [members[i][0].alpha for i in log["model"]]
        log["n_latents"] = n_latents
        log["seed"] = [members[i][1] for i in log["model"]]
        logs.append(log.drop(columns="model"))
        banks[key] = sae
    return ToyResult(runs=pd.DataFrame(runs), log=pd.concat(logs, ignore_index=True), banks=banks, stream=stream)


def _slice(sae: ToySAE, i: int) -> ToySAE:
    """Model i of a bank as a one-model bank (shares nothing with the original)."""
    one = ToySAE(sae.cfg, seeds=(sae.seeds[i],)).to(sae.W.device)
    with torch.no_grad():
        one.W.copy_(sae.W[i : i + 1])
        one.b.copy_(sae.b[i : i + 1])
        one.gamma.copy_(sae.gamma[i : i + 1])
    return one


def ground_truth_reference(conditions: Sequence[ToyCondition], p: ToyProfile, w_p: str = "gaussian") -> pd.DataFrame:
    """The same measures for the *ground-truth* SAE (atoms = columns of W_p, no bias) at each condition.

    This is the best a tied SAE can do at the given activation: its ``features_per_latent`` is the floor that
    superposition interference leaves, and comparing its ``loss_sae`` with a trained SAE's shows whether the
    SAE objective prefers the true features at all.
    """
    stream = ToyStream(ToyConfig(n_features=p.n_features, n_input=p.n_input, w_p=w_p, seed=p.data_seed),
                       p.batch_size, seed=p.data_seed)
    keys = list(dict.fromkeys((c.sparsity, c.activation, c.alpha) for c in conditions))
    levels = sorted({k[0] for k in keys})
    x_eval, xp_eval = stream.held_out(p.n_eval, sparsity=levels)
    rows = []
    for s, activation, alpha in keys:
        sae = ToySAE.from_atoms(ToySAEConfig(n_input=p.n_input, activation=activation), stream.w_p.T)
        gamma = wsae_weights(stream.w_p, alpha)
        j = levels.index(s)
        row = toy_metrics(sae, stream.w_p, x_eval[j], xp_eval[j], gamma=gamma)[0]
        rows.append({"sparsity": s, "activation": activation, "alpha": alpha, "n_latents": p.n_features,
                     "model": f"{ACTIVATION_NAMES[activation]} (ground truth)", "w_p": w_p, **row})
    return pd.DataFrame(rows)


TOY_METRICS = ("recovered", "matched_cos", "features_per_latent", "isolated_features_per_latent", "live_frac",
               "antipodal_frac", "mse_rel", "loss_sae", "loss_true", "gap")


def summarise_toy(runs: pd.DataFrame, keys: Sequence[str] = ("model", "activation", "n_latents", "sparsity", "alpha"),
                  metrics: Sequence[str] = TOY_METRICS) -> pd.DataFrame:
    """Mean and sd (``<metric>_sd``) over seeds per condition, with the seed count (``mean_sd``)."""
    return mean_sd(runs, keys, metrics, count="n_seeds")


def gap_under_weights(result: ToyResult, alphas: Sequence[float], n_eval: int) -> pd.DataFrame:
    """The gap loss_true − loss_sae(Γ_α) of every trained model, re-evaluated under each α's weights.

    Holding the SAE fixed isolates P2's claim about the *loss functions*: does the weighted objective sit
    closer to the true-feature loss than the plain one, for the same parameters?
    """
    stream = result.stream
    runs = result.runs
    levels = sorted(set(runs["sparsity"]))
    x_eval, xp_eval = stream.held_out(n_eval, sparsity=levels)
    out = []
    for key, bank in result.banks.items():
        sub = runs[(runs["activation"] == key[0]) & (runs["n_latents"] == key[1]) & (runs["bias"] == key[2])
                    & (runs["l1_coef"] == key[3])]
        for _, row in sub.iterrows():
            one = _slice(bank, int(row["bank_index"]))
            j = levels.index(row["sparsity"])
            for a in alphas:
                m = toy_metrics(one, stream.w_p, x_eval[j], xp_eval[j], gamma=wsae_weights(stream.w_p, a))[0]
                out.append({"model": row["model"], "sparsity": row["sparsity"], "trained_alpha": row["alpha"],
                            "seed": row["seed"], "eval_alpha": a, "loss_true": m["loss_true"],
                            "loss_sae": m["loss_sae"], "gap": m["gap"]})
    return pd.DataFrame(out)


def experiment_conditions(name: str, p: ToyProfile) -> tuple[list[ToyCondition], str]:
    """(conditions, W_p) of one of notebook 04's experiments (``TOY_EXPERIMENTS``)."""
    if name == "sparsity":
        return sweep_conditions(p), "gaussian"
    if name == "hidden":
        return hidden_conditions(p), "gaussian"
    if name == "weighted":
        return weighted_conditions(p), p.weight_w_p
    raise ValueError(f"experiment {name!r}: use one of {TOY_EXPERIMENTS}.")


def sweep_conditions(p: ToyProfile) -> list[ToyCondition]:
    """Sparsity sweep × activation ablation (n_m = n), plus the extra ReLU + L1 + bias row at the ablation S."""
    conds = [ToyCondition(sparsity=s, activation=a, n_latents=p.n_latents)
             for a, s in itertools.product(p.activations, p.sparsities)]
    if p.extra_relu_l1 > 0:
        conds.append(ToyCondition(sparsity=p.ablation_sparsity, activation="relu", n_latents=p.n_latents,
                                  bias=True, l1_coef=p.extra_relu_l1))
    return conds


def hidden_conditions(p: ToyProfile, activation: str = "topk") -> list[ToyCondition]:
    """Hidden-size ablation at the ablation sparsity: n_m = ratio · n for each ratio."""
    return [ToyCondition(sparsity=p.ablation_sparsity, activation=activation,
                         n_latents=max(1, int(round(r * p.n_features)))) for r in p.hidden_sizes]


def weighted_conditions(p: ToyProfile, activation: str = "topk") -> list[ToyCondition]:
    """The WSAE experiment: α × S at n_m = n."""
    return [ToyCondition(sparsity=s, activation=activation, n_latents=p.n_latents, alpha=a)
            for s, a in itertools.product(p.weight_sparsities, p.weight_alphas)]


class P2Toy(Experiment):
    """Notebook 04: the three toy experiments (``TOY_EXPERIMENTS``). A unit is one bank (every condition and seed
    that trains in one tensor), named by its experiment and key; ``load`` gives a ``ToyResult`` per experiment,
    its banks on the device."""

    name = "p2_toy"

    def __init__(self, p: ToyProfile):
        self.p = p

    def identity(self) -> dict:
        return {"sizes": self.p.to_dict()}

    def units(self) -> list[Unit]:
        units = []
        for name in TOY_EXPERIMENTS:
            for key, conds in toy_banks(experiment_conditions(name, self.p)[0]).items():
                units.append(Unit(f"{name}-" + "-".join(str(k) for k in key), (name, key),
                                  float(len(conds) * self.p.n_seeds * key[1])))
        return units

    def run_unit(self, unit: Unit, ctx: Context) -> dict:
        name, key = unit.key
        conditions, w_p = experiment_conditions(name, self.p)
        r = run_toy_experiment(conditions, self.p, w_p=w_p, device=ctx.device, progress=ctx.progress, only=[key])
        ctx.log(f"{ctx.label}{name}: bank {key} ({len(r.runs)} models)")
        return {"runs": r.runs, "log": r.log, "bank": r.banks[key].cpu()}

    def merge(self, results: list[dict], ctx: Context) -> dict:
        merged: dict[str, dict] = {}
        for unit, r in zip(self.units(), results):
            name, key = unit.key
            m = merged.setdefault(name, {"runs": [], "log": [], "banks": {}})
            m["runs"].append(r["runs"])
            m["log"].append(r["log"])
            m["banks"][key] = r["bank"]
        return {name: {"runs": pd.concat(m["runs"], ignore_index=True), "log": pd.concat(m["log"], ignore_index=True),
                       "banks": m["banks"]} for name, m in merged.items()}

    def load(self, merged: dict, ctx: Context) -> dict[str, ToyResult]:
        return {name: ToyResult(runs=m["runs"], log=m["log"],
                                banks={key: bank.to(ctx.device) for key, bank in m["banks"].items()},
                                stream=toy_stream(self.p, experiment_conditions(name, self.p)[1], ctx.device))
                for name, m in merged.items()}
