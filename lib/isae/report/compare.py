"""An identifiability report for anyone's SAEs: every pairwise metric of the project over two or more SAEs.

``compare_saes(sae_dirs, activations)`` loads the SAEs (this project's folders, SAELens folders, sparsify's layout:
``isae.core.io.load_sae``) and the activations (an activation cache folder of ``isae.data.cache``, an ``.npy`` or a
``.safetensors`` matrix [n, d_in]), checks every input before any compute, and measures on the same inputs:

* per pair: DCS, PW-MCC, SAE code IoU and ℓ2 (both readings), with ``oracle`` the OMP-oracle IoU and ℓ2
  (``isae.eval.metrics``), and the matched |cos| of every atom pair (for the figure);
* per SAE: MSE (and FVU), L0, dead fraction, R_S (``single_metrics``) and the aRIP diagnostic, δ_S on the SAE's
  own supports with bootstrap intervals (``isae.eval.theory.arip_diagnostic``);
* a random-init floor: two SAEs of the first SAE's configuration at random init (b_dec at the inputs' geometric
  median, as the project's baseline), measured the same way;
* mean ± sd over pairs (and over SAEs) and a figure of the matched-cosine distributions.

Input preprocessing (``normalize``), our choice of default "auto": each SAE gets what it was trained on — this
project's SAEs unit-norm rows, centred per row first when their provenance records the authors' recipe
(``center_inputs``); a SAELens SAE with ``normalize_activations = "expected_average_only_in"`` rows scaled so that
the mean norm is √d_in (SAELens's estimate of its own scaling factor from the data); any other foreign SAE the
activations as they are. All SAEs of one report must agree (the metrics compare codes of the same inputs), else
pass one of "unit", "center-unit", "expected-norm" or "none" explicitly.

Dense SAEs (ReLU, JumpReLU) have no k: the OMP oracle and the aRIP support use k = their mean L0 on the inputs,
rounded (our choice).
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file

from isae.core.io import load_sae
from isae.core.models import SAE
from isae.core.provenance import atomic_write_json, atomic_write_text, provenance, write_with_provenance
from isae.eval.metrics import omp, pair_metrics, sae_codes, single_metrics
from isae.eval.theory import arip_diagnostic
from isae.pipeline import RANDOM_INIT_SEEDS, random_init_saes
from isae.plots.common import save_figure
from isae.progress import progress_bar
from isae.report.summary import mean_sd
from isae.train.trainer import geometric_median

NORMALIZE = ("auto", "unit", "center-unit", "expected-norm", "none")
PAIR_METRICS = ("dcs", "pw_mcc", "sae_iou", "sae_l2", "sae_l2_authors", "oracle_iou", "oracle_l2", "oracle_l2_authors")
SAE_METRICS = ("mse", "mse_fvu", "l0", "dead_frac", "r_s", "delta_q50", "delta_q90", "delta_frac_below_1")
#: Above this many latents, matching and the oracle are long: progress bars per step (our choice).
LONG_K = 16_384


class CompareInputError(ValueError):
    """Bad input to ``compare_saes``: the message names the parameter and the fix."""


@dataclass
class CompareResult:
    """What ``compare_saes`` measured (and, with ``out``, wrote)."""

    saes: pd.DataFrame
    """One row per SAE (the random-init floor's two included, ``trained`` False): single metrics and δ_S."""
    pairs: pd.DataFrame
    """One row per pair: ``a``, ``b``, ``trained`` and every pairwise metric."""
    summary: pd.DataFrame
    """mean ± sd over pairs and over SAEs: rows ``trained`` and ``random-init``."""
    matched_cos: pd.DataFrame
    """|cos| of every matched atom pair: pair, trained, abs_cos."""
    normalize: str
    """The preprocessing applied to the activations."""
    n_inputs: int
    files: dict[str, Path] = field(default_factory=dict)

    def text(self) -> str:
        """The summary as plain text (what the CLI prints)."""
        lines = [f"inputs: {self.n_inputs} rows, preprocessing: {self.normalize}", ""]
        for trained in (True, False):
            label = "trained SAEs" if trained else "random-init floor (same shape)"
            row = self.summary[self.summary["group"] == ("trained" if trained else "random-init")]
            if row.empty:
                continue
            row = row.iloc[0]
            lines.append(f"{label}: {int(row['n_pairs'])} pair(s), {int(row['n_saes'])} SAE(s)")
            for m in PAIR_METRICS + SAE_METRICS:
                if m in row and not pd.isna(row[m]):
                    sd = row.get(f"{m}_sd")
                    sd_text = "" if sd is None or pd.isna(sd) else f" ± {sd:.4f}"
                    lines.append(f"  {m:<18} {row[m]:.4f}{sd_text}")
            lines.append("")
        return "\n".join(lines)


# --- inputs ------------------------------------------------------------------------------------------------------

class _CacheRows:
    """The rows of an activation cache as one [n, d_in] matrix for sorted-index reads (nothing loaded up front)."""

    ndim = 2

    def __init__(self, cache):
        self.cache = cache
        self.shape = (len(cache), cache.d_in)

    def __getitem__(self, idx: np.ndarray) -> np.ndarray:
        shard = np.searchsorted(self.cache.offsets, idx, side="right") - 1
        parts = [np.asarray(self.cache.shards[s][idx[shard == s] - self.cache.offsets[s]]) for s in np.unique(shard)]
        return np.concatenate(parts)


def _load_matrix(path: Path, key: str | None) -> np.ndarray:
    """The activations of an .npy / .safetensors file or an activation cache folder, as a (memory-mapped) array."""
    if path.is_dir():
        from isae.data.cache import ActivationCache  # data layer: only needed for cache folders

        if not (path / "manifest.json").exists():
            raise CompareInputError(f"activations={str(path)!r} is a folder without manifest.json; pass an activation "
                                    "cache folder (isae.data.cache), an .npy or a .safetensors file.")
        return _CacheRows(ActivationCache(path))
    if path.suffix == ".npy":
        return np.load(path, mmap_mode="r")
    if path.suffix == ".safetensors":
        tensors = load_file(str(path))
        if key is None:
            if len(tensors) != 1:
                raise CompareInputError(f"activations={str(path)!r} holds tensors {sorted(tensors)}; name the one to "
                                        "use with activations_key= (CLI: --activations-key).")
            key = next(iter(tensors))
        if key not in tensors:
            raise CompareInputError(f"activations_key={key!r} is not in {path} (it holds {sorted(tensors)}).")
        return tensors[key].float().numpy()
    raise CompareInputError(f"activations={str(path)!r}: use an activation cache folder, an .npy or a .safetensors "
                            "file.")


def _expected_preprocessing(directory: Path) -> str:
    """What an SAE folder's SAE was trained on (see the module docstring)."""
    cfg = json.loads((directory / "cfg.json").read_text())
    if "isae_config" in cfg:
        prov_path = directory / "provenance.json"
        params = json.loads(prov_path.read_text()).get("params", {}) if prov_path.exists() else {}
        recipe = params.get("recipe") or {}
        return "center-unit" if recipe.get("center_inputs") else "unit"
    if cfg.get("normalize_activations") == "expected_average_only_in":
        return "expected-norm"
    return "none"


def preprocess(x: torch.Tensor, normalize: str) -> torch.Tensor:
    """The activations as the SAEs expect them (``normalize`` as in the module docstring, not "auto")."""
    if normalize == "none":
        return x
    if normalize == "expected-norm":
        return x * (math.sqrt(x.shape[1]) / x.norm(dim=1).mean().clamp_min(1e-12))
    if normalize == "center-unit":
        x = x - x.mean(dim=1, keepdim=True)
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


@dataclass
class CheckedInputs:
    """Everything ``check_inputs`` validated: the SAEs, the raw activation rows and the preprocessing to apply."""

    names: list[str]
    saes: list[SAE]
    x: torch.Tensor
    normalize: str


def check_inputs(sae_dirs, activations, n_inputs: int = 4096, normalize: str = "auto",
                 activations_key: str | None = None, seed: int = 0) -> CheckedInputs:
    """Validate every input before any compute; each error names the parameter and the fix."""
    dirs = [Path(d) for d in sae_dirs]
    if len(dirs) < 2:
        raise CompareInputError(f"sae_dirs: got {len(dirs)} SAE folder(s); pass two or more (e.g. the same "
                                "architecture trained with different seeds).")
    if normalize not in NORMALIZE:
        raise CompareInputError(f"normalize={normalize!r}; use one of {NORMALIZE}.")
    if not isinstance(n_inputs, int) or n_inputs < 2:
        raise CompareInputError(f"n_inputs={n_inputs!r} must be an integer ≥ 2.")
    for d in dirs:
        if not d.exists():
            raise CompareInputError(f"sae_dirs: {str(d)!r} does not exist; pass SAE folders (cfg.json + weights).")
        if not (d / "cfg.json").exists():
            raise CompareInputError(f"sae_dirs: {str(d)!r} has no cfg.json; pass a folder written by isae's save_sae, "
                                    "SAELens's save_model / save_inference_model, or sparsify.")
    saes = []
    for d in dirs:
        try:
            sae = load_sae(d).eval()
        except FileNotFoundError as e:
            raise CompareInputError(f"sae_dirs: {e}") from None
        for name, t in sae.state_dict().items():
            if not bool(torch.isfinite(t).all()):
                raise CompareInputError(f"sae_dirs: {str(d)!r} has non-finite values (NaN or inf) in {name}; the SAE "
                                        "is broken (diverged training?) — retrain it or drop it from the list.")
        saes.append(sae)
    names = _unique_names(dirs)
    first = saes[0].cfg
    for name, sae in zip(names[1:], saes[1:]):
        for dim in ("d_in", "d_sae"):
            if getattr(sae.cfg, dim) != getattr(first, dim):
                raise CompareInputError(f"sae_dirs: {name} has {dim}={getattr(sae.cfg, dim)} but {names[0]} has "
                                        f"{dim}={getattr(first, dim)}; every SAE of one report must have the same "
                                        "shape (compare SAEs of one width on one layer).")
    path = Path(activations)
    if not path.exists():
        raise CompareInputError(f"activations={str(path)!r} does not exist; pass an activation cache folder, an .npy "
                                "or a .safetensors matrix [n, d_in].")
    matrix = _load_matrix(path, activations_key)
    if matrix.ndim != 2:
        raise CompareInputError(f"activations={str(path)!r} has shape {tuple(matrix.shape)}; it must be a matrix "
                                "[n, d_in] (flatten batch and position first).")
    if matrix.shape[1] != first.d_in:
        raise CompareInputError(f"activations={str(path)!r} has width {matrix.shape[1]} but the SAEs have "
                                f"d_in={first.d_in}; pass activations of the layer the SAEs were trained on.")
    if matrix.shape[0] < 2:
        raise CompareInputError(f"activations={str(path)!r} has {matrix.shape[0]} row(s); at least 2 are needed.")
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(matrix.shape[0], size=min(n_inputs, matrix.shape[0]), replace=False))
    x = torch.from_numpy(np.asarray(matrix[idx], dtype=np.float32))
    if not bool(torch.isfinite(x).all()):
        raise CompareInputError(f"activations={str(path)!r} has non-finite values (NaN or inf) in the sampled rows; "
                                "clean them first.")
    if normalize == "auto":
        expected = {name: _expected_preprocessing(d) for name, d in zip(names, dirs)}
        kinds = set(expected.values())
        if len(kinds) > 1:
            raise CompareInputError(f"normalize='auto': the SAEs expect different input preprocessing ({expected}); "
                                    f"pass one of {NORMALIZE[1:]} explicitly (CLI: --normalize).")
        normalize = kinds.pop()
    return CheckedInputs(names, saes, x, normalize)


def _unique_names(dirs: list[Path]) -> list[str]:
    """Short labels: the folder names, with the parent prepended where two are equal."""
    names = [d.name for d in dirs]
    if len(set(names)) < len(names):
        names = [f"{d.parent.name}/{d.name}" for d in dirs]
    if len(set(names)) < len(names):  # the same folder twice (a sanity check: every metric at its maximum)
        names = [f"{d.name} #{i + 1}" for i, d in enumerate(dirs)]
    return names


# --- compute -----------------------------------------------------------------------------------------------------

@torch.no_grad()
def _oracle_codes(sae: SAE, x: torch.Tensor, progress: bool, label: str, chunk: int = 1024) -> torch.Tensor:
    """``isae.eval.metrics.oracle_codes`` (OMP with sparsity k on the SAE's dictionary), in chunks with a bar."""
    atoms, k = sae.W_dec.detach(), sae.cfg.k
    starts = range(0, x.shape[0], chunk)
    bar = progress_bar(starts, desc=f"oracle {label}", disable=not progress, leave=False)
    return torch.cat([omp(atoms, x[s : s + chunk] - sae.b_dec, k) for s in bar])


@torch.no_grad()
def _with_dense_k(sae: SAE, x: torch.Tensor) -> SAE:
    """Dense SAEs: k := their mean L0 on x, rounded (at least 1), for the oracle and the aRIP support."""
    if not sae.cfg.spec.k_sparse:
        l0 = float((sae_codes(sae, x) != 0).sum(1).float().mean())
        sae.cfg.k = max(1, min(sae.cfg.d_sae - 1, round(l0)))
    return sae


def _floor(first: SAE, x: torch.Tensor) -> dict[str, SAE]:
    """The random-init floor of ``first``'s configuration (``pipeline.random_init_saes``), b_dec at the geometric
    median of x, by name. One pair (our choice): at K ≥ 16k a pair takes minutes, and this report shows the floor
    beside the trained pairs without deciding a claim on it."""
    pair = random_init_saes(first.cfg, geometric_median(x[:8192]), x.device, seeds=RANDOM_INIT_SEEDS[:2])
    return {f"random-init seed {key.seed}": sae.eval() for key, sae in pair.items()}


def compare_saes(sae_dirs, activations, oracle: bool = False, out: str | Path | None = None, n_inputs: int = 4096,
                 normalize: str = "auto", activations_key: str | None = None, n_supports: int = 512,
                 n_boot: int = 200, seed: int = 0, progress: bool = True) -> CompareResult:
    """The identifiability report of two or more SAEs on shared activations (see the module docstring).

    ``n_inputs`` rows are drawn (seeded) from the activations; ``oracle`` adds the OMP-oracle metrics (slow at large
    K); ``n_supports`` / ``n_boot`` size the aRIP diagnostic. With ``out``, writes ``saes.csv``, ``pairs.csv``,
    ``summary.csv``, ``matched_cosines.csv``, ``matched_cosines.png`` (each with provenance) and ``report.md``.
    """
    checked = check_inputs(sae_dirs, activations, n_inputs, normalize, activations_key, seed)
    x = preprocess(checked.x, checked.normalize)
    trained = dict(zip(checked.names, checked.saes))
    floor = _floor(checked.saes[0], x)
    everyone = {**trained, **floor}
    long = checked.saes[0].cfg.d_sae >= LONG_K

    codes, sae_rows = {}, []
    for name, sae in progress_bar(everyone.items(), desc="encode + single metrics", disable=not progress):
        _with_dense_k(sae, x)
        codes[id(sae)] = (sae_codes(sae, x), _oracle_codes(sae, x, progress, name) if oracle else None)
        diag = arip_diagnostic(sae, x, n_supports=n_supports, n_boot=n_boot, seed=seed)
        sae_rows.append({"sae": name, "trained": name in trained, "architecture": sae.cfg.architecture,
                         "d_in": sae.cfg.d_in, "d_sae": sae.cfg.d_sae, "k": sae.cfg.k, **single_metrics(sae, x),
                         **{f"delta_{s}": diag.loc[s, "estimate"] for s in diag.index},
                         **{f"delta_{s}_{c}": diag.loc[s, c] for s in diag.index for c in ("lo", "hi")}})
    pair_rows, cos_frames = [], []
    groups = [(True, list(itertools.combinations(trained, 2))), (False, [tuple(floor)])]
    todo = [(t, a, b) for t, pairs in groups for a, b in pairs]
    for is_trained, a, b in progress_bar(todo, desc="matching atoms" + (" (K ≥ 16k: minutes per pair)" if long else ""),
                                 disable=not progress):
        metrics, abs_cos = pair_metrics(everyone[a], everyone[b], x, oracle, codes, with_matched_cos=True)
        pair_rows.append({"a": a, "b": b, "trained": is_trained, **metrics})
        cos_frames.append(pd.DataFrame({"pair": f"{a} vs {b}", "trained": is_trained, "abs_cos": abs_cos}))
    saes_df, pairs_df = pd.DataFrame(sae_rows), pd.DataFrame(pair_rows)
    summary = _summary(pairs_df, saes_df)
    result = CompareResult(saes_df, pairs_df, summary, pd.concat(cos_frames, ignore_index=True), checked.normalize,
                           x.shape[0])
    if out is not None:
        _write(result, Path(out), sae_dirs=[str(d) for d in sae_dirs], activations=str(activations), oracle=oracle,
               n_inputs=x.shape[0], normalize=checked.normalize, seed=seed, n_supports=n_supports, n_boot=n_boot)
    return result


def _summary(pairs: pd.DataFrame, saes: pd.DataFrame) -> pd.DataFrame:
    """mean ± sd over pairs (pair metrics) and over SAEs (single metrics), for the trained SAEs and the floor."""
    pairs = pairs.assign(group=np.where(pairs["trained"], "trained", "random-init"))
    saes = saes.assign(group=np.where(saes["trained"], "trained", "random-init"))
    by_pair = mean_sd(pairs, ["group"], PAIR_METRICS, count="n_pairs")
    by_sae = mean_sd(saes, ["group"], SAE_METRICS, count="n_saes")
    return by_pair.merge(by_sae, on="group")


def matched_cos_figure(frame: pd.DataFrame, bins: int = 40) -> plt.Figure:
    """Histogram of matched |cos| per pair (solid: trained pairs, dashed grey: the random-init floor)."""
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    trained_pairs = list(dict.fromkeys(frame.loc[frame["trained"], "pair"]))
    colours = dict(zip(trained_pairs, sns.color_palette("colorblind", max(1, len(trained_pairs)))))
    edges = np.linspace(0, 1, bins + 1)
    for pair, rows in frame.groupby("pair", sort=False):
        floor = not bool(rows["trained"].iloc[0])
        ax.hist(rows["abs_cos"], bins=edges, density=True, histtype="step", linewidth=1.5,
                linestyle="--" if floor else "-", color="grey" if floor else colours[pair],
                label=f"{pair} (DCS {rows['abs_cos'].mean():.3f})")
    ax.set(xlim=(0, 1), xlabel="|cos| of matched atoms (Hungarian on |cos|)", ylabel="density")
    ax.legend(fontsize=6, frameon=False, loc="upper left")
    fig.tight_layout()
    return fig


def _write(result: CompareResult, out: Path, **params) -> None:
    for name, df in (("saes", result.saes), ("pairs", result.pairs), ("summary", result.summary),
                     ("matched_cosines", result.matched_cos)):
        path = out / f"{name}.csv"
        result.files[name] = write_with_provenance(path, lambda p, df=df: df.to_csv(p, index=False), **params)
    fig = matched_cos_figure(result.matched_cos)
    result.files["figure"] = save_figure(fig, out / "matched_cosines.png", **params)
    plt.close(fig)
    md = ["# Identifiability report", "", "```", result.text(), "```", "",
          "Per pair:", "", "```", result.pairs.to_string(index=False, float_format="{:.4f}".format), "```", "",
          "Per SAE (δ_S: the aRIP diagnostic's quantiles of δ_S on the SAE's own supports):", "", "```",
          result.saes[["sae", "trained", "architecture", "d_sae", "k", *SAE_METRICS]]
          .to_string(index=False, float_format="{:.4f}".format), "```", "",
          "![matched cosines](matched_cosines.png)", ""]
    result.files["report"] = atomic_write_text(out / "report.md", "\n".join(md))
    atomic_write_json(out / "report.md.provenance.json", provenance(**params))
