"""Notebook 08's driver: P1's theory on the SAEs the other notebooks trained (``outputs/<profile>/saes/``).

For each group of SAEs (one setting, one model, its seeds) and its held-out inputs: the restricted isometry
constants δ_S on the supports the data produce (``isae.eval.theory``) beside those of the ground truth and of a
random dictionary, the worst case a greedy search finds, richness and diversity, and Theorem 3.6's bound against
the differences measured between seeds.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from isae.core.arip import arip_support
from isae.core.io import load_sae
from isae.core.models import SAE
from isae.data.synthetic import SyntheticConfig, SyntheticStream
from isae.eval import metrics, theory
from isae.report import claims
from isae.report.claims import Claim, Compare

SYNTHETIC_SETTINGS = ("iid", "mixture")
REAL_SETTINGS = ("smollm2", "efficientnet-lite0")


@dataclass
class Group:
    """The trained SAEs of one (setting, model), by seed, with the held-out inputs they are measured on."""

    setting: str
    model: str
    saes: dict[int, SAE]
    x: torch.Tensor
    true_atoms: torch.Tensor | None = None
    true_codes: torch.Tensor | None = None
    """Synthetic data only: the ground-truth dictionary and the codes of ``x``."""
    meta: dict = field(default_factory=dict)


def saved_saes(root: str | Path) -> pd.DataFrame:
    """Every SAE folder under ``root`` (``outputs/<profile>/saes/``) with its setting, architecture, seed and
    provenance parameters (columns setting, arch, seed, data_seed, path, params)."""
    rows = []
    for cfg_path in sorted(Path(root).glob("*/cfg.json")):
        d = cfg_path.parent
        prov = json.loads((d / "provenance.json").read_text()) if (d / "provenance.json").exists() else {}
        params = prov.get("params", {})
        arch = json.loads(cfg_path.read_text())["isae_config"]["architecture"]
        rows.append({"setting": params.get("setting"), "arch": arch, "seed": params.get("seed"),
                     "data_seed": params.get("data", {}).get("seed", 0), "path": d, "params": params})
    return pd.DataFrame(rows, columns=["setting", "arch", "seed", "data_seed", "path", "params"])


def synthetic_heldout(params: dict, n: int, device: str | torch.device = "cpu"
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x, true codes, true atoms) of ``n`` held-out inputs of the synthetic data an SAE was trained on, rebuilt
    from its provenance (``params["data"]``, the ``SyntheticConfig``): the same inputs notebook 01 evaluated."""
    cfg = SyntheticConfig(**params["data"])
    stream = SyntheticStream(cfg, batch_size=1, seed=cfg.seed, device=device)
    x, z = stream.held_out(n)
    return x, z, stream.dictionary


def load_groups(root: str | Path, settings: tuple[str, ...], n_eval: int, real_inputs: dict | None = None
                ) -> list[Group]:
    """The groups of SAEs saved under ``root`` for ``settings``; synthetic inputs rebuilt from provenance, real
    inputs taken from ``real_inputs`` (setting → held-out activations; a real setting without inputs is
    skipped). Synthetic settings: only the SAEs of the first (lowest) data seed."""
    table = saved_saes(root)
    groups = []
    for (setting, _arch), rows in table.groupby(["setting", "arch"], sort=False):
        if setting not in settings:
            continue
        rows = rows[rows["data_seed"] == rows["data_seed"].min()] if setting in SYNTHETIC_SETTINGS else rows
        if rows.empty:
            continue
        saes = {int(r.seed): load_sae(r.path).eval() for r in rows.itertuples()}
        model = next(iter(saes.values())).cfg.display_name
        if setting in SYNTHETIC_SETTINGS:
            x, z, atoms = synthetic_heldout(rows["params"].iloc[0], n_eval)
            groups.append(Group(setting, model, saes, x, atoms, z))
        elif real_inputs is not None and setting in real_inputs:
            groups.append(Group(setting, model, saes, real_inputs[setting][:n_eval]))
    order = {s: i for i, s in enumerate(settings)}
    return sorted(groups, key=lambda g: (order[g.setting], g.model))


def random_dictionary(like: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Unit-norm Gaussian atoms of the shape of ``like`` (seeded): the "no structure" reference."""
    a = torch.randn(like.shape, generator=torch.Generator().manual_seed(seed))
    return a / a.norm(dim=1, keepdim=True)


def _r_s_support(sae: SAE, x: torch.Tensor) -> torch.Tensor:
    """The support R_S is measured on (``metrics.single_metrics``): the 2k largest |pre-activations| of the final
    sparsification for k-sparse models, of the encoder's pre-activations otherwise."""
    if sae.cfg.spec.k_sparse:
        return sae.encode_sparse(x, with_support=True).support
    return arip_support(sae.preact(x - sae.b_dec), sae.cfg.k)


@torch.no_grad()
def delta_table(groups: list[Group], n_supports: int = 4096, seed: int = 0) -> pd.DataFrame:
    """δ_S summaries (``theory.delta_summary``) per group, dictionary and kind of support.

    Dictionaries: each seed's learned one ("learned", summaries averaged over seeds with an sd), the ground truth
    on its own codes' pair unions (synthetic only), and a random dictionary of the same shape on the supports of
    the setting's first model's seed 0 (one row per setting and kind of support).
    Supports: "pair union" (P1's aRIP: supp(z) ∪ supp(z′) of two inputs) and "top-2k" (the R_S support)."""
    rows, truth_done, random_done = [], set(), set()
    for g in groups:
        per_seed = []
        for s, sae in g.saes.items():
            z = metrics.sae_codes(sae, g.x)
            for kind, supports in (("pair union", theory.pair_unions(z, n_supports, seed)),
                                   ("top-2k", _r_s_support(sae, g.x)[:n_supports])):
                per_seed.append({"kind": kind, "seed": s,
                                 **theory.delta_summary(theory.rip_constants(sae.W_dec, supports))})
                if s == min(g.saes) and (g.setting, kind) not in random_done:
                    random_done.add((g.setting, kind))
                    rows.append({"setting": g.setting, "model": "(random)", "dictionary": "random", "kind": kind,
                                 **theory.delta_summary(theory.rip_constants(random_dictionary(sae.W_dec, seed),
                                                                             supports))})
        seeds = pd.DataFrame(per_seed)
        stats = [c for c in seeds if c not in ("kind", "seed", "n")]
        for kind, sub in seeds.groupby("kind", sort=False):
            row = {"setting": g.setting, "model": g.model, "dictionary": "learned", "kind": kind}
            row |= {c: sub[c].mean() for c in stats}
            row |= {f"{c}_sd": sub[c].std() for c in ("mean", "q99", "frac_below_1")}
            rows.append(row | {"n": int(sub["n"].iloc[0]), "n_seeds": len(sub)})
        if g.true_atoms is not None and g.setting not in truth_done:
            truth_done.add(g.setting)
            rows.append({"setting": g.setting, "model": "(ground truth)", "dictionary": "ground truth",
                         "kind": "pair union", **theory.delta_summary(theory.rip_constants(
                             g.true_atoms, theory.pair_unions(g.true_codes, n_supports, seed)))})
    order = {"learned": 0, "ground truth": 1, "random": 2}
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    settings = {s: i for i, s in enumerate(dict.fromkeys(out["setting"]))}
    out = out.assign(_s=out["setting"].map(settings), _d=out["dictionary"].map(order))
    return out.sort_values(["_s", "kind", "_d"], kind="stable").drop(columns=["_s", "_d"]).reset_index(drop=True)


@torch.no_grad()
def worst_case_table(groups: list[Group], n_supports: int = 4096, seed: int = 0) -> pd.DataFrame:
    """Per group (seed 0): the greedy worst-case δ over supports of size 2k beside the largest δ_S on the data's
    pair unions, and the seconds the search took."""
    rows = []
    for g in groups:
        sae = g.saes[min(g.saes)]
        t0 = time.perf_counter()
        _, worst = theory.greedy_worst_support(sae.W_dec, min(2 * sae.cfg.k, sae.cfg.d_sae))
        data = theory.rip_constants(sae.W_dec, theory.pair_unions(metrics.sae_codes(sae, g.x), n_supports, seed))
        rows.append({"setting": g.setting, "model": g.model, "support size": 2 * sae.cfg.k,
                     "greedy worst δ": worst, "data max δ_S": float(data.max()), "data q99 δ_S":
                     float(torch.quantile(data.double(), 0.99)), "seconds": time.perf_counter() - t0})
    return pd.DataFrame(rows)


@torch.no_grad()
def assumptions_table(groups: list[Group], seed: int = 0) -> pd.DataFrame:
    """Richness and diversity of each group's codes (seed 0; and of the ground-truth codes on synthetic data):
    ``theory.richness``, ``theory.diversity`` (exact supports that repeat) and the pooled diversity ζ̂."""
    rows, truth_done = [], set()
    for g in groups:
        codes = {g.model: metrics.sae_codes(g.saes[min(g.saes)], g.x)}
        if g.true_codes is not None and g.setting not in truth_done:
            truth_done.add(g.setting)
            codes["(ground truth)"] = g.true_codes
        for model, z in codes.items():
            rows.append({"setting": g.setting, "codes of": model, **theory.richness(z, seed=seed),
                         **theory.diversity(z), "zeta_pooled": theory.pooled_diversity(z)})
    return pd.DataFrame(rows)


def _theorem_inputs(sae: SAE, z: torch.Tensor, x: torch.Tensor, n_supports: int, seed: int) -> dict[str, float]:
    """One SAE's δ in both readings (``DELTA_READINGS``), ε (largest ‖x − x̂‖), B (largest ‖x − b‖) and ζ̂."""
    deltas = theory.rip_constants(sae.W_dec, theory.pair_unions(z, n_supports, seed)).double()
    return {"sup": float(deltas.max()), "q99": float(torch.quantile(deltas, 0.99)),
            "eps": float((x - sae.decode(z)).norm(dim=1).max()), "B": float((x - sae.b_dec).norm(dim=1).max()),
            "zeta": theory.pooled_diversity(z)}


#: δ for Theorem 3.6: the theorem's supremum over the data's supports (its largest value on the sampled pair
#: unions), and a relaxed reading, the 99th percentile (our choice: shows how far the premise is even then).
DELTA_READINGS = {"sup": "largest δ_S on the data's supports (the theorem)",
                  "q99": "99th percentile of δ_S (relaxed, our choice)"}


@torch.no_grad()
def bound_table(groups: list[Group], n_supports: int = 4096, seed: int = 0) -> pd.DataFrame:
    """Theorem 3.6 per pair of seeds and δ reading (``DELTA_READINGS``; the larger of the two SAEs' values):
    ζ (the smaller pooled ζ̂), ε (the largest reconstruction error ‖x − x̂‖ on the inputs), B (max ‖x − b‖), the
    constants and premise, the predicted atom and code errors, the measured ones after signed matching (max
    ‖d_i − s_i d′_π(i)‖, mean ‖z − Πz′‖) and, where the premise holds, measured / predicted (tightness)."""
    rows = []
    for g in groups:
        seeds = sorted(g.saes)
        for i, a in enumerate(seeds):
            for b in seeds[i + 1:]:
                sa, sb = g.saes[a], g.saes[b]
                za, zb = metrics.sae_codes(sa, g.x), metrics.sae_codes(sb, g.x)
                qa, qb = (_theorem_inputs(sae, z, g.x, n_supports, seed) for sae, z in ((sa, za), (sb, zb)))
                eps, bound_x, zeta = max(qa["eps"], qb["eps"]), max(qa["B"], qb["B"]), min(qa["zeta"], qb["zeta"])
                m = metrics.match_atoms(sa.W_dec, sb.W_dec)
                signs = torch.as_tensor(m.signs, dtype=sa.W_dec.dtype)
                atom_err = float((sa.W_dec[m.rows] - signs[:, None] * sb.W_dec[m.perm]).norm(dim=1).max())
                code_err = float((za - metrics.map_codes(zb, m, za.shape[1])).norm(dim=1).mean())
                for reading in DELTA_READINGS:
                    delta = max(qa[reading], qb[reading])
                    out = theory.theorem_3_6(delta, zeta, eps, bound_x, sa.cfg.k)
                    ok = out["premise_holds"]
                    rows.append({"setting": g.setting, "model": g.model, "pair": f"{a}-{b}", "δ reading": reading,
                                 "delta": delta, "zeta": zeta, "eps": eps, "B": bound_x, **out,
                                 "atom_err_measured": atom_err, "code_err_measured": code_err,
                                 "atom_tightness": atom_err / out["atom_bound"] if ok else float("nan"),
                                 "code_tightness": code_err / out["code_bound"] if ok else float("nan")})
    return pd.DataFrame(rows)


@torch.no_grad()
def diagnostic_check(groups: list[Group], n_sample: int = 256, n_exhaustive: int = 16_384, n_boot: int = 500,
                     seed: int = 0) -> pd.DataFrame:
    """The cheap diagnostic (``theory.arip_diagnostic`` on ``n_sample`` supports) against the same statistics on
    ``n_exhaustive`` supports, per group (seed 0): estimate, confidence interval, the large-sample value, whether
    the interval covers it, and both costs in seconds."""
    rows = []
    for g in groups:
        sae = g.saes[min(g.saes)]
        cheap = theory.arip_diagnostic(sae, g.x, n_supports=n_sample, n_boot=n_boot, seed=seed + 1)
        t0 = time.perf_counter()
        full = theory.delta_summary(theory.rip_constants(
            sae.W_dec, theory.pair_unions(metrics.sae_codes(sae, g.x), n_exhaustive, seed)))
        t_full = time.perf_counter() - t0
        for stat in ("mean", "q50", "q90", "frac_below_1"):
            rows.append({"setting": g.setting, "model": g.model, "statistic": stat,
                         "estimate": cheap.loc[stat, "estimate"], "lo": cheap.loc[stat, "lo"],
                         "hi": cheap.loc[stat, "hi"], f"on {n_exhaustive} supports": full[stat],
                         "covered": bool(cheap.loc[stat, "lo"] <= full[stat] <= cheap.loc[stat, "hi"]),
                         "seconds (diagnostic)": float(cheap["seconds"].iloc[0]), "seconds (large sample)": t_full})
    return pd.DataFrame(rows)


def theory_claims(deltas: pd.DataFrame, bounds: pd.DataFrame, profile: str, frac: float = 0.99) -> pd.DataFrame:
    """P1's theoretical claims, decided by the claims engine (``isae.report.claims``):

    * per group: the learned dictionaries satisfy aRIP on the data's supports (δ_S < 1 on more than ``frac`` of
      pair unions, mean ± se over seeds);
    * per setting: the aRIP regulariser lowers δ_S (iSAE's mean δ_S below AbsTopK's);
    * per setting: Theorem 3.6's premise holds for some pair (the bound is then evaluable), else vacuous (a
      count over the pairs: exact).
    """
    out = []
    learned = deltas[(deltas["dictionary"] == "learned") & (deltas["kind"] == "pair union")]

    def seeds_q(r, stat: str, label: str) -> claims.Quantity:
        return claims.from_seeds(label, float(r[stat]), float(r.get(f"{stat}_sd", float("nan"))), int(r["n_seeds"]))

    for _, r in learned.iterrows():
        out.append(Claim("P1", "learned dictionaries satisfy aRIP on the data's supports",
                         f"{r['setting']}, {r['model']}",
                         Compare(seeds_q(r, "frac_below_1", "share of pair unions with δ_S < 1"), ">",
                                 claims.exact(f"{frac:g}", frac)),
                         note=f"median δ_S {r['q50']:.3f}, q99 {r['q99']:.3f}"))
    for setting, sub in learned.groupby("setting", sort=False):
        by = sub.set_index("model")
        rows = {m: by.loc[m] for m in ("AbsTopK", "iSAE") if m in by.index}
        q = {m: seeds_q(rows[m], "mean", f"{m} mean δ_S") if m in rows else claims.missing(f"{m} mean δ_S")
             for m in ("AbsTopK", "iSAE")}
        out.append(Claim("P1", "the aRIP regulariser lowers δ_S (iSAE vs AbsTopK)", setting,
                         Compare(q["iSAE"], "<", q["AbsTopK"])))
    for setting, sub in bounds[bounds["δ reading"] == "sup"].groupby("setting", sort=False):
        ok = int(sub["premise_holds"].astype(bool).sum())
        no_rip = int((sub["delta"] >= 1).sum())
        ratios = sub["premise_ratio"].dropna()
        why = (f"δ ≥ 1 (no aRIP constant below 1) for {no_rip}/{len(sub)} pairs, δ from {sub['delta'].min():.3f} "
               f"to {sub['delta'].max():.3f}")
        if len(ratios):
            why += f"; elsewhere ε / ε_max from {ratios.min():.3g} to {ratios.max():.3g}"
        out.append(Claim("P1", "Theorem 3.6's premise holds, so its bound says something", setting,
                         Compare(claims.exact(f"pairs (of {len(sub)}) where the premise holds", ok), ">",
                                 claims.exact("0", 0)), note=why))
    return claims.claims_table(out, profile)


def construction_table(k: int, eps_grid: tuple[float, ...], n_inputs: int = 2048, seed: int = 0) -> pd.DataFrame:
    """Theorem 3.2's construction for each ε: the two encoders' reconstruction errors, DCS between their (shared)
    dictionary and itself, SAE IoU and both ℓ2 readings between their codes (identity matching: the same atoms),
    the share of inputs whose supports differ, the tilted atom's cos with e_(k−1) and δ_S on the union support."""
    rows = []
    for eps in eps_grid:
        c = theory.theorem_3_2(k, eps, n_inputs, seed=seed)
        atoms = c.atoms.float()
        ident = metrics.match_atoms(atoms, atoms)
        za, zb = c.codes_a.float(), c.codes_b.float()
        iou, l2, l2_authors = metrics.code_consistency(za, zb, ident)
        rows.append({"eps": eps, "recon_err_a": float((c.x - c.codes_a @ c.atoms).norm(dim=1).max()),
                     "recon_err_b": float((c.x - c.codes_b @ c.atoms).norm(dim=1).max()),
                     "dcs": metrics.dcs(ident), "sae_iou": iou, "sae_l2": l2, "sae_l2_authors": l2_authors,
                     "supports_differ": float(((za != 0) != (zb != 0)).any(1).float().mean()),
                     "cos(tilted, e_k-1)": float(atoms[k] @ atoms[k - 2]),
                     "δ on union support": float(theory.rip_constants(atoms, torch.arange(k + 2)[None])[0])})
    return pd.DataFrame(rows)
