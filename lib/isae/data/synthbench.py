"""SynthSAEBench (arXiv 2602.14687) data through SAELens's own generator (``sae_lens.synthetic``), as a stream.

The benchmark's ground truth has the structure real activations have and P1's i.i.d. data lacks: Zipfian firing
probabilities (0.4 down to 5e-4, exponent 0.5), a hierarchy of mutually exclusive children (branching 4, depth 3,
children fire only with their parent), low-rank correlations between features, magnitudes with spread (mean 5 → 4,
sd |N(0.5, 0.5²)| per feature), a constant bias of norm 0.5 and feature directions orthogonalised by 100 Adam steps.
``BENCHMARK`` holds the 16k preset's values (SAELens's ``docs/synth_sae_bench.md``, the v2 model); a
``SynthBenchConfig`` scales the number of features, the input dimension and the hierarchy's roots, keeping the
share of features in the hierarchy the benchmark's (128 roots × 85 nodes of 16,384 features).

A built model is cached by content (``model_digest``: its config and SAELens's version) with SAELens's own
``save`` / ``load_from_disk``, so the 16k preset's hour of orthogonalisation is paid once. SAELens samples with the
global torch generator; ``SynthBenchData`` seeds a forked generator per chunk of rows, so the rows are a pure
function of (seed, how many), and training reads them through a ``TensorStream``.

Input scaling (our choice): every row is divided by one constant, the mean row norm of a fixed calibration sample,
so inputs have mean norm 1 as P1's models expect. Per-row unit normalisation (P1's recipe) would distort the
benchmark's linear structure x = f D + b: the constant bias would take a different weight in every row.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from isae.core.provenance import atomic_torch_save
from isae.core.seeding import derive_seed

BENCHMARK = {"num_features": 16_384, "hidden_dim": 768, "total_root_nodes": 128, "branching_factor": 4,
             "max_depth": 3, "max_prob": 0.4, "min_prob": 5e-4, "zipf_exponent": 0.5, "mean_magnitude": (5.0, 4.0),
             "magnitude_sd": (0.5, 0.5), "correlation_scale": 0.1, "correlation_rank": 25,
             "orthogonalization_steps": 100, "orthogonalization_lr": 3e-4, "bias": 0.5}
"""The 16k preset of SynthSAEBench (SAELens docs/synth_sae_bench.md; the v2 model, ``scale_children_by_parent``)."""
NODES_PER_TREE = sum(BENCHMARK["branching_factor"] ** d for d in range(BENCHMARK["max_depth"] + 1))
"""Features in one full tree of the hierarchy (1 + 4 + 16 + 64 = 85)."""
INPUT_SCALINGS = ("global", "unit_rows")


@dataclass(frozen=True)
class SynthBenchConfig:
    """A SynthSAEBench model: the benchmark's recipe at ``num_features`` features in ``hidden_dim`` dimensions."""

    num_features: int
    hidden_dim: int
    orthogonalization_steps: int = BENCHMARK["orthogonalization_steps"]
    seed: int = 42
    """The benchmark's seed (42) by default; it seeds the dictionary, magnitudes, hierarchy and correlations."""

    def __post_init__(self):
        for name in ("num_features", "hidden_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 8:
                raise ValueError(f"synthbench {name}={value!r} must be an integer ≥ 8.")
        if not isinstance(self.orthogonalization_steps, int) or self.orthogonalization_steps < 0:
            raise ValueError(f"synthbench orthogonalization_steps={self.orthogonalization_steps!r} must be ≥ 0.")

    @property
    def total_root_nodes(self) -> int:
        """Roots of the hierarchy, scaled with the features so that its share of them stays the benchmark's."""
        share = BENCHMARK["total_root_nodes"] / BENCHMARK["num_features"]
        return max(1, round(self.num_features * share))

    def to_dict(self) -> dict:
        return {**asdict(self), "total_root_nodes": self.total_root_nodes, "recipe": "SynthSAEBench 16k (v2)"}

    def model_config(self):
        """SAELens's ``SyntheticModelConfig`` for this model."""
        from sae_lens.synthetic import (
            FoldedNormalMagnitudeConfig,
            HierarchyConfig,
            LinearMagnitudeConfig,
            LowRankCorrelationConfig,
            OrthogonalizationConfig,
            SyntheticModelConfig,
            ZipfianFiringProbabilityConfig,
        )

        b = BENCHMARK
        ortho = (OrthogonalizationConfig(num_steps=self.orthogonalization_steps, lr=b["orthogonalization_lr"])
                 if self.orthogonalization_steps else None)
        return SyntheticModelConfig(
            num_features=self.num_features, hidden_dim=self.hidden_dim,
            firing_probability=ZipfianFiringProbabilityConfig(max_prob=b["max_prob"], min_prob=b["min_prob"],
                                                              exponent=b["zipf_exponent"]),
            hierarchy=HierarchyConfig(total_root_nodes=self.total_root_nodes, branching_factor=b["branching_factor"],
                                      max_depth=b["max_depth"], mutually_exclusive_portion=1.0,
                                      mutually_exclusive_min_depth=0, compensate_probabilities=True,
                                      scale_children_by_parent=True),
            mean_firing_magnitudes=LinearMagnitudeConfig(start=b["mean_magnitude"][0], end=b["mean_magnitude"][1]),
            std_firing_magnitudes=FoldedNormalMagnitudeConfig(mean=b["magnitude_sd"][0], std=b["magnitude_sd"][1]),
            correlation=LowRankCorrelationConfig(correlation_scale=b["correlation_scale"],
                                                 rank=b["correlation_rank"]),
            orthogonalization=ortho, bias=b["bias"], seed=self.seed)


def model_digest(cfg: SynthBenchConfig) -> str:
    """What a built model depends on: its SAELens config and SAELens's version (16 hex digits)."""
    import sae_lens

    text = json.dumps({"config": cfg.model_config().to_dict(), "sae_lens": sae_lens.__version__}, sort_keys=True,
                      default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def build_model(cfg: SynthBenchConfig, cache_dir: str | Path | None = None, log=print):
    """SAELens's ``SyntheticModel`` for ``cfg`` on the CPU, read from ``cache_dir/<digest>`` when built before (else
    built and written there atomically)."""
    from sae_lens.synthetic import SyntheticModel

    if cache_dir is None:
        return SyntheticModel(cfg.model_config(), device="cpu")
    folder = Path(cache_dir) / model_digest(cfg)
    if (folder / "synthetic_model.safetensors").is_file():
        return SyntheticModel.load_from_disk(folder, device="cpu")
    log(f"building the SynthSAEBench model ({cfg.num_features} features in {cfg.hidden_dim} dimensions, "
        f"{cfg.orthogonalization_steps} orthogonalisation steps) into {folder}")
    model = SyntheticModel(cfg.model_config(), device="cpu")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        model.save(tmp)
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return model


def feature_depths(model) -> torch.Tensor:
    """[num_features] depth of each feature in the hierarchy (0: a root), −1 for features outside it."""
    depth = torch.full((model.cfg.num_features,), -1, dtype=torch.long)

    def visit(node, d: int) -> None:
        if node.feature_index is not None:
            depth[node.feature_index] = d
        for child in node.children:
            visit(child, d + 1 if node.feature_index is not None else d)

    for root in (model.hierarchy.roots if model.hierarchy is not None else []):
        visit(root, 0)
    return depth


def true_directions(model) -> torch.Tensor:
    """[num_features, hidden_dim] unit-norm ground-truth feature directions."""
    vectors = model.feature_dict.feature_vectors.detach().float()
    return vectors / vectors.norm(dim=1, keepdim=True)


class SynthBenchData:
    """Training rows and held-out rows (with their feature activations) of one SynthSAEBench model, a pure function
    of (seed, how many): rows are drawn in chunks of ``CHUNK``, chunk c with the global generator forked and seeded
    by (seed, c). SAELens's sampler is slow (its hierarchy rules, about 0.3 s per 512 rows of 1,024 features on 2 CPU
    cores), so training reads a fixed set of rows over several passes (``TensorStream``) rather than drawing every
    batch anew. ``input_scaling``: "global" (our choice: one constant, the calibration rows' mean norm, to 1) or
    "unit_rows" (each row to unit norm, P1's recipe)."""

    CHUNK = 4096

    def __init__(self, model, cfg: SynthBenchConfig, seed: int = 0, input_scaling: str = "global",
                 n_calibration: int = 8192):
        if input_scaling not in INPUT_SCALINGS:
            raise ValueError(f"input_scaling={input_scaling!r}: use one of {INPUT_SCALINGS}.")
        self.model, self.cfg, self.seed, self.input_scaling = model, cfg, seed, input_scaling
        raw, _ = self._sample(n_calibration, derive_seed("synthbench-calibration", seed))
        self.scale = float(1.0 / raw.norm(dim=1).mean())
        """The constant every row is multiplied by under "global" scaling."""

    def _sample(self, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            with torch.no_grad():
                x, f = self.model.sample_with_features(n)
        return x.float(), f.float()

    def scaled(self, x: torch.Tensor) -> torch.Tensor:
        """Raw generator rows as the SAEs see them."""
        if self.input_scaling == "unit_rows":
            return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return x * self.scale

    def train_rows(self, n: int, progress=None) -> torch.Tensor:
        """``n`` training rows [n, hidden_dim], scaled."""
        chunks = range(0, n, self.CHUNK)
        parts = [self.scaled(self._sample(min(self.CHUNK, n - start),
                                          derive_seed("synthbench-train", self.seed, start // self.CHUNK))[0])
                 for start in (progress(chunks) if progress else chunks)]
        return torch.cat(parts)

    def held_out(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` held-out rows (scaled) with their feature activations [n, num_features], never trained on."""
        x, f = self._sample(n, derive_seed("synthbench-heldout", self.seed))
        return self.scaled(x), f

    def identity(self) -> dict:
        return {"data": "synthbench", **self.cfg.to_dict(), "data_seed": self.seed,
                "input_scaling": self.input_scaling}


def cached_train_rows(data: SynthBenchData, n: int, cache_dir: str | Path | None, log=print) -> torch.Tensor:
    """``data.train_rows(n)``, read from ``cache_dir`` when drawn before (a file named by the data's identity and
    n, written atomically) — SAELens's sampler takes minutes for a few hundred thousand rows."""
    if cache_dir is None:
        return data.train_rows(n)
    key = hashlib.sha256(json.dumps({**data.identity(), "n": n, "digest": model_digest(data.cfg)},
                                    sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"train_rows_{key}.pt"
    if path.is_file():
        return torch.load(path)
    log(f"drawing {n} SynthSAEBench training rows into {path}")
    rows = data.train_rows(n)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(rows, path)
    return rows
