"""CAM providers: ResNet features x classifier weights -> [B, H, W] in [0, 255] (docs/method.md §1).

Works for torchvision ResNets (ImageNet stem) and the CIFAR-stem networks of
:mod:`clip_smot.resnet.networks`: any module with ``forward_features(x) -> [B, C, h, w]`` and a
final linear layer (``get_classifier()`` or ``fc``), or a torchvision ResNet's named
children. No forward hooks: the feature map is computed directly.

Which class a CAM is computed for: the true label when the provider's classes are the data's
classes (``labels_match=True``, e.g. the ImageNet ResNet-18 on ImageNet-1k, or a base model
trained on the same CIFAR set), otherwise the provider's own top-1 prediction.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["CAMProvider", "classifier_of", "feature_map", "normalize_cam"]


def _tensors(optional: tuple[str, ...] = (), **named) -> None:
    """Refuse what is no tensor where one is read: a numpy array or a list stopped on a missing attribute
    ("'numpy.ndarray' object has no attribute 'float'"), naming no argument. ``optional`` ones may be None."""
    for name, value in named.items():
        if not isinstance(value, torch.Tensor) and not (value is None and name in optional):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
        if isinstance(value, torch.Tensor) and value.is_complex():  # (.float() kept the real part)
            raise TypeError(f"{name} must hold real numbers, got {value.dtype}")


def feature_map(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Last convolutional feature map [B, C, h, w] of a ResNet-like model."""
    if hasattr(model, "forward_features"):
        return model.forward_features(x)
    # torchvision ResNet: the stem and the four stages, without avgpool/fc.
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    return model.layer4(model.layer3(model.layer2(model.layer1(x))))


def classifier_of(model: nn.Module) -> nn.Linear:
    """The final linear layer whose weights turn pooled features into logits."""
    fc = model.get_classifier() if hasattr(model, "get_classifier") else model.fc
    if not isinstance(fc, nn.Linear):
        raise TypeError(f"CAM needs a linear classifier, found {type(fc).__name__}")
    return fc


def normalize_cam(cam: torch.Tensor, min_span: float = 0.0) -> torch.Tensor:
    """Min-max scale each map of [B, H, W] to [0, 255]; a map whose values span no more than
    ``min_span`` (an all-constant map, by default) becomes all zero. Takes [B, 1, H, W] too.
    Returns the maps' floating-point dtype (float32 for integer maps), computed in float32
    (float64 for float64 maps and integers of more than 16 bits)."""
    _tensors(cam=cam)
    if cam.ndim < 3:  # (a single map [H, W] was scaled row by row, each row to 0 .. 255)
        raise ValueError(f"cam must be maps [B, H, W] (a batch), got shape {list(cam.shape)}")
    # (NaN zeroed every map, span > NaN being false; None or a string stopped in the comparison)
    if isinstance(min_span, bool) or not isinstance(min_span, numbers.Real) or math.isnan(min_span):
        raise ValueError(f"min_span must be a number, got {min_span!r}")
    out = cam.dtype if cam.is_floating_point() else torch.float32
    if cam.numel() == 0:  # (maps of no pixel stopped in amin: "Expected reduction dim 1 to have non-zero size")
        return torch.zeros_like(cam, dtype=out)
    wide = cam.dtype == torch.float64 or (not cam.is_floating_point() and cam.dtype.itemsize > 2)
    flat = cam.flatten(1).to(torch.float64 if wide else torch.float32)  # [B, H*W]
    lo = flat.amin(dim=1, keepdim=True)
    hi = flat.amax(dim=1, keepdim=True)
    # halves: the span of a map from -3e38 to 3e38 is past float32 (inf, and the top pixel inf / inf), and
    # int8's 100 - (-100) wrapped below 0; halving is exact, so each quotient is the one of the whole span
    half_span = hi * 0.5 - lo * 0.5
    # (divided by the span itself: a floor of 1e-12 under it scaled a map spanning 1e-14 to 0 .. 2.55)
    divisor = torch.where(half_span > 0, half_span, torch.ones_like(half_span))
    scaled = torch.where(half_span > min_span * 0.5, (flat * 0.5 - lo * 0.5) / divisor * 255.0, torch.zeros_like(flat))
    return scaled.to(out).view_as(cam)


_RESNET_STAGES = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")  # (feature_map's)


class CAMProvider:
    """Class activation maps from a frozen ResNet, batched, under no_grad.

    Args:
        model: the CAM network (put in eval mode here; its parameters are not changed).
        mean, std: the normalisation the network was trained with; inputs are images in
            [0, 1] and are normalised here.
        labels_match: True when the network's class indices are the data's labels, so the
            CAM is computed for the true label; False uses the network's top-1 prediction.
        input_size: if given, images are resized to this square size for the network (the
            CAM is still upsampled to the original image size).
    """

    def __init__(
        self,
        model: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        labels_match: bool = True,
        input_size: int | None = None,
    ) -> None:
        # (a network of neither kind stopped at the first call, "'Net' object has no attribute 'maxpool'")
        if not isinstance(model, nn.Module) or not (
                hasattr(model, "forward_features") or all(hasattr(model, n) for n in _RESNET_STAGES)) or not (
                hasattr(model, "get_classifier") or hasattr(model, "fc")):
            raise TypeError(f"model must be a ResNet-like network, with forward_features or a torchvision ResNet's "
                            f"{', '.join(_RESNET_STAGES)}, and get_classifier or fc; got {type(model).__name__}")
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        # (a mean of 2 values stopped in view(), "shape '[1, 3, 1, 1]' is invalid for input of size 2";
        # an input_size of 0 or True in the interpolation)
        try:
            sizes = [torch.as_tensor(v).numel() for v in (mean, std)]
        except (TypeError, ValueError, RuntimeError):  # (None: "Could not infer dtype of NoneType")
            raise TypeError(f"mean and std must be 3 numbers each (one per channel), got {mean!r} and "
                            f"{std!r}") from None
        if any(n != 3 for n in sizes):
            raise ValueError(f"mean and std must hold 3 values each (one per channel), got {mean!r} and {std!r}")
        if input_size is not None and (isinstance(input_size, bool) or not isinstance(input_size, numbers.Integral)
                                       or input_size < 1):
            raise ValueError(f"input_size must be None or an integer >= 1, got {input_size!r}")
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        # (a std of 0 or NaN made every CAM all zero, so SMOT masked nothing; a negative one fed the
        # network -x and gave other maps)
        if not bool((torch.isfinite(self.mean).all() & (self.std > 0).all() & torch.isfinite(self.std).all())):
            raise ValueError(f"mean must be finite and std finite and > 0, got mean {self.mean.flatten().tolist()} "
                             f"and std {self.std.flatten().tolist()}")
        self.labels_match = labels_match
        self.input_size = input_size

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """CAMs of images ``x`` [B, 3, H, W] in [0, 1] -> [B, H, W] float in [0, 255].

        ``y`` (true labels) is used when ``labels_match`` is set; otherwise, or when ``y`` is
        None, the CAM is for the network's top-1 class.
        """
        _tensors(("y",), x=x, y=y)
        if not x.is_floating_point():  # (uint8 images, as torchvision.io reads them, are 0 .. 255)
            raise TypeError(f"CAMProvider takes float images in [0, 1], got {x.dtype}")
        # (channels-last images stopped in the normalisation, "size of tensor a (16) must match ... (3)"; one image
        # [3, H, W] with y [1] on "y must hold one label per image, [3]")
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"x must be images [B, 3, H, W], got shape {list(x.shape)}")
        H, W = x.shape[-2:]
        dev = x.device
        if self.mean.device != dev:  # moved once: a copy at every call would make each step wait for it
            self.mean, self.std = self.mean.to(dev), self.std.to(dev)
        inp = (x.float() - self.mean) / self.std
        if self.input_size is not None and (H, W) != (self.input_size, self.input_size):
            inp = F.interpolate(inp, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        feats = feature_map(self.model, inp).float()  # [B, C, h, w]
        fc = classifier_of(self.model)
        if y is not None and y.shape != (x.shape[0],):  # (one label was broadcast to every image)
            raise ValueError(f"y must hold one label per image, [{x.shape[0]}], got shape {list(y.shape)}")
        if y is not None and (y.is_floating_point() or y.is_complex() or y.dtype == torch.bool):  # (1.7: class 1)
            raise ValueError(f"y must be integer class indices, got {y.dtype}")
        # the map in float32 under the caller's autocast too (train's step): there einsum ran in bfloat16,
        # and the CAM came back in bfloat16, rounded by up to a level of 255
        with torch.autocast(dev.type, enabled=False) if dev.type in ("cpu", "cuda") else contextlib.nullcontext():
            if y is None or not self.labels_match:
                logits = fc(feats.mean(dim=(2, 3)))  # [B, K]
                y = logits.argmax(dim=-1)
            try:  # index_select, not [y]: a label -1 was the last class's row; no host sync to check
                w = fc.weight.float().index_select(0, y.to(dev).long())  # [B, C]
            except IndexError:
                K = fc.weight.shape[0]
                raise ValueError(f"y must be class indices in [0, {K}) of the CAM network, got "
                                 f"{y[(y < 0) | (y >= K)].unique().tolist()}") from None
            cam = torch.einsum("bc,bchw->bhw", w, feats).relu()  # [B, h, w]
            # a map constant at the network's resolution (1 x 1 at 8-pixel inputs) masks nothing; upsampled,
            # it varies by rounding (~1e-7), which min-max scaling would stretch to 0 .. 255
            low = cam.flatten(1)  # [B, h * w]
            flat = low.amax(dim=1) == low.amin(dim=1)  # [B]
            cam = F.interpolate(cam[:, None], size=(H, W), mode="bilinear", align_corners=False)[:, 0]  # [B, H, W]
            return normalize_cam(cam).masked_fill(flat[:, None, None], 0.0)
