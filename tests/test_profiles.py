"""Profile parameters are checked where they enter (isae.experiments.profiles), before any compute: every bad
override raises ValueError naming the parameter."""

from __future__ import annotations

import pytest

from isae.experiments import profiles as P

BUILDERS = {"synthetic": P.synthetic_profile, "real": P.real_profile, "toy": P.toy_profile,
            "weighted": P.weighted_profile}


@pytest.mark.parametrize("what", sorted(BUILDERS))
@pytest.mark.parametrize("profile", P.PROFILES)
def test_every_shipped_profile_is_valid_and_overridable(what, profile):
    sizes = BUILDERS[what](profile)
    assert sizes == BUILDERS[what](profile, **{k: None for k in sizes.to_dict()})  # None: keep the profile's
    assert BUILDERS[what](profile, batch_size=64).batch_size == 64


BAD = [
    ("synthetic", "n_seeds", 1), ("synthetic", "n_seeds", 0), ("synthetic", "n_steps", 0), ("synthetic", "n_steps", -5),
    ("synthetic", "n_steps", 2.5), ("synthetic", "batch_size", 0), ("synthetic", "k", 96), ("synthetic", "k", 0),
    ("synthetic", "d_sae", 2), ("synthetic", "models", ["topk", "vanilla"]), ("synthetic", "models", []),
    ("synthetic", "models", ["topk", "topk"]), ("synthetic", "settings", ["iid", "gaussian"]),
    ("synthetic", "lr", -1e-3), ("synthetic", "n_eval", True), ("synthetic", "spread", 0.0),
    ("real", "lm_hook", "blocks.99.hook_resid_post"), ("real", "lm_hook", "blocks.30.hook_resid_post"),
    ("real", "lm_hook", "layer.3"), ("real", "lm_hook", "blocks.2.resid"), ("real", "vision_layer", "blocks.16"),
    ("real", "n_seeds", 1), ("real", "k", 256), ("real", "d_sae", 4), ("real", "models", ["sae"]),
    ("real", "dtype", "float64"), ("real", "lm_train_tokens", 0), ("real", "image_size", 8),
    ("toy", "n_steps", 0), ("toy", "activations", ["relu", "gelu"]), ("toy", "sparsities", [0.5, 1.0]),
    ("toy", "ablation_sparsity", -0.1), ("toy", "hidden_sizes", [0.0]), ("toy", "weight_w_p", "uniform"),
    ("toy", "lr", 0.0), ("toy", "batch_size", 0),
    ("weighted", "n_seeds", 1), ("weighted", "lm_layers", [2, 30]), ("weighted", "lm_layers", []),
    ("weighted", "lm_layers", [1, 1]), ("weighted", "lm_k", 256), ("weighted", "vision_k", 0),
    ("weighted", "alphas", [0.5, 1.0]), ("weighted", "control_k_fractions", [1.5]), ("weighted", "batch_size", 0),
]


@pytest.mark.parametrize("what, name, value", BAD, ids=[f"{w}-{n}={v!r}" for w, n, v in BAD])
def test_bad_values_are_refused_naming_the_parameter(what, name, value):
    with pytest.raises(ValueError, match=rf"\b{name}="):
        BUILDERS[what]("smoke", **{name: value})


def test_messages_say_the_fix():
    with pytest.raises(ValueError, match=r"n_seeds=1.*at least 2.*pass n_seeds=2"):
        P.synthetic_profile("smoke", n_seeds=1)
    with pytest.raises(ValueError, match=r"lm_hook='blocks.99.hook_resid_post'.*30 blocks, 0\.\.29"):
        P.real_profile("default", lm_hook="blocks.99.hook_resid_post")
    with pytest.raises(ValueError, match=r"k=96: must be smaller than d_sae=96"):
        P.synthetic_profile("smoke", k=96)
    with pytest.raises(ValueError, match=r"unknown \['vanilla'\]; use values from \('topk'"):
        P.synthetic_profile("smoke", models=["topk", "vanilla"])
    with pytest.raises(ValueError, match="profile='laptop'.*smoke"):
        P.toy_profile("laptop")


def test_hook_layers():
    assert P.lm_hook_layer("blocks.0.hook_resid_post") == 0 and P.lm_hook_layer("blocks.29.hook_mlp_out") == 29
    assert P.real_profile("smoke", lm_hook="blocks.29.hook_resid_pre").lm_hook == "blocks.29.hook_resid_pre"


def test_vision_layers_agree_with_the_model():
    from isae.data.vision import EfficientNetLite0

    net = EfficientNetLite0()
    assert set(net.layer_names()) | {f"stage{i}" for i in range(1, len(net.stage_ends) + 1)} == set(P.VISION_LAYERS)


@pytest.mark.assets
def test_default_lm_layer_count_matches_the_asset_config():
    """DEFAULT_LM_LAYERS against the SmolLM2 asset's own config (skips when the asset is not fetched)."""
    import json

    from isae.data.assets import assets_root

    configs = sorted((assets_root() / "smollm2-hf").glob("**/config.json"))
    if not configs:
        pytest.skip("SmolLM2 safetensors copy not built (make assets)")
    assert json.loads(configs[0].read_text())["num_hidden_layers"] == P.DEFAULT_LM_LAYERS


def test_device_without_cuda_is_refused_before_any_compute(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    from isae.experiments.setup import notebook_setup

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"device='cuda'.*device='cpu'"):
        notebook_setup("01_synthetic_identifiability", "smoke", P.synthetic_profile("smoke"), device="cuda",
                       output_root=tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused before the output folders are made


@pytest.mark.parametrize("name", ["synthetic_profile", "real_profile", "toy_profile", "weighted_profile",
                                  "p3_profile"])
def test_a_new_profile_field_without_a_check_is_refused(name):
    from dataclasses import dataclass

    from isae.experiments import profiles

    base = getattr(profiles, name)("smoke")

    @dataclass(frozen=True)
    class Extended(type(base)):
        new_knob: int = 3

    with pytest.raises(TypeError, match=r"\['new_knob'\] are not checked"):
        Extended(**base.to_dict())
    assert "_checked" not in vars(base)  # the record of checked fields does not stay on the profile
