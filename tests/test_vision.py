"""Vision models and labelled images (isae.data.vision).

Tests that need the EfficientNet-Lite0 weights or the scikit-image photos look for them through
``isae.data.assets`` (when that module and the asset exist), else the environment variables
ISAE_EFFNET_WEIGHTS (the .pth file) / ISAE_PHOTOS_DIR (a folder with coffee.png, chelsea.png,
rocket.jpg) / ISAE_FASHION_MNIST_DIR, and skip with the reason when absent. Everything else runs
on random weights and synthetic files.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import pytest
import torch
import torchvision

from isae.data import vision
from isae.data.vision import (
    EfficientNetLite0,
    EfficientNetLite0Model,
    fashion_mnist,
    imagenet_classes,
    load_vision_model,
    photo_crops,
)

pytestmark = pytest.mark.assets


def _find(asset: str, env: str, fallback: Path | None = None) -> Path | None:
    try:
        from isae.data.assets import AssetMissing, asset_path
    except ImportError:
        asset_path = None
    if asset_path is not None:
        try:
            return Path(asset_path(asset))
        except (AssetMissing, KeyError):  # not fetched, or not a registered asset; a corrupt one fails
            pass
    if os.environ.get(env) and Path(os.environ[env]).exists():
        return Path(os.environ[env])
    return fallback if fallback is not None and fallback.exists() else None


@pytest.fixture(scope="module")
def effnet_weights() -> Path:
    path = _find("efficientnet-lite0", "ISAE_EFFNET_WEIGHTS")
    if path is None:
        pytest.skip("EfficientNet-Lite0 weights absent: run `make setup` (asset efficientnet-lite0) "
                    "or set ISAE_EFFNET_WEIGHTS to efficientnet-lite0-57934424.pth")
    return path


@pytest.fixture(scope="module")
def photos_dir() -> Path:
    path = _find(vision.PHOTOS_ASSET, "ISAE_PHOTOS_DIR")
    if path is None or not all((path / f).is_file() for f in ("coffee.png", "chelsea.png", "rocket.jpg")):
        pytest.skip(f"scikit-image photos absent: run `make setup` (asset {vision.PHOTOS_ASSET}) or set "
                    "ISAE_PHOTOS_DIR to a folder with skimage/data/*.png and rocket.jpg")
    return path


@pytest.fixture(scope="module")
def random_effnet() -> EfficientNetLite0Model:
    torch.manual_seed(0)
    return EfficientNetLite0Model(EfficientNetLite0(), size=112)


# -- architecture ------------------------------------------------------------------------------------

def test_architecture_matches_packaged_checkpoint_layout():
    net = EfficientNetLite0()
    sd = net.state_dict()
    assert sum(p.numel() for p in net.parameters()) == 4_652_008
    assert len(sd) == 296 and len(net._blocks) == 16
    assert sd["_blocks.15._depthwise_conv.weight"].shape == (1152, 1, 3, 3)
    assert sd["_blocks.3._depthwise_conv.weight"].shape == (144, 1, 5, 5)
    assert "_blocks.0._expand_conv.weight" not in sd and sd["_fc.weight"].shape == (1000, 1280)
    assert all(m.eps == 1e-3 for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))


@pytest.mark.parametrize("size", [111, 112, 224])
def test_same_padding_is_tensorflow_same(size):
    conv = vision.SameConv2d(2, 3, 3, stride=2, bias=False)
    x = torch.randn(1, 2, size, size)
    total = max((-(-size // 2) - 1) * 2 + 3 - size, 0)  # TF: pad the extra pixel bottom/right
    ref = torch.nn.functional.conv2d(torch.nn.functional.pad(x, [total // 2, total - total // 2] * 2), conv.weight,
                                     stride=2)
    out = conv(x)
    assert out.shape[-1] == -(-size // 2)
    torch.testing.assert_close(out, ref)


def test_layer_table(random_effnet):
    m = random_effnet
    assert m.default_layer == "blocks.15" and m.layers[0] == "stem" and m.layers[-1] == "head"
    assert m.net.resolve("stage5") == "blocks.10" and m.net.resolve("stage7") == "blocks.15"
    dims = {(layer, s): m.feature_shape(layer, s) for layer in ("stage5", "blocks.15", "head") for s in (112, 224)}
    assert dims == {("stage5", 112): (112, 7, 7), ("stage5", 224): (112, 14, 14),
                    ("blocks.15", 112): (320, 4, 4), ("blocks.15", 224): (320, 7, 7),
                    ("head", 112): (1280, 4, 4), ("head", 224): (1280, 7, 7)}
    with pytest.raises(KeyError):
        m.feature_shape("blocks.16")


# -- patch tokens ------------------------------------------------------------------------------------

def _hooked(net, module, x, post=lambda t: t):
    got = {}
    handle = module.register_forward_hook(lambda mod, inp, out: got.setdefault("f", post(out).clone()))
    with torch.no_grad():
        net(x)
    handle.remove()
    return got["f"]


def _tokens_by_loop(fmap):
    n, c, h, w = fmap.shape
    return torch.stack([fmap[i, :, r, q] for i in range(n) for r in range(h) for q in range(w)])


@pytest.mark.parametrize("layer, module", [("blocks.15", lambda n: n._blocks[15]),
                                           ("stage5", lambda n: n._blocks[10]),
                                           ("head", lambda n: n._bn1)])
def test_patch_tokens_equal_hooked_feature_map(random_effnet, layer, module):
    m = random_effnet
    x = m.preprocess(torch.randint(0, 256, (3, 3, 150, 130), dtype=torch.uint8))
    post = torch.nn.functional.relu6 if layer == "head" else (lambda t: t)
    fmap = _hooked(m.net, module(m.net), x, post)
    tokens = m.patch_tokens(x, layer)
    c, h, w = m.feature_shape(layer)
    assert tokens.shape == (3 * h * w, c) and fmap.shape == (3, c, h, w)
    torch.testing.assert_close(tokens, _tokens_by_loop(fmap), rtol=1e-5, atol=1e-5)


def test_preprocess_inputs(random_effnet):
    m = random_effnet
    gray = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    x = m.preprocess(gray)
    assert x.shape == (2, 3, 112, 112) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1 and torch.equal(x[:, 0], x[:, 2])
    pil = [torchvision.transforms.v2.functional.to_pil_image(im) for im in gray.expand(-1, 3, -1, -1)]
    torch.testing.assert_close(m.preprocess(pil), x)
    assert m.preprocess(x) is not None and torch.equal(m.preprocess(x), x)  # float batch: used as is
    white = m.preprocess(torch.full((1, 3, 40, 40), 255, dtype=torch.uint8))
    torch.testing.assert_close(white, torch.ones_like(white))


# -- real weights on real photos ---------------------------------------------------------------------

def test_pretrained_predictions_on_photos(effnet_weights, photos_dir):
    from torchvision.io import ImageReadMode, decode_image

    torch.set_num_threads(1)
    model = load_vision_model(weights_path=effnet_weights, size=224)  # load_state_dict(strict=True) inside
    names = imagenet_classes()
    files = ("coffee.png", "chelsea.png", "rocket.jpg")
    photos = [decode_image(str(photos_dir / f), mode=ImageReadMode.RGB) for f in files]
    probs = model.logits(photos).softmax(-1)
    top = [names[i] for i in probs.argmax(-1)]
    assert top[0] == "espresso" and probs[0].max() > 0.8
    assert top[1] in {"tabby", "tiger cat", "Egyptian cat"}
    cats = [names.index(c) for c in ("tabby", "tiger cat", "Egyptian cat")]
    assert probs[1, cats].sum() > 0.8
    assert top[2] in {"missile", "projectile", "space shuttle"}


# -- other backbones through the same contract -------------------------------------------------------

def test_resnet18_adapter_random_weights(tmp_path):
    torch.manual_seed(0)
    model = load_vision_model("resnet18", weights_path="random", size=112)
    images = torch.randint(0, 256, (2, 3, 120, 120), dtype=torch.uint8)
    x = model.preprocess(images)
    assert model.feature_shape("layer4", 224) == (512, 7, 7)
    assert model.feature_shape("layer3") == (256, 7, 7)
    tokens = model.patch_tokens(x)
    assert tokens.shape == (2 * 4 * 4, 512)
    torch.testing.assert_close(tokens, _tokens_by_loop(_hooked(model.net, model.net.layer4, x)))
    assert model.logits(x).shape == (2, 1000)
    # a local state_dict file is loaded strictly
    torch.save(model.net.state_dict(), tmp_path / "resnet18.pth")
    again = load_vision_model("resnet18", weights_path=tmp_path / "resnet18.pth", size=112)
    torch.testing.assert_close(again.patch_tokens(x, "layer2"), model.patch_tokens(x, "layer2"))
    with pytest.raises(ValueError, match="weights_path"):
        load_vision_model("resnet18")


def test_dinov2_adapter_from_local_folder(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                                    intermediate_size=64, patch_size=14, image_size=56)
    transformers.Dinov2Model(cfg).save_pretrained(tmp_path)
    model = load_vision_model("dinov2", weights_path=tmp_path, size=56)
    x = model.preprocess(torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8))
    tokens = model.patch_tokens(x, "blocks.1")
    with torch.no_grad():
        hidden = model.net(x, output_hidden_states=True).hidden_states[2]  # after block 1
    assert tokens.shape == (2 * 16, 32)
    torch.testing.assert_close(tokens, hidden[:, 1:].reshape(-1, 32))  # CLS token dropped


# -- labelled images ---------------------------------------------------------------------------------

def _write_png_dir(root: Path, names=("coffee", "rocket", "zebra")) -> Path:
    gen = torch.Generator().manual_seed(0)
    for i, name in enumerate(names):
        img = torch.randint(0, 256, (3, 90 + 10 * i, 120), generator=gen, dtype=torch.uint8)
        torchvision.io.write_png(img, str(root / f"{name}.png"))
    (root / "notes.txt").write_text("not an image")
    return root


def test_photo_crops_deterministic(tmp_path):
    d = _write_png_dir(tmp_path)
    a = photo_crops(d, n_per_photo=5, out_size=32, seed=7)
    b = photo_crops(d, n_per_photo=5, out_size=32, seed=7)
    c = photo_crops(d, n_per_photo=5, out_size=32, seed=8)
    assert a.classes == ["coffee", "rocket"]  # scikit-image photos present -> only those
    assert a.images.shape == (10, 3, 32, 32) and a.images.dtype == torch.uint8
    assert a.labels.tolist() == [0] * 5 + [1] * 5
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    every = photo_crops(d, n_per_photo=2, out_size=16, names=["zebra", "coffee"])
    assert every.classes == ["coffee", "zebra"] and len(every) == 4
    img, label = every[3]
    assert img.shape == (3, 16, 16) and label == 1
    (tmp_path / "other").mkdir()
    other = _write_png_dir(tmp_path / "other", names=("b_img", "a_img"))
    assert photo_crops(other, n_per_photo=1, out_size=8).classes == ["a_img", "b_img"]  # none known: all files
    with pytest.raises(FileNotFoundError, match="missing_photo"):
        photo_crops(d, names=["missing_photo"])


def test_photo_crops_of_real_photos(photos_dir):
    a = photo_crops(photos_dir, n_per_photo=3, out_size=64, seed=1)
    assert set(a.classes) <= set(vision.SKIMAGE_PHOTOS) and {"coffee", "chelsea", "rocket"} <= set(a.classes)
    assert torch.equal(a.images, photo_crops(photos_dir, n_per_photo=3, out_size=64, seed=1).images)


def _write_idx(path: Path, array: torch.Tensor) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.dim()) + struct.pack(f">{array.dim()}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.numpy().tobytes())


def test_fashion_mnist_from_idx_gz(tmp_path):
    gen = torch.Generator().manual_seed(0)
    src = tmp_path / "src"
    src.mkdir()
    for split, n in (("train", 20), ("t10k", 12)):
        images = torch.randint(0, 256, (n, 28, 28), generator=gen, dtype=torch.uint8)
        _write_idx(src / f"{split}-images-idx3-ubyte.gz", images)
        _write_idx(src / f"{split}-labels-idx1-ubyte.gz", torch.arange(n, dtype=torch.uint8) % 10)
    ds = fashion_mnist(src, train=False, layout_dir=tmp_path / "layout")
    assert ds.images.shape == (12, 3, 28, 28) and ds.images.dtype == torch.uint8
    assert torch.equal(ds.images[:, 0], ds.images[:, 2]) and ds.labels.tolist() == [i % 10 for i in range(12)]
    assert ds.classes[0] == "T-shirt/top" and len(ds.classes) == 10
    sub = fashion_mnist(src, train=True, n=5, seed=3, layout_dir=tmp_path / "layout")
    again = fashion_mnist(src, train=True, n=5, seed=3, layout_dir=tmp_path / "layout")
    assert len(sub) == 5 and torch.equal(sub.images, again.images)


def test_fashion_mnist_real():
    d = _find("fashion-mnist", "ISAE_FASHION_MNIST_DIR", vision.FASHION_MNIST_DEBIAN_DIR)
    if d is None:
        pytest.skip("Fashion-MNIST absent: run `make setup` (asset fashion-mnist), apt install "
                    "dataset-fashion-mnist, or set ISAE_FASHION_MNIST_DIR")
    ds = fashion_mnist(d, train=False)
    assert ds.images.shape == (10_000, 3, 28, 28) and torch.bincount(ds.labels).tolist() == [1000] * 10


def test_imagenet_classes():
    names = imagenet_classes()
    assert len(names) == 1000 and names[504] == "coffee mug" and names[967] == "espresso"
    assert names == list(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def test_fashion_mnist_corrupt_or_missing_asset_raises(tmp_path, monkeypatch):
    """No fallback to another copy: a corrupt asset raises AssetCorrupt, an absent one AssetMissing."""
    from isae.data import assets

    monkeypatch.setenv("ISAE_ASSETS_DIR", str(tmp_path))
    monkeypatch.setattr(assets, "_VERIFIED", {})
    with pytest.raises(assets.AssetMissing, match="fashion-mnist"):
        fashion_mnist(train=False, layout_dir=tmp_path / "layout")
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    for name in assets.ASSETS["fashion-mnist"].files:
        (folder / name).write_bytes(b"not the Fashion-MNIST file")
    with pytest.raises(assets.AssetCorrupt, match="fashion-mnist"):
        fashion_mnist(train=False, layout_dir=tmp_path / "layout")


@pytest.mark.assets
def test_dinov2_path_offline_block_11_patch_tokens_through_the_cache(tmp_path, photos_dir):
    """P1's vision path with no hub: a 12-block DINOv2 with random weights stands in for DINOv2-Base; the cache
    of its block-11 patch tokens (``DINOV2_LAYER``, CLS dropped) holds exactly the model's tokens."""
    transformers = pytest.importorskip("transformers")
    from isae.data.activations import ModelLoader, VisionRequest, open_or_build_all, vision_images
    from isae.data.vision import DINOV2_LAYER

    torch.manual_seed(0)
    cfg = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=12, num_attention_heads=2,
                                    intermediate_size=64, patch_size=14, image_size=56)
    folder = tmp_path / "dinov2-like"
    transformers.Dinov2Model(cfg).save_pretrained(folder)
    req = VisionRequest(model="dinov2", weights=str(folder), layer=DINOV2_LAYER, dataset="photos", n_images=6,
                        image_size=56, images_per_shard=4, batch_images=2)
    models = ModelLoader("cpu")
    cache = open_or_build_all({tmp_path / "cache": req}, models, progress=False)[tmp_path / "cache"]
    assert cache.spec["tokens_per_image"] == 16 and len(cache) == 6 * 16 and cache.d_in == 32
    model = models.vision("dinov2", 56, str(folder))
    images, _, _ = vision_images(req)
    x = model.preprocess(images[:2])
    with torch.no_grad():
        hidden = model.net(x, output_hidden_states=True).hidden_states[12]  # after block 11
    torch.testing.assert_close(torch.from_numpy(cache.rows(0, 32)), hidden[:, 1:].reshape(-1, 32))
    assert torch.equal(torch.from_numpy(cache.extra("image")[:32]), torch.arange(2).repeat_interleave(16).int())
