"""Saving and loading SAEs in SAELens's layout, with provenance and atomic writes."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import pytest
import torch
from conftest import D_IN, D_SAE, K, make_sae
from safetensors.torch import load_file

import isae.core.io
from isae.core.io import load_sae, save_sae
from isae.core.models import ARCHITECTURES, SAE

FILES = {"cfg.json", "sae_weights.safetensors", "provenance.json"}


def _trained_looking(architecture: str) -> SAE:
    """An SAE whose every parameter differs from a fresh init, so a round trip cannot pass by re-initialising."""
    sae = make_sae(architecture, seed=3, n_steps=3)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in sae.parameters():
            if p.requires_grad:  # a frozen parameter (b_enc without encoder bias) stays as training leaves it
                p.add_(0.1 * torch.randn(p.shape, generator=g))
        sae.normalize_atoms()
    return sae


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_save_load_round_trip_preserves_parameters_config_and_codes(architecture, tmp_path: Path, x_unit):
    sae = _trained_looking(architecture)
    save_sae(sae, tmp_path / "sae")
    loaded = load_sae(tmp_path / "sae")
    assert loaded.cfg == sae.cfg
    assert loaded.state_dict().keys() == sae.state_dict().keys()
    for name, t in sae.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], t), name
    with torch.no_grad():
        assert torch.equal(loaded.encode(x_unit), sae.encode(x_unit))
        assert torch.equal(loaded(x_unit).x_hat, sae(x_unit).x_hat)
    assert [p.requires_grad for p in loaded.parameters()] == [p.requires_grad for p in sae.parameters()]


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_saved_files_follow_the_saelens_layout(architecture, tmp_path: Path):
    sae = _trained_looking(architecture)
    save_sae(sae, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == FILES

    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["d_in"] == D_IN and cfg["d_sae"] == D_SAE and cfg["k"] == K
    saelens_names = {"topk": "topk", "abstopk": "abstopk", "isae": "abstopk", "isae_me": "isae_me",
                     "relu": "standard", "jumprelu": "jumprelu"}  # iSAE is AbsTopK at inference
    assert cfg["architecture"] == saelens_names[architecture]
    assert cfg["apply_b_dec_to_input"] is True
    assert cfg["isae_config"]["architecture"] == architecture

    tensors = load_file(str(tmp_path / "sae_weights.safetensors"))
    expected = {"W_enc", "W_dec", "b_enc", "b_dec"} | ({"S"} if architecture == "isae_me" else set()) | (
        {"threshold"} if architecture == "jumprelu" else set())
    assert set(tensors) == expected
    assert tensors["W_enc"].shape == (D_IN, D_SAE) and torch.equal(tensors["W_enc"], sae.W_enc.detach().T)
    assert tensors["W_dec"].shape == (D_SAE, D_IN) and torch.equal(tensors["W_dec"], sae.W_dec.detach())
    assert tensors["b_enc"].shape == (D_SAE,) and tensors["b_dec"].shape == (D_IN,)
    assert all(t.dtype == torch.float32 for t in tensors.values())
    if architecture == "isae_me":
        assert tensors["S"].shape == (D_SAE, D_SAE) and torch.equal(tensors["S"], sae.S.detach())
    if architecture == "jumprelu":
        assert torch.equal(tensors["threshold"], torch.full((D_SAE,), sae.cfg.jump_threshold))


def test_saelens_layout_reproduces_the_forward_pass_for_topk(tmp_path: Path, x_unit):
    # x̂ = TopK-ReLU((x − b_dec) W_enc + b_enc) W_dec + b_dec with SAELens's [d_in, d_sae] encoder
    sae = _trained_looking("topk")
    save_sae(sae, tmp_path)
    t = load_file(str(tmp_path / "sae_weights.safetensors"))
    pre = (x_unit - t["b_dec"]) @ t["W_enc"] + t["b_enc"]
    top = pre.topk(K, dim=1)
    z = torch.zeros_like(pre).scatter(1, top.indices, top.values.relu())
    with torch.no_grad():
        torch.testing.assert_close(z @ t["W_dec"] + t["b_dec"], sae(x_unit).x_hat)


def test_provenance_json_records_the_given_params(tmp_path: Path):
    save_sae(make_sae("isae"), tmp_path, experiment="unit-test", seed=7)
    prov = json.loads((tmp_path / "provenance.json").read_text())
    assert prov["params"] == {"experiment": "unit-test", "seed": 7, "device": "cpu"}
    assert {"git_commit", "packages", "python", "time_utc"} <= set(prov)
    assert prov["packages"]["torch"] == importlib.metadata.version("torch")


def test_load_of_a_missing_folder_raises_file_not_found_with_a_clear_message(tmp_path: Path):
    missing = tmp_path / "no_such_sae"
    with pytest.raises(FileNotFoundError, match=r"cfg\.json is missing.*save_sae"):
        load_sae(missing)


def test_load_of_a_folder_without_weights_names_the_missing_file(tmp_path: Path):
    save_sae(make_sae("topk"), tmp_path)
    (tmp_path / "sae_weights.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"sae_weights\.safetensors is missing"):
        load_sae(tmp_path)


def test_successful_save_leaves_no_temporary_files(tmp_path: Path):
    save_sae(make_sae("topk"), tmp_path)
    save_sae(make_sae("abstopk"), tmp_path)  # overwriting in place
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FILES)
    assert load_sae(tmp_path).cfg.architecture == "abstopk"


def test_failed_save_leaves_no_temporary_files_and_keeps_the_previous_weights(tmp_path: Path, monkeypatch, x_unit):
    old = _trained_looking("abstopk")
    save_sae(old, tmp_path)
    weights_before = (tmp_path / "sae_weights.safetensors").read_bytes()

    def crash_midway(tensors, path):
        Path(path).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(isae.core.io, "save_file", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        save_sae(make_sae("abstopk", seed=11), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FILES)
    assert (tmp_path / "sae_weights.safetensors").read_bytes() == weights_before
    with torch.no_grad():
        assert torch.equal(load_sae(tmp_path).encode(x_unit), old.encode(x_unit))


def test_atomic_writes_give_files_the_usual_permissions(tmp_path):
    import os

    from isae.core.provenance import atomic_write_text

    path = atomic_write_text(tmp_path / "out.txt", "hello")
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
