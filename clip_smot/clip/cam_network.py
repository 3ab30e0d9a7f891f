"""Load the CAM network of the CLIP track: torchvision's ImageNet ResNet-18 or a local checkpoint.

``--cam-model`` is either ``resnet18-imagenet`` (torchvision's ImageNet weights, downloaded on
a machine with internet; offline and not cached, a clear error within seconds), or the path of

* a torchvision ResNet state dict (``.pt`` / ``.pth`` / ``.bin``, or ``.safetensors``, e.g.
  timm's ``model.safetensors`` of ``timm/resnet18.tv_in1k`` on the Hugging Face hub: timm's
  ResNets keep torchvision's key names; ImageNet stem, any depth, the block type and counts
  read from the keys; ImageNet's mean and std at 224 pixels), or
* a ``model.safetensors`` written by ``clip-smot train`` (metadata ``format`` =
  ``clip-smot-model``, ``arch``, ``num_classes``, ``classnames`` (JSON), ``input_size``,
  ``mean`` / ``std`` (JSON); tensors = the state dict; the network is rebuilt by
  ``clip_smot.resnet.networks.build_network``).

The CAM is computed for the true label when the network's classes are the data's (an ImageNet
network on ImageNet wnids: through the wnid -> index map; a trained network whose class names
are the data's), otherwise for the network's own top-1 class.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from clip_smot.cam import CAMProvider
from clip_smot.clip.fewshot import FewShotClasses
from clip_smot.common.bundled import IMAGENET_MEAN, IMAGENET_STD
from clip_smot.common.device import file_over_memory
from clip_smot.common.errors import UserError, first_line, load_error
from clip_smot.common.file_kinds import archive_refusal, check_kind
from clip_smot.common.files import mapped_read_error
from clip_smot.common.network import host_reachable, no_download
from clip_smot.common.run_folder import holds_its_values

__all__ = ["CAM_MODELS", "IMAGENET_MEAN", "IMAGENET_STD", "CamNetwork", "build_cam_provider", "cache_cams",
           "load_cam_network"]

# Named CAM networks (the CLI's choices besides a file path).
CAM_MODELS = {"resnet18-imagenet": "https://download.pytorch.org/models/resnet18-f37072fd.pth"}
_DOWNLOAD_HOST = ("download.pytorch.org", 443)


@dataclass
class CamNetwork:
    """A CAM network and what is needed to feed it.

    Attributes:
        model: the ResNet (eval mode, frozen by :class:`~clip_smot.cam.CAMProvider`).
        mean, std: its input normalisation.
        input_size: the side length it was trained at (images are resized to it for the CAM).
        imagenet: True when its classes are the 1000 ImageNet-1k classes in wnid order.
        class_ids: its class names (folder names) when known, else None.
        source: what was loaded (a name or a file), for the run's config.
    """

    model: nn.Module
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: int
    imagenet: bool
    class_ids: tuple[str, ...] | None
    source: str


def _named(name: str) -> CamNetwork:
    import torchvision

    url = CAM_MODELS[name]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    if not cached.is_file() and not host_reachable(_DOWNLOAD_HOST):
        raise UserError(
            f"--cam-model {name}: torchvision's ImageNet ResNet-18 weights are not cached ({cached}) and "
            f"{no_download()}; download {url} elsewhere and pass --cam-model path/to/{os.path.basename(url)}"
        )
    try:
        model = torchvision.models.resnet18(weights=torchvision.models.ResNet18_Weights.IMAGENET1K_V1)
    except Exception as e:  # urllib / hash errors on a failed download
        raise UserError(f"--cam-model {name}: could not load the weights ({e})".split("\n")[0]) from None
    return CamNetwork(model, IMAGENET_MEAN, IMAGENET_STD, 224, True, None, name)


MAX_BLOCKS = 64  # blocks per stage of a --cam-model state dict (torchvision's deepest, ResNet-152: 3, 8, 36, 3)


def _torchvision_resnet(state: dict[str, torch.Tensor], path: str) -> nn.Module:
    """Rebuild a torchvision ResNet from its state dict (block type and counts from the keys)."""
    from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

    from clip_smot.resnet.networks import check_finite_weights, first_shape_difference

    if "fc.weight" not in state or "conv1.weight" not in state or state["fc.weight"].ndim != 2:
        raise UserError(f"--cam-model {path}: not a torchvision ResNet state dict (no conv1.weight / fc.weight)")
    if state["fc.weight"].shape[0] == 0:  # (a CAM is of a class: its top-1 of none failed in argmax)
        raise UserError(f"--cam-model {path}: fc.weight {tuple(state['fc.weight'].shape)} holds no class")
    # load_state_dict would cast a complex weight to its real part, an integer or boolean one to a
    # float, without a word; a sparse one has no storage to measure (holds_its_values). A BatchNorm's
    # num_batches_tracked is a count (an integer): any real one is cast, a complex one lost its part
    counts = lambda k: k.endswith("num_batches_tracked")  # noqa: E731
    odd = next(((k, v) for k, v in state.items() if v.layout != torch.strided
                or (v.is_complex() if counts(k) else not v.is_floating_point())), None)
    if odd is not None:
        k, v = odd
        what = f"a {v.layout} tensor" if v.layout != torch.strided else f"of dtype {v.dtype}"
        raise UserError(f"--cam-model {path}: {k} is {what}, not a dense {'real' if counts(k) else 'floating-point'} "
                        "tensor")
    block = Bottleneck if "layer1.0.conv3.weight" in state else BasicBlock
    layers = []
    for i in range(1, 5):
        ids = {int(m.group(1)) for k in state if (m := re.match(rf"layer{i}\.(\d{{1,9}})\.", k))}
        if not ids:
            raise UserError(f"--cam-model {path}: not a torchvision ResNet state dict (no layer{i})")
        if ids != set(range(len(ids))):  # each block has its own keys: the keys bound the blocks there are
            raise UserError(f"--cam-model {path}: layer{i} names blocks up to {max(ids)} but holds {len(ids)}")
        if len(ids) > MAX_BLOCKS:  # (200,000 keys naming blocks of one shared tensor: 6 GB and 5 minutes)
            raise UserError(f"--cam-model {path}: layer{i} holds {len(ids)} blocks, more than any ResNet "
                            f"(ResNet-152: 36; at most {MAX_BLOCKS})")
        layers.append(len(ids))
    repeated = [k for k, v in state.items() if not holds_its_values(v)]
    if repeated:
        raise UserError(f"--cam-model {path}: {repeated[0]} declares more values than the file holds")
    with torch.device("meta"):  # the architecture's shapes, without allocating its weights
        expected = {k: tuple(v.shape) for k, v in ResNet(block, layers, num_classes=state["fc.weight"].shape[0])
                    .state_dict().items() if not k.endswith("num_batches_tracked") or k in state}
    # (torchvision's own ImageNet files predate num_batches_tracked: loading fills it in)
    found = {k: tuple(v.shape) for k, v in state.items()}
    if found != expected:
        raise UserError(f"--cam-model {path}: does not match a torchvision ResNet "
                        f"({first_shape_difference(found, expected)})")
    model = ResNet(block, layers, num_classes=state["fc.weight"].shape[0])
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise UserError(f"--cam-model {path}: does not match a torchvision ResNet ({first_line(e)})") from None
    check_finite_weights(model, f"--cam-model {path}")
    return model


def _safetensors_format(path: str) -> str | None:
    """The ``format`` metadata of a safetensors file (None: it has none), read from its header;
    a file safetensors cannot read is taken for a model file of ``clip-smot train``, whose
    loader names the error."""
    from safetensors import SafetensorError, safe_open

    from clip_smot.resnet.networks import MODEL_FORMAT

    try:
        with safe_open(path, framework="pt") as f:
            return (f.metadata() or {}).get("format")
    except (SafetensorError, OSError, ValueError):
        return MODEL_FORMAT
    except RuntimeError as e:  # (torch could not map it: the model file's loader names the read)
        if mapped_read_error(e) is None:
            raise
        return MODEL_FORMAT


def _from_state_dict_file(path: str) -> CamNetwork:
    refused = archive_refusal(path) or file_over_memory(path)
    if refused:
        raise UserError(f"--cam-model {path}: {refused}")
    if path.endswith(".safetensors"):  # (a state dict as the Hugging Face hub keeps it: timm's model.safetensors)
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj = load_file(path)
        except (SafetensorError, OSError, ValueError) as e:
            raise UserError(f"--cam-model {path}: not a safetensors file ({e})") from None
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise UserError(f"--cam-model {path}: not a readable PyTorch state dict ({load_error(e)})") from None
    for key in ("state_dict", "model"):  # common wrappers
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise UserError(f"--cam-model {path}: expected a state dict, found {type(obj).__name__}")
    # (an entry that is no tensor, or a tensor under a key that is no name (0, (1, 2)), is none of the weights)
    state = {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor) and isinstance(k, str)}
    model = _torchvision_resnet(state, path)
    k = state["fc.weight"].shape[0]
    return CamNetwork(model, IMAGENET_MEAN, IMAGENET_STD, 224, k == 1000, None, path)


def _from_train_safetensors(path: str) -> CamNetwork:
    from clip_smot.resnet.networks import load_model

    model, meta = load_model(path, "cpu", flag="--cam-model")
    return CamNetwork(model, tuple(meta["mean"]), tuple(meta["std"]), meta["input_size"], False,
                      tuple(meta["classnames"]), path)


def load_cam_network(spec: str) -> CamNetwork:
    """Load the CAM network named by ``--cam-model`` (a name of :data:`CAM_MODELS` or a file).

    Raises:
        UserError: a missing file, a file that is not a ResNet checkpoint, or named weights
            that cannot be downloaded (within seconds when offline).
    """
    if spec in CAM_MODELS:
        return _named(spec)
    if not os.path.isfile(spec):
        raise UserError(
            f"--cam-model {spec}: no such checkpoint file (give {', '.join(CAM_MODELS)} or the path of a ResNet "
            "state dict (.pt/.pth) or of a model.safetensors from 'clip-smot train')"
        )
    check_kind(spec, "--cam-model", "cam-model")  # (a prompt, a fit checkpoint: named as such)
    from clip_smot.resnet.networks import MODEL_FORMAT

    if spec.endswith(".safetensors") and _safetensors_format(spec) == MODEL_FORMAT:
        return _from_train_safetensors(spec)
    return _from_state_dict_file(spec)  # (a safetensors file of other metadata: a plain state dict)


def build_cam_provider(net: CamNetwork, classes: FewShotClasses) -> tuple[CAMProvider, list[int] | None]:
    """A CAM provider for the data's classes, and the network's class index of each data label.

    Returns:
        (provider, label_map): ``label_map[y]`` is the network's class for data label ``y``
        when the classes match (the CAM is then for the true label), else None (top-1 CAM).
    """
    label_map = None
    if net.imagenet and classes.imagenet_index is not None:
        label_map = list(classes.imagenet_index)
    elif net.class_ids is not None:
        index = {c: i for i, c in enumerate(net.class_ids)}
        for names in (classes.folders, classes.classnames):
            if all(c in index for c in names):
                label_map = [index[c] for c in names]
                break
    provider = CAMProvider(net.model, net.mean, net.std, labels_match=label_map is not None, input_size=net.input_size)
    return provider, label_map


@torch.no_grad()
def cache_cams(
    provider: CAMProvider,
    label_map: list[int] | None,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = 64,
) -> torch.Tensor:
    """CAMs of all few-shot images, computed once on the images' device and stored as uint8.

    Args:
        provider: from :func:`build_cam_provider` (its network is moved to the images' device).
        label_map: data label -> network class, or None for top-1 CAMs.
        images: [N, 3, S, S] uint8.
        labels: [N] data labels.
        batch_size: images per forward pass.

    Returns:
        [N, S, S] uint8 CAMs in [0, 255] (rounded), on the images' device.
    """
    dev = images.device
    provider.model.to(dev)
    cmap = torch.tensor(label_map, device=dev) if label_map is not None else None
    out = torch.empty(images.shape[0], *images.shape[2:], dtype=torch.uint8, device=dev)  # [N, S, S]
    for i in range(0, images.shape[0], batch_size):
        x = images[i:i + batch_size].float() / 255.0  # [b, 3, S, S]
        y = cmap[labels[i:i + batch_size].to(dev)] if cmap is not None else None
        out[i:i + batch_size] = provider(x, y).round().clamp_(0, 255).to(torch.uint8)
    provider.model.cpu()
    return out
