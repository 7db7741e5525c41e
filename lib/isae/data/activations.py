"""Real activations: the default language model's residual stream and the vision model's patch tokens.

``cache_lm_activations`` and ``cache_vision_activations`` build an ``isae.data.cache`` folder (shards +
manifest; atomic, resumable, refused when it does not match the request) and return the reader. Every
input is deterministic — the first windows of a text split in corpus order, the first images of a seeded
subset — so a resumed build equals an uninterrupted one. ``open_or_build`` opens a complete cache
without loading any model.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from isae.core.seeding import derive_seed
from isae.data import assets
from isae.data.cache import ActivationCache, build_cache


@dataclass(frozen=True)
class LMRequest:
    """Which language-model activations to cache."""

    model: str = "smollm2"
    """"smollm2" (the packaged default), a local Hugging Face folder, or a hub name (users with a hub)."""
    hook: str = "blocks.20.hook_resid_post"
    """Any transformer-lens hook name; blocks after it are not computed."""
    n_tokens: int = 100_000
    """About this many activations to cache (BOS, document separators and padding positions are excluded,
    so a cache holds slightly fewer)."""
    split: str = "train"
    """"train" or "heldout" (document-level split of the packaged corpus)."""
    context_length: int = 128
    windows_per_shard: int = 64
    batch_windows: int = 16
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.split not in ("train", "heldout"):
            raise ValueError(f"split={self.split!r}; use 'train' or 'heldout'.")
        if self.n_tokens <= 0 or self.context_length < 2 or self.windows_per_shard <= 0 or self.batch_windows <= 0:
            raise ValueError("n_tokens, windows_per_shard and batch_windows must be positive and context_length ≥ 2.")

    @property
    def n_windows(self) -> int:
        """Windows needed for ``n_tokens`` (each holds at most context_length − 1 tokens after its BOS)."""
        return math.ceil(self.n_tokens / (self.context_length - 1))


@dataclass(frozen=True)
class VisionRequest:
    """Which vision-model activations (patch tokens) to cache."""

    model: str = "efficientnet-lite0"
    layer: str = "blocks.15"
    """Feature map whose spatial positions are the tokens (EfficientNet-Lite0's last block: 320 dims)."""
    dataset: str = "fashion-mnist"
    """"fashion-mnist" (10 labelled classes) or "photos" (random crops of scikit-image's photos; label = photo)."""
    train: bool = True
    """Fashion-MNIST's train split (True) or test split (False); for photos, a different crop seed."""
    n_images: int = 2048
    image_size: int = 112
    images_per_shard: int = 256
    batch_images: int = 64
    seed: int = 0
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.dataset not in ("fashion-mnist", "photos"):
            raise ValueError(f"dataset={self.dataset!r}; use 'fashion-mnist' or 'photos'.")
        if min(self.n_images, self.images_per_shard, self.batch_images, self.image_size) <= 0:
            raise ValueError("n_images, images_per_shard, batch_images and image_size must be positive.")


def _asset_hashes(names: list[str]) -> dict[str, str]:
    """The archive sha256 of each asset (recorded in the cache's manifest)."""
    return {n: assets.ASSETS[n].source.sha256 or "" for n in names if n in assets.ASSETS}


# --- language model ------------------------------------------------------------------------------------

def lm_windows(tokenizer, req: LMRequest):
    """The first ``req.n_windows`` windows of the requested split, in corpus order (deterministic)."""
    from isae.data.text import load_documents, tokenize_windows

    docs = load_documents(split=req.split)
    return tokenize_windows(docs, tokenizer, context_length=req.context_length, max_windows=req.n_windows)


def _lm_shard_fn(bridge, windows, req: LMRequest):
    from isae.data.lm import residual_activations

    def make_shard(i: int) -> dict:
        w = windows[i * req.windows_per_shard : (i + 1) * req.windows_per_shard]
        acts, toks, pos = [], [], []
        for s in range(0, len(w), req.batch_windows):
            part = w[s : s + req.batch_windows]
            a = residual_activations(bridge, part.tokens, req.hook)
            acts.append(a[part.mask.to(a.device)].float().cpu())
            toks.append(part.tokens[part.mask].to(torch.int32))
            pos.append(torch.nonzero(part.mask)[:, 1].to(torch.int16))
        return {"acts": torch.cat(acts), "tokens": torch.cat(toks), "positions": torch.cat(pos)}

    return make_shard


def lm_spec(req: LMRequest, d_in: int) -> dict:
    from isae.data.lm import hook_layer

    return {"kind": "lm", **asdict(req), "layer": hook_layer(req.hook), "d_in": d_in, "n_windows": req.n_windows,
            "assets": _asset_hashes(["smollm2", "wiki-leads", "kjv", "shakespeare", "sotu", "moby-dick"])}


def cache_lm_activations(directory: str | Path, req: LMRequest, device: str | None = None, bridge=None,
                         tokenizer=None, progress: bool = True) -> ActivationCache:
    """Cache ``req`` into ``directory`` (resuming a partial build) and return the reader."""
    from isae.data.lm import load_language_model

    if bridge is None:
        bridge, tokenizer = load_language_model(req.model, device=device)
    windows = lm_windows(tokenizer, req)
    if len(windows) < req.n_windows:
        raise ValueError(f"the {req.split} split has only {len(windows)} windows of {req.context_length} tokens; "
                         f"lower n_tokens (asked {req.n_tokens}).")
    spec = lm_spec(req, bridge.cfg.d_model)
    build_cache(directory, spec, math.ceil(len(windows) / req.windows_per_shard), _lm_shard_fn(bridge, windows, req),
                progress=progress)
    return ActivationCache(directory)


# --- vision model --------------------------------------------------------------------------------------

def vision_images(req: VisionRequest):
    """(uint8 images [n, 3, H, W], labels [n], class names) for the request (deterministic)."""
    from isae.data.vision import fashion_mnist, photo_crops

    if req.dataset == "fashion-mnist":
        data = fashion_mnist(train=req.train, n=req.n_images, seed=req.seed)
    else:
        per_photo = math.ceil(req.n_images / 14)
        data = photo_crops(n_per_photo=per_photo, out_size=req.image_size,
                           seed=derive_seed("photo-crops", req.seed, int(req.train)))
    images, labels, classes = data.images[: req.n_images], data.labels[: req.n_images], data.classes
    return images, labels, classes


def vision_spec(req: VisionRequest, d_in: int, tokens_per_image: int) -> dict:
    names = ["efficientnet-lite0"] if req.model == "efficientnet-lite0" else []
    names += ["fashion-mnist"] if req.dataset == "fashion-mnist" else ["skimage-photos"]
    return {"kind": "vision", **asdict(req), "d_in": d_in, "tokens_per_image": tokens_per_image,
            "assets": _asset_hashes(names)}


def cache_vision_activations(directory: str | Path, req: VisionRequest, device: str | None = None, model=None,
                             progress: bool = True) -> ActivationCache:
    """Cache the patch tokens of ``req`` into ``directory`` (labels and image index as extras)."""
    from isae.data.vision import load_vision_model

    model = model or load_vision_model(req.model, device=device, size=req.image_size)
    images, labels, _ = vision_images(req)
    c, h, w = model.feature_shape(req.layer, req.image_size)

    def make_shard(i: int) -> dict:
        lo, hi = i * req.images_per_shard, min((i + 1) * req.images_per_shard, len(images))
        acts = torch.cat([model.patch_tokens(images[s : min(s + req.batch_images, hi)], req.layer).float().cpu()
                          for s in range(lo, hi, req.batch_images)])
        image_index = torch.arange(lo, hi).repeat_interleave(h * w)
        return {"acts": acts, "labels": torch.as_tensor(labels[lo:hi]).repeat_interleave(h * w).to(torch.int32),
                "image": image_index.to(torch.int32)}

    n_shards = math.ceil(len(images) / req.images_per_shard)
    build_cache(directory, vision_spec(req, c, h * w), n_shards, make_shard, progress=progress)
    return ActivationCache(directory)


def heldout_activations(cache: ActivationCache, n: int, seed: int = 0) -> torch.Tensor:
    """n unit-norm rows drawn (seeded, without replacement) from a cache, for evaluation."""
    g = np.random.default_rng(derive_seed("heldout-rows", seed))
    idx = np.sort(g.choice(len(cache), size=min(n, len(cache)), replace=False))
    rows = torch.from_numpy(np.stack([cache.rows(int(i), int(i) + 1)[0] for i in idx])).float()
    return rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12)


# --- the caches of a profile ---------------------------------------------------------------------------

def profile_requests(p) -> dict[str, LMRequest | VisionRequest]:
    """The four caches every real-data notebook uses, sized by a ``profiles.RealProfile``."""
    lm = dict(hook=p.lm_hook, context_length=p.context_length, dtype=p.dtype)
    vision = dict(layer=p.vision_layer, image_size=p.image_size, dtype=p.dtype)
    return {
        "lm_train": LMRequest(n_tokens=p.lm_train_tokens, split="train", **lm),
        "lm_heldout": LMRequest(n_tokens=p.lm_eval_tokens, split="heldout", **lm),
        "vision_train": VisionRequest(n_images=p.vision_train_images, train=True, **vision),
        "vision_heldout": VisionRequest(n_images=p.vision_eval_images, train=False, **vision),
    }


class ModelLoader:
    """Loads each model at most once, on first need, so that opening complete caches loads none."""

    def __init__(self, device: str | None = None):
        self.device = device
        self._lm: dict = {}
        self._vision: dict = {}

    def lm(self, model: str):
        """(bridge, tokenizer) of ``model``."""
        if model not in self._lm:
            from isae.data.lm import load_language_model

            self._lm[model] = load_language_model(model, device=self.device)
        return self._lm[model]

    def vision(self, model: str, image_size: int):
        if (model, image_size) not in self._vision:
            from isae.data.vision import load_vision_model

            self._vision[model, image_size] = load_vision_model(model, device=self.device, size=image_size)
        return self._vision[model, image_size]


def open_or_build(directory: str | Path, req: LMRequest | VisionRequest, models: ModelLoader,
                  progress: bool = True) -> ActivationCache:
    """The cache of ``req`` in ``directory``: opened when complete (its manifest must match ``req``), else built
    or resumed with the model from ``models``."""
    from isae.data.cache import read_manifest

    directory = Path(directory)
    manifest = read_manifest(directory)
    if manifest is not None and manifest["complete"]:
        return ActivationCache(directory, expected_spec=asdict(req))
    if isinstance(req, LMRequest):
        bridge, tokenizer = models.lm(req.model)
        return cache_lm_activations(directory, req, bridge=bridge, tokenizer=tokenizer, progress=progress)
    return cache_vision_activations(directory, req, model=models.vision(req.model, req.image_size), progress=progress)


def token_context(cache: ActivationCache, tokenizer, row: int, width: int = 6) -> str:
    """The text around cached LM row ``row``: up to ``width`` preceding tokens of its window, then [the token]."""
    tokens, positions = cache.extra("tokens"), cache.extra("positions")
    start = max(0, row - int(positions[row]) + 1, row - width)
    before = tokenizer.decode(tokens[start:row].tolist())
    return f"{before}[{tokenizer.decode([int(tokens[row])])}]"


@torch.no_grad()
def nearest_neighbours(cache: ActivationCache, n_queries: int = 5, k: int = 3, pool: int = 20_000,
                       seed: int = 0) -> list[tuple[int, list[tuple[int, float]]]]:
    """For ``n_queries`` random rows, the ``k`` most cosine-similar other rows among the first ``pool`` rows.

    Rows of the same window/image within 2 positions are skipped so that neighbours are not trivial copies.
    """
    pool = min(pool, len(cache))
    x = torch.from_numpy(cache.rows(0, pool)).float()
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    g = np.random.default_rng(derive_seed("neighbours", seed))
    out = []
    for q in g.choice(pool, size=min(n_queries, pool), replace=False):
        sims = x @ x[q]
        sims[max(0, q - 2) : q + 3] = -2.0
        top = sims.topk(k)
        out.append((int(q), [(int(i), float(s)) for s, i in zip(top.values, top.indices)]))
    return out
