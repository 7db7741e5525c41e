"""Saved SAEs in SAELens's on-disk layout: ``cfg.json`` + ``sae_weights.safetensors`` (+ provenance), both ways.

Tensors: W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc [d_sae], b_dec [d_in]; iSAE-ME adds S
[d_sae, d_sae] (applied as z @ S), JumpReLU a ``threshold`` [d_sae]. ``sae_weights.safetensors`` holds only what
the inference SAE needs, because SAELens loads it with a strict ``load_state_dict``; the weighted loss Γ of P2
(``loss_weight`` [d_in], training-only) goes to ``isae_extra.safetensors``. ``cfg.json`` is SAELens 6's inference
config (the keys ``SAE.save_model`` writes) plus our own block ``isae_config`` (the full ``SAEConfig``: aRIP weight,
recipe fields), which SAELens ignores. Architectures on disk (``SAELENS_ARCHITECTURE``): iSAE is saved as
SAELens's "abstopk" (at inference it *is* AbsTopK); iSAE-ME as "isae_me", which ``isae.saelens`` registers with
SAELens. Our SAEs expect unit-norm inputs (``cfg.json`` says so under ``input_normalization``).

``load_sae`` also reads folders this module did not write: SAELens's TopK, AbsTopK, standard (ReLU) and JumpReLU
folders (``from_saelens``) and sparsify's layout (``cfg.json`` + ``sae.safetensors``), converted exactly (up to
float rounding where a fold is needed) into our ``SAE`` for analysis. Folders written before SAELens export
(iSAE saved as "isae", Γ inside the weights file) still load; ``upgrade_folder`` rewrites one in today's layout.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from isae.core.models import SAE, SAEConfig
from isae.core.provenance import _atomic_write, atomic_write_json, provenance

#: Our architecture → the architecture name written to cfg.json (SAELens's class for the same inference pass;
#: "isae_me" is registered with SAELens by ``isae.saelens``).
SAELENS_ARCHITECTURE = {"topk": "topk", "abstopk": "abstopk", "isae": "abstopk", "isae_me": "isae_me",
                        "relu": "standard", "jumprelu": "jumprelu"}
#: SAELens architecture → ours, for folders SAELens wrote ("isae": our own legacy name for iSAE).
FROM_SAELENS = {"topk": "topk", "abstopk": "abstopk", "isae_me": "isae_me", "standard": "relu",
                "jumprelu": "jumprelu", "isae": "isae"}
#: The SAELens version whose cfg.json layout these folders follow (``metadata.sae_lens_version``).
SAELENS_FORMAT_VERSION = "6.54.12"
INPUT_NORMALIZATION = "unit_norm: scale every input to ‖x‖ = 1 before the SAE"
WEIGHTS, CONFIG, EXTRA = "sae_weights.safetensors", "cfg.json", "isae_extra.safetensors"
SPARSIFY_WEIGHTS = "sae.safetensors"


class PerLatentJumpSAE(SAE):
    """A JumpReLU SAE with one threshold per latent (SAELens's JumpReLU), z = pre · [pre > θ_j], for analysis.

    Our ``SAE`` has one threshold for every latent (``SAEConfig.jump_threshold``); a SAELens JumpReLU learns one per
    latent, so its folders load as this subclass: ``encode`` / ``decode`` as SAELens's, training is not supported.
    """

    def __init__(self, cfg: SAEConfig, threshold: torch.Tensor):
        super().__init__(cfg)
        if threshold.shape != (cfg.d_sae,):
            raise ValueError(f"threshold has shape {tuple(threshold.shape)}; it must be (d_sae,) = ({cfg.d_sae},).")
        self.register_buffer("threshold", threshold.detach().float().clone())

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.preact(x - self.b_dec)
        return pre.relu() * (pre > self.threshold)  # SAELens: ReLU(pre) masked by pre > θ (equal for θ ≥ 0)

    def forward(self, *args, **kwargs):
        raise NotImplementedError("a PerLatentJumpSAE (SAELens JumpReLU, per-latent thresholds) is for analysis only "
                                  "(encode / decode); train JumpReLU SAEs with SAEConfig(architecture='jumprelu').")


def _saelens_cfg(cfg: SAEConfig) -> dict:
    """cfg.json: SAELens 6's inference config of the same forward pass, plus ``isae_config``."""
    out = {"d_in": cfg.d_in, "d_sae": cfg.d_sae, "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": True,
           "normalize_activations": "none", "reshape_activations": "none",
           "metadata": {"sae_lens_version": SAELENS_FORMAT_VERSION, "sae_lens_training_version": None,
                        "written_by": "isae", "isae_architecture": cfg.architecture}}
    out["k"] = cfg.k  # SAELens's TopK / AbsTopK read it; the dense classes ignore it (kept for every architecture)
    if cfg.spec.k_sparse:
        out["rescale_acts_by_decoder_norm"] = False
    if cfg.spec.multistep:
        out["n_steps"] = cfg.n_steps
    return out | {"architecture": SAELENS_ARCHITECTURE[cfg.architecture], "input_normalization": INPUT_NORMALIZATION,
                  "isae_config": cfg.to_dict()}


def inference_tensors(sae: SAE) -> dict[str, torch.Tensor]:
    """The tensors of ``sae_weights.safetensors`` (SAELens's names and layout), float32 on the CPU."""
    cfg = sae.cfg
    tensors = {"W_enc": sae.W_enc.detach().T, "W_dec": sae.W_dec.detach(), "b_enc": sae.b_enc.detach(),
               "b_dec": sae.b_dec.detach()}
    if cfg.spec.multistep:
        tensors["S"] = sae.S.detach()
    if cfg.spec.jump:
        tensors["threshold"] = sae.threshold if isinstance(sae, PerLatentJumpSAE) else \
            torch.full((cfg.d_sae,), cfg.jump_threshold)
    return {k: v.float().contiguous().cpu() for k, v in tensors.items()}


def save_sae(sae: SAE, directory: str | Path, **params) -> Path:
    """Write ``sae`` to ``directory`` (atomically, file by file) with a provenance.json of ``params`` (``device``, the
    device it was trained on, defaults to where its parameters are)."""
    directory = Path(directory)
    _write(sae, directory)
    params.setdefault("device", str(sae.W_dec.device))
    atomic_write_json(directory / "provenance.json", provenance(**params))
    return directory


def _write(sae: SAE, directory: Path) -> None:
    tensors = inference_tensors(sae)
    _atomic_write(directory / WEIGHTS, lambda p: save_file(tensors, str(p)))
    if not bool((sae.loss_weight == 1).all()):  # P2's weighted loss Γ (training-only, kept for provenance)
        extra = {"loss_weight": sae.loss_weight.detach().float().contiguous().cpu()}
        _atomic_write(directory / EXTRA, lambda p: save_file(extra, str(p)))
    else:
        (directory / EXTRA).unlink(missing_ok=True)
    atomic_write_json(directory / CONFIG, _saelens_cfg(sae.cfg))


def load_sae(directory: str | Path, device: str | torch.device = "cpu") -> SAE:
    """Load an SAE folder: one ``save_sae`` wrote (today's or an earlier layout), one SAELens wrote (TopK, AbsTopK,
    standard, JumpReLU: ``from_saelens``) or sparsify's layout (``from_sparsify``)."""
    directory = Path(directory)
    if not (directory / CONFIG).exists():
        raise FileNotFoundError(f"{directory / CONFIG} is missing: is {directory} a folder written by save_sae "
                                "(or by SAELens / sparsify)?")
    raw = json.loads((directory / CONFIG).read_text())
    if "isae_config" not in raw and (directory / SPARSIFY_WEIGHTS).exists() and not (directory / WEIGHTS).exists():
        return from_sparsify(directory, raw).to(device)
    if not (directory / WEIGHTS).exists():
        raise FileNotFoundError(f"{directory / WEIGHTS} is missing: is {directory} a folder written by save_sae?")
    tensors = load_file(str(directory / WEIGHTS))
    if "isae_config" not in raw:
        return from_saelens(raw, tensors, where=str(directory)).to(device)
    cfg = SAEConfig(**raw["isae_config"])
    threshold = tensors.get("threshold")
    if cfg.spec.jump and threshold is not None and not bool((threshold == cfg.jump_threshold).all()):
        sae = PerLatentJumpSAE(cfg, threshold)
    else:
        sae = SAE(cfg)
    _copy_weights(sae, tensors["W_enc"].T, tensors["W_dec"], tensors["b_enc"], tensors["b_dec"], tensors.get("S"))
    extra = load_file(str(directory / EXTRA)) if (directory / EXTRA).exists() else {}
    loss_weight = extra.get("loss_weight", tensors.get("loss_weight"))  # before SAELens export: in the weights file
    if loss_weight is not None:
        with torch.no_grad():
            sae.loss_weight.copy_(loss_weight)
    return sae.to(device)


def _copy_weights(sae: SAE, W_enc: torch.Tensor, W_dec: torch.Tensor, b_enc: torch.Tensor, b_dec: torch.Tensor,
                  S: torch.Tensor | None = None) -> None:
    """Copy weights in our layout (W_enc [d_sae, d_in]) into ``sae``."""
    with torch.no_grad():
        sae.W_enc.copy_(W_enc)
        sae.W_dec.copy_(W_dec)
        sae.b_enc.copy_(b_enc)
        sae.b_dec.copy_(b_dec)
        if sae.cfg.spec.multistep:
            sae.S.copy_(S)


def _shape_error(where: str, name: str, got: tuple, want: tuple) -> ValueError:
    return ValueError(f"{where}: tensor {name} has shape {got} but cfg.json's d_in / d_sae say {want}; the folder is "
                      "inconsistent (was cfg.json edited, or the weights file replaced?).")


def from_saelens(cfg: dict, tensors: dict[str, torch.Tensor], where: str = "SAELens folder") -> SAE:
    """Our ``SAE`` with the same encode and decode as the SAELens inference SAE of ``cfg`` (cfg.json) and ``tensors``.

    Folded exactly where SAELens's forward differs in form: ``rescale_acts_by_decoder_norm`` (the decoder norms go
    into W_enc, b_enc and W_dec, as SAELens's own ``fold_W_dec_norm``), ``apply_b_dec_to_input = False`` (b_dec W_enc
    added to b_enc), a nonzero b_enc on TopK / AbsTopK (our ``encoder_bias``), per-latent JumpReLU thresholds
    (``PerLatentJumpSAE``). Input normalisations SAELens applies at run time (layer_norm, constant_norm_rescale)
    cannot be folded and are refused; "expected_average_only_in" is a no-op in SAELens's own forward too.
    """
    arch = cfg.get("architecture", "standard")
    if arch not in FROM_SAELENS:
        raise ValueError(f"{where}: architecture={arch!r} has no equivalent here; supported SAELens architectures: "
                         f"{sorted(FROM_SAELENS)}.")
    norm = cfg.get("normalize_activations") or "none"
    if norm not in ("none", "expected_average_only_in"):
        raise ValueError(f"{where}: normalize_activations={norm!r} is applied by SAELens at run time and cannot be "
                         "folded into the weights here; fold it in SAELens first (e.g. fold_activation_whitening) or "
                         "re-save the SAE with normalize_activations='none'.")
    ours = FROM_SAELENS[arch]
    d_in, d_sae = int(cfg["d_in"]), int(cfg["d_sae"])
    t = {k: v.detach().float() for k, v in tensors.items()}
    if "log_threshold" in t:  # older SAELens JumpReLU checkpoints
        t["threshold"] = t.pop("log_threshold").exp()
    need = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    if ours == "isae_me":
        need["S"] = (d_sae, d_sae)
    if ours == "jumprelu":
        need["threshold"] = (d_sae,)
    for name, shape in need.items():
        if name not in t:
            raise ValueError(f"{where}: the weights have no tensor {name!r} (found {sorted(t)}); a {arch!r} SAE "
                             f"needs {sorted(need)}.")
        if tuple(t[name].shape) != shape:
            raise _shape_error(where, name, tuple(t[name].shape), shape)
    W_enc, W_dec, b_dec = t["W_enc"], t["W_dec"], t["b_dec"]
    b_enc = t.get("b_enc", torch.zeros(d_sae))
    threshold = t.get("threshold")
    if cfg.get("rescale_acts_by_decoder_norm", False):
        if ours == "isae_me":
            raise ValueError(f"{where}: rescale_acts_by_decoder_norm=True is not supported for isae_me.")
        n = W_dec.norm(dim=1).clamp_min(1e-8)
        W_enc, b_enc, W_dec = W_enc * n, b_enc * n, W_dec / n[:, None]
    if not cfg.get("apply_b_dec_to_input", True):  # SAELens: pre = x W_enc + b_enc = (x − b_dec) W_enc + b_enc'
        b_enc = b_enc + b_dec @ W_enc
    extra = {}
    if ours in ("topk", "abstopk", "isae", "isae_me"):
        if "k" not in cfg:
            raise ValueError(f"{where}: cfg.json of a {arch!r} SAE has no k (the number of active latents); add it.")
        extra["k"] = int(cfg["k"])
        extra["encoder_bias"] = bool((b_enc != 0).any())
    if ours == "isae_me":
        extra["n_steps"] = int(cfg.get("n_steps", 5))
    uniform = threshold is not None and bool((threshold == threshold[0]).all()) and float(threshold[0]) >= 0
    if ours == "jumprelu" and uniform:
        extra["jump_threshold"] = float(threshold[0])
    sae_cfg = SAEConfig(d_in=d_in, d_sae=d_sae, architecture=ours, **extra)
    sae = PerLatentJumpSAE(sae_cfg, threshold) if ours == "jumprelu" and not uniform else SAE(sae_cfg)
    _copy_weights(sae, W_enc.T, W_dec, b_enc, b_dec, t.get("S"))
    return sae


def from_sparsify(directory: str | Path, cfg: dict | None = None) -> SAE:
    """Our ``SAE`` from sparsify's layout (``cfg.json`` with d_in, k, num_latents or expansion_factor, signed;
    ``sae.safetensors`` with encoder.weight [d_sae, d_in], encoder.bias, W_dec [d_sae, d_in], b_dec).

    sparsify encodes z = TopK(ReLU(encoder(x − b_dec))) — the same code as our TopK with an encoder bias (AbsTopK
    when ``signed``).
    """
    directory = Path(directory)
    cfg = json.loads((directory / CONFIG).read_text()) if cfg is None else cfg
    t = {k: v.float() for k, v in load_file(str(directory / SPARSIFY_WEIGHTS)).items()}
    d_in = int(cfg["d_in"])
    d_sae = int(cfg.get("num_latents") or d_in * int(cfg["expansion_factor"]))
    if cfg.get("normalize_decoder") is False and "b_dec" not in t:
        raise ValueError(f"{directory}: sparsify folder without b_dec; not a layout this loader knows.")
    W_enc = t["encoder.weight"]
    if tuple(W_enc.shape) != (d_sae, d_in):
        raise _shape_error(str(directory), "encoder.weight", tuple(W_enc.shape), (d_sae, d_in))
    arch = "abstopk" if cfg.get("signed", False) else "topk"
    b_enc = t.get("encoder.bias", torch.zeros(d_sae))
    sae = SAE(SAEConfig(d_in=d_in, d_sae=d_sae, k=int(cfg["k"]), architecture=arch,
                        encoder_bias=bool((b_enc != 0).any())))
    _copy_weights(sae, W_enc, t["W_dec"], b_enc, t.get("b_dec", torch.zeros(d_in)))
    return sae


def upgrade_folder(directory: str | Path) -> bool:
    """Rewrite a folder ``save_sae`` wrote before SAELens export (iSAE saved as "isae", Γ inside the weights file)
    in today's layout, keeping its provenance.json; True when something changed."""
    directory = Path(directory)
    raw = json.loads((directory / CONFIG).read_text())
    if "isae_config" not in raw:
        raise ValueError(f"{directory} was not written by save_sae (no isae_config in cfg.json); nothing to upgrade.")
    before = {name: (directory / name).read_bytes() for name in (CONFIG, WEIGHTS)}
    sae = load_sae(directory)
    _write(sae, directory)
    return any((directory / name).read_bytes() != data for name, data in before.items())
