"""Saved SAEs in SAELens's on-disk layout: ``cfg.json`` + ``sae_weights.safetensors`` (+ provenance).

Tensors: W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc [d_sae], b_dec [d_in]; iSAE-ME adds S
[d_sae, d_sae] (applied as z @ S), JumpReLU a ``threshold`` [d_sae], and an SAE trained with P2's
weighted loss its ``loss_weight`` Γ [d_in]. The SAEs expect unit-norm inputs
(``cfg.json`` says so under ``input_normalization``); nothing else needs folding.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from isae.core.models import SAE, SAEConfig
from isae.core.provenance import _atomic_write, atomic_write_json, provenance

#: Our architecture → SAELens's name for the same forward pass (None: SAELens has no equivalent).
SAELENS_ARCHITECTURE = {"topk": "topk", "relu": "standard", "jumprelu": "jumprelu",
                        "abstopk": None, "isae": None, "isae_me": None}


def save_sae(sae: SAE, directory: str | Path, **params) -> Path:
    """Write ``sae`` to ``directory`` (atomically, file by file) with a provenance.json of ``params``."""
    directory = Path(directory)
    cfg = sae.cfg
    tensors = {
        "W_enc": sae.W_enc.detach().T.contiguous().cpu(),
        "W_dec": sae.W_dec.detach().contiguous().cpu(),
        "b_enc": sae.b_enc.detach().contiguous().cpu(),
        "b_dec": sae.b_dec.detach().contiguous().cpu(),
    }
    if cfg.spec.multistep:
        tensors["S"] = sae.S.detach().contiguous().cpu()
    if not bool((sae.loss_weight == 1).all()):  # P2's weighted loss Γ (training-only, kept for provenance)
        tensors["loss_weight"] = sae.loss_weight.detach().contiguous().cpu()
    if cfg.spec.jump:
        tensors["threshold"] = torch.full((cfg.d_sae,), cfg.jump_threshold)
    saelens_cfg = {
        "architecture": SAELENS_ARCHITECTURE[cfg.architecture] or cfg.architecture,
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "k": cfg.k,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "input_normalization": "unit_norm: scale every input to ‖x‖ = 1 before the SAE",
        "isae_config": cfg.to_dict(),
    }
    _atomic_write(directory / "sae_weights.safetensors", lambda p: save_file(tensors, str(p)))
    atomic_write_json(directory / "cfg.json", saelens_cfg)
    atomic_write_json(directory / "provenance.json", provenance(**params))
    return directory


def load_sae(directory: str | Path, device: str | torch.device = "cpu") -> SAE:
    """Load an SAE written by ``save_sae``."""
    directory = Path(directory)
    for name in ("cfg.json", "sae_weights.safetensors"):
        if not (directory / name).exists():
            raise FileNotFoundError(f"{directory / name} is missing: is {directory} a folder written by save_sae?")
    cfg = SAEConfig(**json.loads((directory / "cfg.json").read_text())["isae_config"])
    tensors = load_file(str(directory / "sae_weights.safetensors"))
    sae = SAE(cfg)
    with torch.no_grad():
        sae.W_enc.copy_(tensors["W_enc"].T)
        sae.W_dec.copy_(tensors["W_dec"])
        sae.b_enc.copy_(tensors["b_enc"])
        sae.b_dec.copy_(tensors["b_dec"])
        if cfg.spec.multistep:
            sae.S.copy_(tensors["S"])
        if "loss_weight" in tensors:
            sae.loss_weight.copy_(tensors["loss_weight"])
    return sae.to(device)
