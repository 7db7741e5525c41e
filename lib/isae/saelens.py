"""SAELens support for this project's SAE folders: ``import isae.saelens`` registers iSAE-ME with SAELens.

SAELens loads our TopK, AbsTopK and iSAE folders with its own classes (iSAE is saved under SAELens's "abstopk":
at inference it is AbsTopK). iSAE-ME's multistep encoder has no SAELens class, so this module defines one,
``ISAEMultistepSAE`` (architecture "isae_me"), whose ``encode`` runs the T steps z ← AbsTopK(pre + z S) exactly
as ``isae.core.models.SAE.encode``, and registers it with ``sae_lens.register_sae_class``. It also registers "isae",
the name folders written before the SAELens export used for iSAE, as SAELens's AbsTopK, so those load too.

This module imports only torch, safetensors and sae_lens, so it also works in an environment that has SAELens but not
the rest of isae's dependencies (the project's own environment pins sae-lens)::

    import isae.saelens                      # registers "isae_me" (and the legacy "isae")
    from sae_lens import SAE
    sae = SAE.load_from_disk("outputs/smoke/saes/iid_isae_me_seed0")
    x_hat = sae.decode(sae.encode(x))        # x: unit-norm rows, as our SAEs were trained on

``load`` does the same and also reads folders written before the SAELens export (n_steps and Γ were only in
``isae_config`` / the weights file then); ``python -m isae.saelens DIR ...`` prints what SAELens makes of folders.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from sae_lens import SAE, AbsTopKSAE, AbsTopKSAEConfig, register_sae_class
from sae_lens.registry import SAE_CLASS_REGISTRY
from sae_lens.saes.abstopk_sae import AbsTopK
from safetensors.torch import load_file
from torch import nn

ARCHITECTURE = "isae_me"
LEGACY_ISAE = "isae"
UPGRADE_HINT = ("re-save it in today's layout from the project's environment: "
                ".venv/bin/python scripts/upgrade_sae_folders.py DIR (or load it with isae.saelens.load)")


@dataclass
class ISAEMultistepSAEConfig(AbsTopKSAEConfig):
    """SAELens config of iSAE-ME's inference SAE: AbsTopK's plus ``n_steps`` (T, the encoder iterations)."""

    n_steps: int | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.rescale_acts_by_decoder_norm:
            raise ValueError("rescale_acts_by_decoder_norm=True is not supported by isae_me (its atoms are unit norm "
                             "and the lateral matrix S is defined on the unscaled code); set it to False.")

    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE


class ISAEMultistepSAE(AbsTopKSAE):
    """iSAE-ME at inference: pre = (x − b_dec) W_enc + b_enc, z⁽¹⁾ = AbsTopK(pre), z⁽ᵗ⁾ = AbsTopK(pre + z⁽ᵗ⁻¹⁾ S)
    for t = 2..T; the code is z⁽ᵀ⁾ and the decoder is AbsTopK's (z W_dec + b_dec)."""

    cfg: ISAEMultistepSAEConfig  # type: ignore[assignment]
    S: nn.Parameter

    def __init__(self, cfg: ISAEMultistepSAEConfig, use_error_term: bool = False):
        super().__init__(cfg, use_error_term)

    def initialize_weights(self) -> None:
        super().initialize_weights()
        self.S = nn.Parameter(torch.zeros(self.cfg.d_sae, self.cfg.d_sae, dtype=self.dtype, device=self.device))

    def get_activation_fn(self):
        return AbsTopK(self.cfg.k)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.n_steps is None or self.cfg.n_steps < 1:
            raise ValueError(f"n_steps={self.cfg.n_steps!r}: cfg.json does not say how many encoder steps this "
                             f"iSAE-ME runs (a folder written before the SAELens export); {UPGRADE_HINT}.")
        sae_in = self.process_sae_in(x)
        pre = self.hook_sae_acts_pre(sae_in @ self.W_enc + self.b_enc)
        z = self.activation_fn(pre)
        for _ in range(self.cfg.n_steps - 1):
            z = self.activation_fn(pre + z @ self.S)
        return self.hook_sae_acts_post(z)

    def process_state_dict_for_loading(self, state_dict: dict) -> None:
        state_dict.pop("loss_weight", None)  # training-only Γ, inside the weights file before the SAELens export


def register() -> None:
    """Register "isae_me" (and the legacy "isae" as AbsTopK) with SAELens; idempotent."""
    if ARCHITECTURE not in SAE_CLASS_REGISTRY:
        register_sae_class(ARCHITECTURE, ISAEMultistepSAE, ISAEMultistepSAEConfig)
    if LEGACY_ISAE not in SAE_CLASS_REGISTRY:
        register_sae_class(LEGACY_ISAE, AbsTopKSAE, AbsTopKSAEConfig)


register()


def load(directory: str | Path, device: str = "cpu") -> SAE:
    """A SAELens SAE from one of our folders, today's layout or an earlier one (``SAE.load_from_disk`` otherwise).

    Earlier layouts: iSAE under "isae", iSAE-ME without a top-level ``n_steps``, Γ (``loss_weight``) inside the weights
    file; each is read from ``isae_config`` / dropped here, so the SAE is the one ``isae.core.io.load_sae`` gives.
    """
    directory = Path(directory)
    for name in ("cfg.json", "sae_weights.safetensors"):
        if not (directory / name).exists():
            raise FileNotFoundError(f"{directory / name} is missing: is {directory} an SAE folder?")
    cfg = json.loads((directory / "cfg.json").read_text())
    own = cfg.get("isae_config")
    if own is None:
        return SAE.load_from_disk(directory, device=device)
    if cfg.get("architecture") == LEGACY_ISAE:
        cfg["architecture"] = "abstopk"
    if cfg.get("architecture") == ARCHITECTURE and cfg.get("n_steps") is None:
        cfg["n_steps"] = own["n_steps"]
    cfg.setdefault("metadata", {}).setdefault("sae_lens_version", "6.0.0")
    cfg["device"] = device
    state = load_file(str(directory / "sae_weights.safetensors"))
    state.pop("loss_weight", None)
    sae = SAE.from_dict(cfg)
    sae.load_state_dict(state)
    return sae.to(device)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Load SAE folders with SAELens (after registering iSAE-ME) and print "
                                            "each one's class and shape.")
    p.add_argument("dirs", nargs="+", type=Path, help="SAE folders (cfg.json + sae_weights.safetensors)")
    args = p.parse_args(argv)
    for d in args.dirs:
        sae = load(d)
        print(f"{d}: {type(sae).__name__} d_in={sae.cfg.d_in} d_sae={sae.cfg.d_sae} k={getattr(sae.cfg, 'k', None)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
