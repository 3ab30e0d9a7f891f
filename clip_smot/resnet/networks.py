"""The ResNet-track networks (ResNet-18, WRN-40-2, DenseNet-BC) and the model file format.

Every network exposes the seams that CAM and the post-hoc scores need, without hooks:

* ``forward_features(x) -> [B, C, h, w]``: the last convolutional feature map (after its
  final activation), what a CAM is made of;
* ``forward_penultimate(x) -> [B, C]``: that map average-pooled, the features KNN, ViM and
  ReAct use;
* ``forward_head(feats) -> [B, K]``: pooling and the final linear layer;
* ``get_classifier() -> nn.Linear``.

``NETWORKS`` maps an architecture name to a builder ``(num_classes, input_size) -> nn.Module``;
:func:`build_network` is the one entry point. ``resnet_tiny`` is registered exactly like the
real networks (one basic block per stage, narrow) for tests and the offline digits runs.

Model file (``OUT/model.safetensors``, format version 1): the ``state_dict`` tensors and the
string metadata ``format`` ("clip-smot-model"), ``format_version`` ("1"), ``arch``,
``num_classes``, ``classnames`` (JSON list), ``input_size``, ``mean`` and ``std`` (JSON lists:
the normalisation applied to images in [0, 1]), ``dataset``, ``method``, ``stage``, ``config``
(the training configuration as JSON), ``library_version`` and ``sha256`` (a JSON object of a
SHA-256 per tensor over its bytes and the other metadata, checked at load: safetensors keeps no
checksum; a file without it, of an older clip-smot or converted by hand, is read unchecked).
"""

from __future__ import annotations

import collections
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from clip_smot import __version__
from clip_smot.common.errors import UserError, first_line
from clip_smot.common.file_kinds import check_kind, unsupported_version
from clip_smot.common.files import (
    atomic_save_safetensors,
    checksum_mismatch,
    is_file,
    missing_file,
    parse_json,
    safetensors_error,
    tensor_checksums,
)

__all__ = [
    "MODEL_FORMAT",
    "MAX_INPUT_SIZE",
    "MODEL_FORMAT_VERSION",
    "NETWORKS",
    "DenseNetBC",
    "ResNet",
    "WideResNet",
    "build_network",
    "check_finite_weights",
    "first_shape_difference",
    "load_model",
    "save_model",
]


class _Head(nn.Module):
    """Shared seams: pooled penultimate features, the linear head, the classifier."""

    fc: nn.Linear

    def _init_head(self, features: int, num_classes: int) -> None:
        """The linear head (``num_features``, ``fc``), then He init of every convolution: called
        last by each architecture, so the seeded weights come out in the same order."""
        self.num_features = features
        self.fc = nn.Linear(features, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    def forward_penultimate(self, x: torch.Tensor) -> torch.Tensor:
        """Average-pooled last feature map, [B, C]."""
        return self.forward_features(x).mean(dim=(2, 3))

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        """Logits [B, K] from the feature map [B, C, h, w] (or already pooled features [B, C])."""
        if feats.ndim == 4:
            feats = feats.mean(dim=(2, 3))  # [B, C]
        return self.fc(feats)

    def get_classifier(self) -> nn.Linear:
        """The final linear layer (CAM weights, ReAct/ViM/GradNorm)."""
        return self.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# ---------------------------------------------------------------------------------------------
# ResNet (He et al., 2016) with a CIFAR stem (3x3 conv, stride 1, no max-pool) or the ImageNet stem.


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (post-activation)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(_Head):
    """A basic-block ResNet.

    Args:
        blocks: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
        widths: channels per stage, e.g. (64, 128, 256, 512).
        num_classes: K.
        stem: "cifar" (3x3 conv stride 1, no max-pool; for 32x32) or "imagenet" (7x7 conv
            stride 2 and a 3x3 max-pool; for 224x224, torchvision's layout).
    """

    def __init__(self, blocks: Sequence[int], widths: Sequence[int], num_classes: int, stem: str = "cifar") -> None:
        super().__init__()
        if stem == "cifar":
            self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        elif stem == "imagenet":
            self.conv1 = nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        else:
            raise ValueError(f"stem must be 'cifar' or 'imagenet', got {stem!r}")
        self.bn1 = nn.BatchNorm2d(widths[0])
        layers = []
        c_in = widths[0]
        for i, (n, c) in enumerate(zip(blocks, widths)):
            stride = 1 if i == 0 else 2
            stage = []
            for j in range(n):
                stage.append(BasicBlock(c_in, c, stride if j == 0 else 1))
                c_in = c
            layers.append(nn.Sequential(*stage))
        self.layers = nn.Sequential(*layers)
        self._init_head(c_in, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        return self.layers(x)  # [B, C, h, w]


# ---------------------------------------------------------------------------------------------
# Wide ResNet (Zagoruyko & Komodakis, 2016): pre-activation blocks, depth 6n + 4.


class WideBlock(nn.Module):
    """Pre-activation wide basic block."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Conv2d(c_in, c_out, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn1(x))
        y = self.conv1(o)
        y = self.conv2(F.relu(self.bn2(y)))
        return y + (x if self.shortcut is None else self.shortcut(o))


class WideResNet(_Head):
    """WRN-depth-widen for 32x32 inputs (WRN-40-2: depth 40, widen 2, 128 features)."""

    def __init__(self, depth: int, widen: int, num_classes: int) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n + 4, got {depth}")
        n = (depth - 4) // 6
        widths = (16, 16 * widen, 32 * widen, 64 * widen)
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        groups = []
        c_in = widths[0]
        for i, c in enumerate(widths[1:]):
            groups.append(nn.Sequential(*[WideBlock(c_in if j == 0 else c, c, (1 if i == 0 else 2) if j == 0 else 1)
                                          for j in range(n)]))
            c_in = c
        self.groups = nn.Sequential(*groups)
        self.bn = nn.BatchNorm2d(c_in)
        self._init_head(c_in, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.groups(self.conv1(x))))  # [B, 64 * widen, 8, 8]


# ---------------------------------------------------------------------------------------------
# DenseNet-BC (Huang et al., 2017): bottleneck layers, compression 0.5, depth 6n + 4 for 3 blocks.


class DenseLayer(nn.Module):
    """BN-ReLU-1x1 conv (4k) - BN-ReLU-3x3 conv (k), concatenated to the input."""

    def __init__(self, c_in: int, growth: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, 4 * growth, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(F.relu(self.bn2(self.conv1(F.relu(self.bn1(x))))))
        return torch.cat([x, y], dim=1)  # [B, c_in + k, h, w]


class Transition(nn.Module):
    """BN-ReLU-1x1 conv (compression) and 2x2 average pooling."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(c_in)
        self.conv = nn.Conv2d(c_in, c_out, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


class DenseNetBC(_Head):
    """DenseNet-BC for 32x32 inputs (L = 100, k = 12: 16 layers per block, 342 features)."""

    def __init__(self, depth: int, growth: int, num_classes: int, compression: float = 0.5) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"DenseNet-BC depth must be 6n + 4, got {depth}")
        n = (depth - 4) // 6
        c = 2 * growth
        self.conv1 = nn.Conv2d(3, c, 3, 1, 1, bias=False)
        stages: list[nn.Module] = []
        for i in range(3):
            for _ in range(n):
                stages.append(DenseLayer(c, growth))
                c += growth
            if i < 2:
                c_out = int(c * compression)
                stages.append(Transition(c, c_out))
                c = c_out
        self.blocks = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(c)
        self._init_head(c, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.blocks(self.conv1(x))))  # [B, C, 8, 8]


# ---------------------------------------------------------------------------------------------


MAX_INPUT_SIZE = 1024  # the largest square input side (--input-size, a model file's input_size): 4.7x ImageNet's


def _stem(input_size: int) -> str:
    # 32x32 (CIFAR, digits) keeps the full resolution; 224 follows torchvision's ImageNet stem.
    return "cifar" if input_size <= 64 else "imagenet"


NETWORKS: dict[str, Callable[[int, int], nn.Module]] = {
    "resnet18": lambda k, size: ResNet((2, 2, 2, 2), (64, 128, 256, 512), k, stem=_stem(size)),
    "wrn40_2": lambda k, size: WideResNet(40, 2, k),
    "densenet_bc": lambda k, size: DenseNetBC(100, 12, k),
    # A ResNet with one basic block per stage, 16..128 channels: tests and the offline digits runs.
    "resnet_tiny": lambda k, size: ResNet((1, 1, 1, 1), (16, 32, 64, 128), k, stem=_stem(size)),
}


def build_network(arch: str, num_classes: int, input_size: int = 32) -> nn.Module:
    """Build an untrained network by name (a key of :data:`NETWORKS`).

    Args:
        arch: architecture name.
        num_classes: K, the number of logits.
        input_size: the square input size it is trained at (32 -> CIFAR stem, 224 -> ImageNet
            stem for the ResNets; WRN and DenseNet-BC are CIFAR networks at any size).
    """
    if arch not in NETWORKS:
        raise UserError(f"--arch {arch}: unknown architecture (choose from {', '.join(NETWORKS)})")
    if num_classes < 2:
        raise UserError(f"need at least 2 classes, got {num_classes}")
    return NETWORKS[arch](int(num_classes), int(input_size))


# ---------------------------------------------------------------------------------------------
# The model file.

MODEL_FORMAT = "clip-smot-model"
MODEL_FORMAT_VERSION = "1"
MIN_STD = 1e-3  # of a model file's std: the floor train's own statistics have (resnet.data._mean_std)
_REQUIRED_META = ("format_version", "arch", "num_classes", "classnames", "input_size", "mean", "std")


def save_model(
    path: str | os.PathLike,
    model: nn.Module,
    *,
    arch: str,
    classnames: Sequence[str],
    input_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    dataset: str = "",
    method: str = "",
    stage: str = "",
    config: dict | None = None,
) -> None:
    """Write ``model``'s weights and metadata to one ``.safetensors`` file, atomically.

    ``model`` may be wrapped (DistributedDataParallel, torch.compile): its inner module's
    state_dict is stored, with plain parameter names.
    """
    inner = getattr(model, "module", model)
    inner = getattr(inner, "_orig_mod", inner)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in inner.state_dict().items()}
    meta = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "library_version": __version__,
        "arch": arch,
        "num_classes": str(len(classnames)),
        "classnames": json.dumps(list(classnames)),
        "input_size": str(int(input_size)),
        "mean": json.dumps([float(m) for m in mean]),
        "std": json.dumps([float(s) for s in std]),
        "dataset": dataset,
        "method": method,
        "stage": stage,
        "config": json.dumps(config or {}, sort_keys=True),
    }
    atomic_save_safetensors(tensors, path, {**meta, "sha256": json.dumps(tensor_checksums(tensors, meta), sort_keys=True)})


def load_model(path: str | os.PathLike, device: torch.device | str = "cpu",
               flag: str = "--checkpoint") -> tuple[nn.Module, dict]:
    """Load a model file written by :func:`save_model`.

    Args:
        path: the ``.safetensors`` file.
        device: where the network is put.
        flag: the command-line flag named in error messages.

    Returns:
        ``(model, meta)``: the network in eval mode, and the metadata with parsed values:
        ``arch`` (str), ``num_classes`` / ``input_size`` (int), ``classnames`` (list[str]),
        ``mean`` / ``std`` (list[float]), ``dataset``, ``method``, ``stage`` (str),
        ``config`` (dict), ``path`` (str).

    Raises:
        UserError: the file is missing, not safetensors, not a clip-smot model, or its weights
            do not fit its architecture.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    path = Path(path)
    if not is_file(path, flag):
        raise UserError(f"{flag} {path}: {missing_file(path, flag)}")
    check_kind(path, flag, "base-model" if flag == "--cam-model" else "model")  # (a run's checkpoint.pt, a prompt)
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = dict(f.metadata() or {})
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # from the header: nothing loaded
            dtypes = {k: f.get_slice(k).get_dtype() for k in f.keys()}  # ("F32", "BF16", "C64", "I64", ...)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise safetensors_error(f"{flag} {path}", e) from None
    if raw.get("format") != MODEL_FORMAT:
        raise UserError(f"{flag} {path}: not a clip-smot model file (format is {raw.get('format')!r}, "
                        f"expected {MODEL_FORMAT!r}; train one with 'clip-smot train')")
    missing = [k for k in _REQUIRED_META if k not in raw]
    if missing:
        raise UserError(f"{flag} {path}: model file lacks metadata {', '.join(missing)}")
    if raw["format_version"] != MODEL_FORMAT_VERSION:
        raise UserError(f"{flag} {path}: " + unsupported_version("model", raw["format_version"], MODEL_FORMAT_VERSION,
                                                                raw.get("library_version")))
    try:
        meta = {
            "arch": raw["arch"],
            "num_classes": _meta_count(raw["num_classes"], "num_classes"),
            "classnames": _json_list(raw["classnames"], "classnames"),  # (list() of a string: its letters)
            "input_size": _meta_count(raw["input_size"], "input_size"),
            "mean": _json_numbers(raw["mean"], "mean"),
            "std": _json_numbers(raw["std"], "std"),
            "dataset": raw.get("dataset", ""),
            "method": raw.get("method", ""),
            "stage": raw.get("stage", ""),
            "config": parse_json(raw.get("config") or "{}"),
            "path": str(path),
        }
    except (ValueError, TypeError, OverflowError) as e:  # (OverflowError: a JSON integer past any float)
        raise UserError(f"{flag} {path}: malformed metadata ({e})") from None
    _check_meta(meta, f"{flag} {path}")
    with torch.device("meta"):  # the architecture's shapes, without allocating its weights
        reference = build_network(meta["arch"], meta["num_classes"], meta["input_size"]).state_dict()
    expected = {k: tuple(v.shape) for k, v in reference.items()}
    if shapes != expected:
        raise UserError(f"{flag} {path}: weights do not fit a {meta['arch']} of {meta['num_classes']} classes "
                        f"({first_shape_difference(shapes, expected)})")
    # a class named twice (once the head is seen to hold the names): fit's --cam-model looks its data's
    # classes up by name, and took the last logit of the name; a trained model's classes are its folders'
    twice = next((c for c, n in collections.Counter(meta["classnames"]).items() if n > 1), None)
    if twice is not None:
        raise UserError(f"{flag} {path}: inconsistent metadata (class {twice[:60]!r} is named twice in classnames)")
    # a weight of complex numbers was copied in with a warning and its imaginary parts dropped (and so
    # was a BatchNorm's count, num_batches_tracked, an integer: any real one is cast, as torch does)
    other = next((k for k, v in reference.items() if (not dtypes[k].startswith(("F", "BF")) if v.is_floating_point()
                                                      else dtypes[k].startswith("C"))), None)
    if other is not None:
        kind = "real floating-point numbers" if reference[other].is_floating_point() else "real numbers"
        raise UserError(f"{flag} {path}: weights do not fit a {meta['arch']} ({other} is stored as {dtypes[other]}, "
                        f"not as {kind})")
    try:  # (as large as the file's own tensors now)
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise safetensors_error(f"{flag} {path}", e) from None
    model = build_network(meta["arch"], meta["num_classes"], meta["input_size"])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:  # (a dtype torch cannot copy from, e.g. a bool tensor)
        raise UserError(f"{flag} {path}: weights do not fit a {meta['arch']} ({first_line(e)})") from None
    check_finite_weights(model, f"{flag} {path}")
    _check_finite_logits(model.eval(), meta, f"{flag} {path}")
    mismatch = checksum_mismatch(state, raw)  # (last: an edited file is named for what is wrong in it, where something is)
    if mismatch:
        raise UserError(f"{flag} {path}: {mismatch} not match its sha256 (changed after it was written: a damaged "
                        "copy?); train it again, or remove the key sha256 from a file edited on purpose")
    return model.to(device), meta


def _check_finite_logits(model: nn.Module, meta: dict, where: str) -> None:
    """Raise a UserError naming ``where`` when ``model`` gives a non-finite logit for a grey, a
    black, a white or a checkered image: finite weights near float32's largest value overflow, and
    give inf logits and NaN CAMs (which mask nothing, or the whole image, without a word). A grey
    image alone is near 0 once normalised: a first convolution's weight of -3.4e38 overflowed only
    on the training images. The network is fully convolutional, so the images are at most 64
    pixels whatever its input size: one cheap forward."""
    size = min(meta["input_size"], 64)
    mean, std = torch.tensor(meta["mean"]).view(1, 3, 1, 1), torch.tensor(meta["std"]).view(1, 3, 1, 1)
    checkered = (torch.arange(size).view(-1, 1) + torch.arange(size)) % 2  # [S, S] of 0 and 1
    images = torch.stack([torch.full((3, size, size), v) for v in (0.5, 0.0, 1.0)] +
                         [checkered.expand(3, size, size).float()])  # [4, 3, S, S] in [0, 1]
    with torch.no_grad():
        logits = model((images - mean) / std)  # [4, K]
    if not bool(torch.isfinite(logits).all()):
        raise UserError(f"{where}: its logits for a grey, black, white or checkered image are not finite (weights "
                        "too large for float32)")


def _json_list(text: str, key: str) -> list:
    value = parse_json(text)
    if not isinstance(value, list):
        raise ValueError(f"{key} is not a JSON list")
    return value


def _meta_count(text: str, key: str) -> int:
    """A count as :func:`save_model` writes it: ASCII digits only. (``int()`` alone also took
    " 10", "1_0", "+10" and other scripts' digits, such as "١٠".)"""
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"{key} {text!r} is not a whole number in ASCII digits")
    return int(text)


def _json_numbers(text: str, key: str) -> list[float]:
    """A JSON list of numbers. (``float()`` of each item alone also took true as 1.0 and "0.5",
    a string, as 0.5.)"""
    values = _json_list(text, key)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ValueError(f"{key} is not a JSON list of numbers")
    return [float(v) for v in values]


def check_finite_weights(model: nn.Module, where: str) -> None:
    """Raise a UserError naming ``where`` and the first floating-point tensor of ``model``'s state
    that holds a NaN or an infinity, or the first BatchNorm ``running_var`` that holds a negative
    variance (its square root is NaN in eval mode).

    Such weights give NaN logits, and NaN CAMs, which :func:`~clip_smot.cam.normalize_cam` turns
    to zeros: a SMOT run would mask nothing, without a word."""
    for name, v in model.state_dict().items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise UserError(f"{where}: {name} holds non-finite numbers")
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_var is not None \
                and bool((m.running_var < 0).any()):
            raise UserError(f"{where}: {name}.running_var holds negative variances")


def _check_meta(meta: dict, where: str) -> None:
    """A model file's parsed metadata: known architecture, 2 or more named classes, an input
    size in [8, MAX_INPUT_SIZE], three means in [0, 1] and three stds of at least MIN_STD, a config
    object (whose data set evaluation reads)."""
    import math

    if meta["arch"] not in NETWORKS:
        raise UserError(f"{where}: unknown architecture {meta['arch']!r} (known: {', '.join(NETWORKS)})")
    if not 8 <= meta["input_size"] <= MAX_INPUT_SIZE:
        raise UserError(f"{where}: input_size {meta['input_size']} in its metadata is outside [8, {MAX_INPUT_SIZE}]")
    if (len(meta["classnames"]) != meta["num_classes"] or meta["num_classes"] < 2
            or not all(isinstance(c, str) for c in meta["classnames"])):
        raise UserError(f"{where}: inconsistent metadata (num_classes {meta['num_classes']}, classnames: "
                        f"{len(meta['classnames'])} entries; 2 or more names expected)")
    # the normalisation of images in [0, 1]: a mean past them (1e38) or a std that float32 rounds to
    # zero (1e-300) gave infinite inputs, NaN logits and all-zero CAMs (a SMOT run masked nothing)
    if (len(meta["mean"]) != 3 or len(meta["std"]) != 3 or not all(map(math.isfinite, meta["mean"] + meta["std"]))
            or not all(0 <= m <= 1 for m in meta["mean"]) or min(meta["std"]) < MIN_STD):
        raise UserError(f"{where}: inconsistent metadata (mean and std: three finite numbers each, of images in "
                        f"[0, 1]: each mean in [0, 1], each std at least {MIN_STD})")
    # a std past any of such images' (at most 0.5) divided a channel by float32's inf (1e300), or near it:
    # the channel was zero in every image, without a word
    if max(meta["std"]) > 1:
        raise UserError(f"{where}: inconsistent metadata (std {max(meta['std']):g}: images in [0, 1] have a std of at "
                        "most 0.5; each std at most 1)")
    config = meta["config"]
    if not isinstance(config, dict) or not all(isinstance(config.get(k), (str, type(None)))
                                               for k in ("dataset", "data")):
        raise UserError(f"{where}: inconsistent metadata (config: a JSON object whose dataset and data are strings)")


def first_shape_difference(found: dict[str, tuple], expected: dict[str, tuple]) -> str:
    """What first tells two {name: shape} dicts apart, in words."""
    for k in expected:
        if k not in found:
            return f"no {k}"
        if found[k] != expected[k]:
            return f"{k} has shape {list(found[k])}, not {list(expected[k])}"
    return f"unexpected {next(k for k in found if k not in expected)}"
