"""SAELens layout, both directions: our folders as SAELens reads them, and SAELens's folders as we read them.

Two independent checks: each SAELens inference forward written out below from sae-lens 6.54.12's source
(``sae_lens/saes/{topk,abstopk,standard,jumprelu}_sae.py``, ``SAE.process_sae_in``), with SAELens-written folders
built by hand in the exact format its ``save_model`` / ``save_inference_model`` write; and the real library (pinned
in the project's environment) loading our folders. ``make saelens-roundtrip`` (``scripts/saelens_roundtrip.py``)
also has SAELens write folders with its own save code.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import D_IN, D_SAE, K, make_sae
from safetensors.torch import load_file, save_file

from isae.core.io import PerLatentJumpSAE, load_sae, save_sae, upgrade_folder
from isae.core.models import SAE

P1 = ("topk", "abstopk", "isae", "isae_me")
SAELENS_VERSION = "6.54.12"


# --- SAELens's inference forward, from its source -------------------------------------------------------------

def saelens_encode(cfg: dict, t: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """SAELens 6.54.12's ``encode`` for cfg["architecture"] (plus isae_me as ``isae.saelens`` defines it)."""
    arch = cfg["architecture"]
    sae_in = x - t["b_dec"] * cfg.get("apply_b_dec_to_input", True)
    pre = sae_in @ t["W_enc"] + t["b_enc"]
    if arch in ("topk", "abstopk", "isae_me") and cfg.get("rescale_acts_by_decoder_norm", False):
        pre = pre * t["W_dec"].norm(dim=-1)

    def topk(h: torch.Tensor) -> torch.Tensor:
        idx = torch.topk(h, cfg["k"], dim=-1).indices
        return torch.zeros_like(h).scatter(-1, idx, h.gather(-1, idx).relu())

    def abstopk(h: torch.Tensor) -> torch.Tensor:
        idx = torch.topk(h.abs(), cfg["k"], dim=-1).indices
        return torch.zeros_like(h).scatter(-1, idx, h.gather(-1, idx))

    if arch == "topk":
        return topk(pre)
    if arch == "abstopk":
        return abstopk(pre)
    if arch == "isae_me":
        z = abstopk(pre)
        for _ in range(cfg["n_steps"] - 1):
            z = abstopk(pre + z @ t["S"])
        return z
    if arch == "standard":
        return pre.relu()
    if arch == "jumprelu":
        return pre.relu() * (pre > t["threshold"])
    raise AssertionError(arch)


def saelens_decode(cfg: dict, t: dict[str, torch.Tensor], z: torch.Tensor) -> torch.Tensor:
    if cfg.get("rescale_acts_by_decoder_norm", False):
        z = z / t["W_dec"].norm(dim=-1)
    return z @ t["W_dec"] + t["b_dec"]


def _trained_looking(architecture: str, **kw) -> SAE:
    sae = make_sae(architecture, seed=5, n_steps=3, **kw)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in sae.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
        sae.normalize_atoms()
    return sae


# --- ours → SAELens ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("architecture", P1 + ("relu", "jumprelu"))
def test_saved_folder_is_what_saelens_loads_and_computes_our_codes(architecture, tmp_path: Path, x_unit):
    sae = _trained_looking(architecture, encoder_bias=architecture == "topk")  # one k-sparse model with a b_enc
    save_sae(sae, tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    t = load_file(str(tmp_path / "sae_weights.safetensors"))
    expected_arch = {"isae": "abstopk", "relu": "standard"}.get(architecture, architecture)
    assert cfg["architecture"] == expected_arch
    # the keys SAELens's own save_model writes for this architecture are all there, with SAELens's defaults
    base = {"d_in", "d_sae", "dtype", "device", "apply_b_dec_to_input", "normalize_activations",
            "reshape_activations", "metadata", "architecture"}
    k_sparse = {"k", "rescale_acts_by_decoder_norm"} if architecture in P1 else set()
    assert base | k_sparse <= set(cfg)
    assert cfg["metadata"]["sae_lens_version"] == SAELENS_VERSION
    assert (cfg["normalize_activations"], cfg["reshape_activations"]) == ("none", "none")
    if architecture == "isae_me":
        assert cfg["n_steps"] == 3
    # SAELens loads with a strict load_state_dict: exactly the inference tensors
    want = {"W_enc", "W_dec", "b_enc", "b_dec"} | ({"S"} if architecture == "isae_me" else set()) | (
        {"threshold"} if architecture == "jumprelu" else set())
    assert set(t) == want
    with torch.no_grad():
        z_ours = sae.encode(x_unit)
        z_theirs = saelens_encode(cfg, t, x_unit)
        assert torch.equal(z_ours != 0, z_theirs != 0)
        torch.testing.assert_close(z_theirs, z_ours, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(saelens_decode(cfg, t, z_theirs), sae.decode(z_ours), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("architecture", P1 + ("relu", "jumprelu"))
def test_the_real_saelens_loads_our_folder_and_computes_our_codes(architecture, tmp_path: Path, x_unit):
    sae_lens = pytest.importorskip("sae_lens")
    import isae.saelens  # noqa: F401  (registers iSAE-ME's multistep encoder with SAELens)

    assert sae_lens.__version__ == SAELENS_VERSION
    sae = _trained_looking(architecture, encoder_bias=architecture == "topk")
    save_sae(sae, tmp_path)
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path))
    with torch.no_grad():
        z_ours, z_theirs = sae.encode(x_unit), theirs.encode(x_unit)
        assert torch.equal(z_ours != 0, z_theirs != 0)
        torch.testing.assert_close(z_theirs, z_ours, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(theirs.decode(z_theirs), sae.decode(z_ours), rtol=1e-5, atol=1e-6)


def test_isae_keeps_its_training_fields_in_isae_config_only(tmp_path: Path):
    save_sae(_trained_looking("isae"), tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["architecture"] == "abstopk" and "arip_coef" not in cfg
    assert cfg["isae_config"]["architecture"] == "isae" and cfg["isae_config"]["arip_coef"] == 0.1
    assert load_sae(tmp_path).cfg.architecture == "isae"


def test_weighted_loss_gamma_goes_to_a_side_file_that_saelens_never_reads(tmp_path: Path):
    sae = _trained_looking("topk")
    gamma = torch.linspace(0.5, 1.5, D_IN)
    sae.set_loss_weight(gamma)
    save_sae(sae, tmp_path)
    assert set(load_file(str(tmp_path / "sae_weights.safetensors"))) == {"W_enc", "W_dec", "b_enc", "b_dec"}
    assert torch.equal(load_file(str(tmp_path / "isae_extra.safetensors"))["loss_weight"], gamma)
    assert torch.equal(load_sae(tmp_path).loss_weight, gamma)
    save_sae(_trained_looking("topk"), tmp_path)  # an unweighted SAE over it leaves no stale Γ behind
    assert not (tmp_path / "isae_extra.safetensors").exists()


# --- legacy folders (before the SAELens export) ------------------------------------------------------------------

def _write_legacy(sae: SAE, directory: Path, gamma: torch.Tensor | None = None) -> None:
    """The layout save_sae wrote before: our architecture name (None → ours) for abstopk/isae/isae_me, no metadata,
    no n_steps, Γ inside the weights file."""
    directory.mkdir(parents=True, exist_ok=True)
    t = {"W_enc": sae.W_enc.detach().T.contiguous(), "W_dec": sae.W_dec.detach().clone(),
         "b_enc": sae.b_enc.detach().clone(), "b_dec": sae.b_dec.detach().clone()}
    if sae.cfg.spec.multistep:
        t["S"] = sae.S.detach().clone()
    if gamma is not None:
        t["loss_weight"] = gamma
    save_file(t, str(directory / "sae_weights.safetensors"))
    legacy_name = {"topk": "topk", "relu": "standard", "jumprelu": "jumprelu"}.get(sae.cfg.architecture,
                                                                                 sae.cfg.architecture)
    cfg = {"architecture": legacy_name, "d_in": sae.cfg.d_in, "d_sae": sae.cfg.d_sae, "k": sae.cfg.k,
           "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": True, "normalize_activations": "none",
           "input_normalization": "unit_norm", "isae_config": sae.cfg.to_dict()}
    (directory / "cfg.json").write_text(json.dumps(cfg))
    (directory / "provenance.json").write_text(json.dumps({"params": {"seed": 5}}))


@pytest.mark.parametrize("architecture", P1)
def test_folders_written_before_the_saelens_export_still_load_and_upgrade(architecture, tmp_path: Path, x_unit):
    sae = _trained_looking(architecture)
    gamma = torch.linspace(0.5, 1.5, D_IN)
    _write_legacy(sae, tmp_path, gamma)
    old = load_sae(tmp_path)
    assert old.cfg == sae.cfg and torch.equal(old.loss_weight, gamma)
    with torch.no_grad():
        assert torch.equal(old.encode(x_unit), sae.encode(x_unit))
    assert upgrade_folder(tmp_path) is True
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["architecture"] == {"isae": "abstopk"}.get(architecture, architecture)
    assert "loss_weight" not in load_file(str(tmp_path / "sae_weights.safetensors"))
    assert json.loads((tmp_path / "provenance.json").read_text()) == {"params": {"seed": 5}}  # kept
    new = load_sae(tmp_path)
    assert new.cfg == sae.cfg and torch.equal(new.loss_weight, gamma)
    for name, tensor in sae.state_dict().items():
        if name != "loss_weight":  # Γ was written beside the weights, not set on ``sae``
            assert torch.equal(new.state_dict()[name], tensor), name
    assert upgrade_folder(tmp_path) is False  # idempotent


# --- SAELens → ours ----------------------------------------------------------------------------------------------

def _saelens_cfg(architecture: str, **extra) -> dict:
    """cfg.json exactly as sae-lens 6.54.12's ``SAE.save_model`` writes it (key order included)."""
    cfg = {"d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": True,
           "normalize_activations": "none", "reshape_activations": "none",
           "metadata": {"sae_lens_version": SAELENS_VERSION, "sae_lens_training_version": SAELENS_VERSION}}
    if architecture in ("topk", "abstopk"):
        cfg |= {"k": K, "rescale_acts_by_decoder_norm": False}
    cfg |= extra
    cfg["architecture"] = architecture
    return cfg


def _saelens_tensors(architecture: str, seed: int = 0, decoder_norm: float | None = None) -> dict[str, torch.Tensor]:
    """Weights under SAELens's names and layout (W_enc [d_in, d_sae]); every tensor nonzero, decoder rows of random
    norm unless ``decoder_norm``."""
    g = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(D_SAE, D_IN, generator=g)
    W_dec = W_dec / W_dec.norm(dim=1, keepdim=True) * (torch.rand(D_SAE, 1, generator=g) + 0.5 if decoder_norm is None
                                                       else decoder_norm)
    t = {"W_dec": W_dec, "W_enc": W_dec.T + 0.1 * torch.randn(D_IN, D_SAE, generator=g),
         "b_dec": 0.1 * torch.randn(D_IN, generator=g), "b_enc": 0.05 * torch.randn(D_SAE, generator=g)}
    if architecture == "jumprelu":
        t["threshold"] = 0.02 + 0.05 * torch.rand(D_SAE, generator=g)
    return t


def _write_saelens(directory: Path, cfg: dict, t: dict[str, torch.Tensor]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in t.items()}, str(directory / "sae_weights.safetensors"))
    (directory / "cfg.json").write_text(json.dumps(cfg))
    return directory


SAELENS_CASES = {
    "topk": ("topk", {}, None, "topk"),
    "abstopk": ("abstopk", {}, None, "abstopk"),
    "standard": ("standard", {}, None, "relu"),
    "jumprelu": ("jumprelu", {}, None, "jumprelu"),
    # TopKTrainingSAE.save_inference_model: rescale flag True (norms already folded there; here they are not, so
    # the fold is exercised)
    "topk_rescaled": ("topk", {"rescale_acts_by_decoder_norm": True}, None, "topk"),
    "standard_no_b_dec_in": ("standard", {"apply_b_dec_to_input": False}, None, "relu"),
    "topk_unit_decoder": ("topk", {}, 1.0, "topk"),
}


@pytest.mark.parametrize("case", sorted(SAELENS_CASES))
def test_a_saelens_folder_loads_with_saelens_encode_and_decode(case, tmp_path: Path, x_unit):
    arch, extra, norm, ours = SAELENS_CASES[case]
    cfg = _saelens_cfg(arch, **extra)
    t = _saelens_tensors(arch, seed=len(case), decoder_norm=norm)
    sae = load_sae(_write_saelens(tmp_path, cfg, t))
    assert sae.cfg.architecture == ours and (sae.cfg.d_in, sae.cfg.d_sae) == (D_IN, D_SAE)
    if arch in ("topk", "abstopk"):
        assert sae.cfg.k == K and sae.cfg.encoder_bias  # SAELens's b_enc is kept
    folded = extra or arch == "jumprelu"
    if not folded:  # weights copied as they are (our W_enc is SAELens's transposed)
        assert torch.equal(sae.W_enc.detach(), t["W_enc"].T) and torch.equal(sae.W_dec.detach(), t["W_dec"])
        assert torch.equal(sae.b_enc.detach(), t["b_enc"]) and torch.equal(sae.b_dec.detach(), t["b_dec"])
    with torch.no_grad():
        z_theirs = saelens_encode(cfg, t, x_unit)
        z_ours = sae.encode(x_unit)
        assert torch.equal(z_ours != 0, z_theirs != 0)
        assert (z_theirs != 0).any()
        torch.testing.assert_close(z_ours, z_theirs, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(sae.decode(z_ours), saelens_decode(cfg, t, z_theirs), rtol=1e-5, atol=1e-5)


def test_saelens_jumprelu_with_per_latent_thresholds_keeps_them(tmp_path: Path, x_unit):
    t = _saelens_tensors("jumprelu")
    sae = load_sae(_write_saelens(tmp_path / "a", _saelens_cfg("jumprelu"), t))
    assert isinstance(sae, PerLatentJumpSAE) and torch.equal(sae.threshold, t["threshold"])
    with pytest.raises(NotImplementedError, match="analysis only"):
        sae(x_unit)
    save_sae(sae, tmp_path / "b")  # and our own save keeps them
    again = load_sae(tmp_path / "b")
    assert isinstance(again, PerLatentJumpSAE) and torch.equal(again.threshold, t["threshold"])
    t["threshold"] = torch.full((D_SAE,), 0.03)  # one threshold for all: our plain JumpReLU
    plain = load_sae(_write_saelens(tmp_path / "c", _saelens_cfg("jumprelu"), t))
    assert type(plain) is SAE and plain.cfg.jump_threshold == pytest.approx(0.03)


def test_older_saelens_jumprelu_log_threshold_is_exponentiated(tmp_path: Path, x_unit):
    t = _saelens_tensors("jumprelu")
    threshold = t.pop("threshold")
    t["log_threshold"] = threshold.log()
    sae = load_sae(_write_saelens(tmp_path, _saelens_cfg("jumprelu"), t))
    torch.testing.assert_close(sae.threshold, threshold)


def test_sparsify_layout_loads_as_topk_with_an_encoder_bias(tmp_path: Path, x_unit):
    g = torch.Generator().manual_seed(3)
    enc = torch.randn(D_SAE, D_IN, generator=g)
    t = {"encoder.weight": enc, "encoder.bias": 0.05 * torch.randn(D_SAE, generator=g),
         "W_dec": torch.randn(D_SAE, D_IN, generator=g), "b_dec": 0.1 * torch.randn(D_IN, generator=g)}
    save_file(t, str(tmp_path / "sae.safetensors"))
    (tmp_path / "cfg.json").write_text(json.dumps({"expansion_factor": D_SAE // D_IN, "normalize_decoder": True,
                                                   "num_latents": D_SAE, "k": K, "d_in": D_IN}))
    sae = load_sae(tmp_path)
    assert sae.cfg.architecture == "topk" and sae.cfg.k == K
    pre = (x_unit - t["b_dec"]) @ enc.T + t["encoder.bias"]  # sparsify: TopK(ReLU(encoder(x − b_dec)))
    top = pre.relu().topk(K, dim=1)
    z = torch.zeros_like(pre).scatter(1, top.indices, top.values)
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(x_unit), z)


@pytest.mark.parametrize(("cfg_extra", "match"), [
    ({"architecture": "gated"}, r"architecture='gated' has no equivalent"),
    ({"normalize_activations": "layer_norm"}, r"normalize_activations='layer_norm'.*fold it in SAELens first"),
])
def test_saelens_folders_we_cannot_reproduce_are_refused_by_name(cfg_extra, match, tmp_path: Path):
    cfg = _saelens_cfg("standard") | cfg_extra
    with pytest.raises(ValueError, match=match):
        load_sae(_write_saelens(tmp_path, cfg, _saelens_tensors("standard")))


def test_a_saelens_folder_whose_weights_disagree_with_its_config_names_the_tensor(tmp_path: Path):
    t = _saelens_tensors("topk")
    t["W_dec"] = t["W_dec"][:, :-1]
    with pytest.raises(ValueError, match=r"tensor W_dec has shape \(48, 15\).*\(48, 16\)"):
        load_sae(_write_saelens(tmp_path, _saelens_cfg("topk"), t))
