"""Profiles: one switch that sizes every experiment. The code path is the same for all three.

* ``smoke``   — CI: seconds per notebook on 2 CPU cores; checks that everything runs, not the science.
* ``default`` — a laptop CPU: small enough to finish in minutes, large enough for P1's qualitative
  claims to have a chance to show (each notebook states which do at the profile it ran).
* ``paper``   — the papers' sizes, for a GPU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

PROFILES = ("smoke", "default", "paper")
P1_MODELS = ("topk", "abstopk", "isae", "isae_me")


def check_profile(profile: str) -> str:
    if profile not in PROFILES:
        raise ValueError(f"profile={profile!r} is unknown; use one of {PROFILES} (e.g. make reproduce PROFILE=default).")
    return profile


def sizes_at(table: dict, profile: str, what: str, **overrides):
    """``table[profile]`` (a frozen dataclass with ``to_dict``) with fields overridden: None values are ignored,
    lists become tuples, and unknown names are refused with the valid ones (``what`` names the experiment)."""
    base = table[check_profile(profile)]
    unknown = set(overrides) - set(base.to_dict())
    if unknown:
        raise ValueError(f"unknown {what} parameter(s) {sorted(unknown)}; valid: {sorted(base.to_dict())}.")
    return replace(base, **{k: (tuple(v) if isinstance(v, list) else v) for k, v in overrides.items() if v is not None})


@dataclass(frozen=True)
class SyntheticProfile:
    """Sizes of P1's synthetic experiment (Table 1)."""

    d_in: int
    """Input dimension N (P1: 768)."""
    n_atoms: int
    """Ground-truth atoms M (P1: 4096)."""
    d_sae: int
    """SAE latents K (P1: 4096)."""
    k: int
    """Active latents per input, in the data and in the SAE (P1: 40)."""
    n_steps: int
    """Training steps (P1: 40K)."""
    batch_size: int
    """Batch size (P1: 2048)."""
    n_seeds: int
    """SAE seeds per model (P1: ≥ 3); every pair of seeds is compared."""
    n_eval: int
    """Held-out inputs for the metrics."""
    settings: tuple[str, ...] = ("iid", "mixture")
    models: tuple[str, ...] = P1_MODELS
    lr: float | None = None
    """None → 2e-4 / sqrt(K / 2^14) (sparsify's scaling; our choice)."""
    n_components: int = 32
    """Mixture components of the coherent dictionary (our choice; P1 does not say)."""
    spread: float = 1.0
    """Mixture spread around each component centre (our choice)."""
    data_seed: int = 0
    checkpoint_every: int = 1000
    log_every: int = 50

    def to_dict(self) -> dict:
        return asdict(self)


SYNTHETIC: dict[str, SyntheticProfile] = {
    "smoke": SyntheticProfile(d_in=32, n_atoms=96, d_sae=96, k=3, n_steps=40, batch_size=256, n_seeds=2,
                              n_eval=512, n_components=8, log_every=10, checkpoint_every=20),
    "default": SyntheticProfile(d_in=64, n_atoms=256, d_sae=256, k=4, n_steps=3000, batch_size=512, n_seeds=3,
                                n_eval=4096, n_components=16, log_every=100, checkpoint_every=500),
    "paper": SyntheticProfile(d_in=768, n_atoms=4096, d_sae=4096, k=40, n_steps=40_000, batch_size=2048, n_seeds=3,
                              n_eval=8192, n_components=32, log_every=500, checkpoint_every=2000),
}


def synthetic_profile(profile: str, **overrides) -> SyntheticProfile:
    """The synthetic-experiment sizes of ``profile``, with any field overridden (None values ignored)."""
    return sizes_at(SYNTHETIC, profile, "synthetic", **overrides)


@dataclass(frozen=True)
class RealProfile:
    """Sizes of the real-activation experiments (activation caching, P1 Tables 2–3, P2's weighted SAE)."""

    lm_hook: str
    """Residual-stream hook of the default LM (SmolLM2-135M, 30 layers). Our choice: layer 20 (2/3 depth), a late
    layer as in P1 (which used Pythia-160M's last) that is not yet specialised to the unembedding; smoke uses
    layer 2 for speed."""
    lm_train_tokens: int
    """Training activations cached from the corpus' train split (one pass: no token seen twice)."""
    lm_eval_tokens: int
    """Activations cached from the held-out split for the metrics."""
    context_length: int
    ce_windows: int
    """Held-out windows for the downstream cross-entropy (the full model runs 2 + n_models times on each)."""
    vision_layer: str
    """EfficientNet-Lite0 feature map whose positions are the patch tokens (blocks.15: 320 dims)."""
    vision_train_images: int
    vision_eval_images: int
    image_size: int
    d_sae: int
    k: int
    batch_size: int
    n_seeds: int
    n_eval: int
    """Held-out rows used for the pairwise metrics (OMP oracle included)."""
    models: tuple[str, ...] = P1_MODELS
    lr: float | None = None
    dtype: str = "float32"
    log_every: int = 50
    checkpoint_every: int = 500

    def to_dict(self) -> dict:
        return asdict(self)


REAL: dict[str, RealProfile] = {
    "smoke": RealProfile(lm_hook="blocks.2.hook_resid_post", lm_train_tokens=4_000, lm_eval_tokens=1_000,
                         context_length=64, ce_windows=2, vision_layer="blocks.15", vision_train_images=192,
                         vision_eval_images=64, image_size=112, d_sae=256, k=8, batch_size=128, n_seeds=2,
                         n_eval=512, log_every=10, checkpoint_every=20),
    "default": RealProfile(lm_hook="blocks.20.hook_resid_post", lm_train_tokens=100_000, lm_eval_tokens=8_000,
                           context_length=128, ce_windows=24, vision_layer="blocks.15", vision_train_images=6_144,
                           vision_eval_images=512, image_size=112, d_sae=2048, k=32, batch_size=256, n_seeds=3,
                           n_eval=2048),
    "paper": RealProfile(lm_hook="blocks.20.hook_resid_post", lm_train_tokens=5_000_000, lm_eval_tokens=100_000,
                         context_length=128, ce_windows=512, vision_layer="blocks.15", vision_train_images=60_000,
                         vision_eval_images=2_000, image_size=224, d_sae=4096, k=40, batch_size=2048, n_seeds=3,
                         n_eval=8192, dtype="float16", log_every=100, checkpoint_every=500),
}


def real_profile(profile: str, **overrides) -> RealProfile:
    """The real-activation sizes of ``profile``, with any field overridden (None values ignored)."""
    return sizes_at(REAL, profile, "real-data", **overrides)
