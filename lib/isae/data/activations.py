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
from isae.data.cache import ActivationCache, build_cache, build_caches


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
    """"train" or "heldout" (document-level split of the corpus)."""
    text: str | None = None
    """A local text dataset (``isae.data.text.local_documents``: a .jsonl with a "text" field per line, or a folder
    of .txt / .jsonl files) instead of the packaged corpus; None: the packaged corpus."""
    context_length: int = 128
    windows_per_shard: int = 64
    batch_windows: int = 16
    dtype: str = "float32"
    """Storage dtype of the cache ("float32" or "float16")."""
    precision: str = "float32"
    """Compute precision of the forward pass: "float32", or "bfloat16" autocast (``isae.data.lm.PRECISIONS``)."""

    def __post_init__(self) -> None:
        from isae.data.lm import PRECISIONS

        if self.split not in ("train", "heldout"):
            raise ValueError(f"split={self.split!r}; use 'train' or 'heldout'.")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r}; use one of {PRECISIONS}.")
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
    """"efficientnet-lite0" (packaged), "dinov2" or "resnet18" with ``weights`` (``vision.load_vision_model``)."""
    weights: str | None = None
    """Local weights of the model: a transformers folder for "dinov2" (e.g. a saved facebook/dinov2-base, P1's
    model), a state_dict file otherwise; None: the packaged asset (EfficientNet-Lite0 only)."""
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

    docs = load_documents(split=req.split, text=req.text)
    return tokenize_windows(docs, tokenizer, context_length=req.context_length, max_windows=req.n_windows)


def _lm_shards_fn(bridge, windows, requests: dict[Path, LMRequest]):
    """``make_shards(i, folders)`` for ``build_caches``: one forward pass over shard i's windows yields the hook of
    every folder that needs it. The requests share their windows (a shorter one takes a prefix of ``windows``)."""
    from isae.data.lm import hook_activations

    first = next(iter(requests.values()))
    per_shard, per_batch = first.windows_per_shard, first.batch_windows

    def make_shards(i: int, folders: list[Path]) -> dict[Path, dict]:
        counts = {d: min(requests[d].n_windows, len(windows)) - i * per_shard for d in folders}
        w = windows[i * per_shard : i * per_shard + min(per_shard, max(counts.values()))]
        hooks = sorted({requests[d].hook for d in folders})
        parts = []
        for s in range(0, len(w), per_batch):
            part = w[s : s + per_batch]
            acts = hook_activations(bridge, part.tokens, hooks, first.precision)
            parts.append((part, {h: a.cpu() for h, a in acts.items()}))
        out = {}
        for d in folders:
            acts, toks, pos = [], [], []
            for s, (part, a) in zip(range(0, len(w), per_batch), parts):
                keep = part.mask.clone()
                keep[max(0, counts[d] - s):] = False  # windows past this request's own count
                acts.append(a[requests[d].hook][keep])
                toks.append(part.tokens[keep].to(torch.int32))
                pos.append(torch.nonzero(keep)[:, 1].to(torch.int16))
            out[d] = {"acts": torch.cat(acts), "tokens": torch.cat(toks), "positions": torch.cat(pos)}
        return out

    return make_shards


def _lm_shard_fn(bridge, windows, req: LMRequest):
    """``make_shard(i)`` of one request (``_lm_shards_fn`` with one folder)."""
    key = Path(".")
    make_shards = _lm_shards_fn(bridge, windows, {key: req})
    return lambda i: make_shards(i, [key])[key]


def lm_spec(req: LMRequest, d_in: int) -> dict:
    from isae.data.lm import hook_layer

    return {"kind": "lm", **asdict(req), "layer": hook_layer(req.hook), "d_in": d_in, "n_windows": req.n_windows,
            "assets": _asset_hashes(["smollm2", "wiki-leads", "kjv", "shakespeare", "sotu", "moby-dick"])}


#: Fields in which LM requests may differ and still be cached from one forward pass.
_PER_HOOK = ("hook", "n_tokens", "dtype")


def _shared_windows(req: LMRequest) -> tuple:
    return tuple(v for k, v in asdict(req).items() if k not in _PER_HOOK)


def cache_lm_group(requests: dict[str | Path, LMRequest], bridge, tokenizer,
                   progress: bool = True) -> dict[Path, ActivationCache]:
    """Cache several requests that share their model, split and windowing (they may differ in hook, n_tokens and
    storage dtype) from one forward pass per batch, stopping after the deepest hook; returns the readers."""
    requests = {Path(d): r for d, r in requests.items()}
    if len({_shared_windows(r) for r in requests.values()}) != 1:
        raise ValueError(f"cache_lm_group: the requests must differ only in {_PER_HOOK}; got {list(requests.values())}")
    longest = max(requests.values(), key=lambda r: r.n_windows)
    windows = lm_windows(tokenizer, longest)
    for r in requests.values():
        if len(windows) < r.n_windows:
            raise ValueError(f"the {r.split} split has only {len(windows)} windows of {r.context_length} tokens; "
                             f"lower n_tokens (asked {r.n_tokens}).")
    targets = {d: (lm_spec(r, bridge.cfg.d_model), math.ceil(r.n_windows / r.windows_per_shard))
               for d, r in requests.items()}
    build_caches(targets, _lm_shards_fn(bridge, windows, requests), progress=progress,
                 desc=", ".join(sorted({f"{r.hook} ({r.split})" for r in requests.values()})))
    return {d: ActivationCache(d) for d in requests}


def cache_lm_activations(directory: str | Path, req: LMRequest, device: str | None = None, bridge=None,
                         tokenizer=None, progress: bool = True) -> ActivationCache:
    """Cache ``req`` into ``directory`` (resuming a partial build) and return the reader."""
    from isae.data.lm import load_language_model

    if bridge is None:
        bridge, tokenizer = load_language_model(req.model, device=device)
    return cache_lm_group({directory: req}, bridge, tokenizer, progress)[Path(directory)]


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

    model = model or load_vision_model(req.model, weights_path=req.weights, device=device, size=req.image_size)
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


def heldout_activations(cache: ActivationCache, n: int, seed: int = 0, center: bool = False) -> torch.Tensor:
    """n unit-norm rows drawn (seeded, without replacement) from a cache, for evaluation; with ``center`` each row
    is first centred by its own feature mean (as ``CachedStream(center=True)``)."""
    g = np.random.default_rng(derive_seed("heldout-rows", seed))
    idx = np.sort(g.choice(len(cache), size=min(n, len(cache)), replace=False))
    rows = torch.from_numpy(np.stack([cache.rows(int(i), int(i) + 1)[0] for i in idx])).float()
    if center:
        rows = rows - rows.mean(dim=1, keepdim=True)
    return rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12)


# --- the caches of a profile ---------------------------------------------------------------------------

def profile_requests(p) -> dict[str, LMRequest | VisionRequest]:
    """The four caches every real-data notebook uses, sized by a ``profiles.RealProfile``."""
    lm = dict(hook=p.lm_hook, context_length=p.context_length, dtype=p.dtype, precision=p.lm_precision)
    vision = dict(layer=p.vision_layer, image_size=p.image_size, dtype=p.dtype)
    return {
        "lm_train": LMRequest(n_tokens=p.lm_train_tokens, split="train", **lm),
        "lm_heldout": LMRequest(n_tokens=p.lm_eval_tokens, split="heldout", **lm),
        "vision_train": VisionRequest(n_images=p.vision_train_images, train=True, **vision),
        "vision_heldout": VisionRequest(n_images=p.vision_eval_images, train=False, **vision),
    }


def layer_requests(wp, p) -> dict[str, LMRequest]:
    """The LM caches of the weighted-SAE notebook (05), by folder name: ``lm_layer{L}_train`` (the first windows
    holding ``wp.lm_train_tokens`` tokens) and ``lm_layer{L}_heldout`` (``p.lm_eval_tokens``) for every layer of
    ``wp.lm_layers`` but the one of ``p.lm_hook``, whose ``lm_train`` / ``lm_heldout`` caches serve instead."""
    from isae.data.lm import hook_layer

    out = {}
    for layer in wp.lm_layers:
        hook = f"blocks.{layer}.hook_resid_post"
        if hook == p.lm_hook and hook_layer(p.lm_hook) == layer and p.lm_train_tokens >= wp.lm_train_tokens:
            continue
        for split, n_tokens in (("train", wp.lm_train_tokens), ("heldout", p.lm_eval_tokens)):
            out[f"lm_layer{layer}_{split}"] = LMRequest(hook=hook, n_tokens=n_tokens, split=split,
                                                        context_length=p.context_length, dtype=p.dtype,
                                                        precision=p.lm_precision)
    return out


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

    def vision(self, model: str, image_size: int, weights: str | None = None):
        if (model, image_size, weights) not in self._vision:
            from isae.data.vision import load_vision_model

            self._vision[model, image_size, weights] = load_vision_model(model, weights_path=weights,
                                                                         device=self.device, size=image_size)
        return self._vision[model, image_size, weights]


def open_or_build(directory: str | Path, req: LMRequest | VisionRequest, models: ModelLoader,
                  progress: bool = True) -> ActivationCache:
    """The cache of ``req`` in ``directory``: opened when complete (its manifest must match ``req``), else built
    or resumed with the model from ``models``."""
    return open_or_build_all({directory: req}, models, progress)[Path(directory)]


def open_or_build_all(requests: dict[str | Path, LMRequest | VisionRequest], models: ModelLoader,
                      progress: bool = True) -> dict[Path, ActivationCache]:
    """``open_or_build`` for many caches: the complete ones are opened (no model loaded); the incomplete LM ones
    that share model, split and windowing are built together, one forward pass for all their hooks."""
    from isae.data.cache import read_manifest

    requests = {Path(d): r for d, r in requests.items()}
    out, groups = {}, {}
    for d, req in requests.items():
        manifest = read_manifest(d)
        if manifest is not None and manifest["complete"]:
            out[d] = ActivationCache(d, expected_spec=asdict(req))
        elif isinstance(req, LMRequest):
            groups.setdefault(_shared_windows(req), {})[d] = req
        else:
            out[d] = cache_vision_activations(d, req, model=models.vision(req.model, req.image_size, req.weights),
                                              progress=progress)
    for group in groups.values():
        bridge, tokenizer = models.lm(next(iter(group.values())).model)
        out.update(cache_lm_group(group, bridge, tokenizer, progress))
    return {d: out[d] for d in requests}


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
