"""The ResNet track's networks against code this project did not write: pytorch-ood's WideResNet
(energy_ood's CIFAR wrn.py, the WRN-40-2 of the OOD papers on CIFAR and of pytorch-ood's model
registry), pytorch-ood's ResNet18 (torchvision's resnet18; with the CIFAR stem, the kuangliu /
OpenOOD ResNet18_32x32 layout) and torchvision's DenseNet with a CIFAR stem (the DenseNet-BC-100
of Huang et al. and ODIN). The same weights go into both networks, the state-dict keys mapped by
the functions written out below, BatchNorm statistics from a train-mode pass over random images
(and random affine parameters): logits, penultimate features and the last feature map (what
the CAM and the post-hoc scores read) must agree."""

import re

import pytest
import torch
import torchvision
from pytorch_ood.model import ResNet18 as OodResNet18
from pytorch_ood.model import WideResNet as OodWideResNet

from clip_smot.resnet.networks import build_network, load_model, save_model

TOL = {"rtol": 1e-5, "atol": 1e-5}


def _calibrate_batchnorm(model: torch.nn.Module, size: int) -> torch.nn.Module:
    """Random BN affine parameters, and running statistics that are the (cumulative) batch
    statistics of 16 random images: non-trivial, and the activations stay of order 1 in eval mode."""
    torch.manual_seed(1)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for bn in bns:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_(0.0, 0.2)
            bn.momentum = None  # a cumulative average: one pass gives the batch's statistics
        model.train()(torch.randn(16, 3, size, size))
    for bn in bns:
        bn.momentum = 0.1
        assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
    return model.eval()


# ---------------------------------------------------------------------------------------------
# WRN-40-2 against pytorch-ood's WideResNet (energy_ood's CIFAR wrn.py).


def wrn_key_to_pytorch_ood(key: str) -> str:
    """Our WideResNet's state-dict key as pytorch-ood's (energy_ood's) WideResNet names it:
    ``groups.G.J.*`` -> ``blockG+1.layer.J.*``, a block's ``shortcut`` -> ``convShortcut``,
    the final ``bn`` -> ``bn1``; ``conv1``, the blocks' ``bn1/conv1/bn2/conv2`` and ``fc`` keep
    their names."""
    key = re.sub(r"^groups\.(\d+)\.", lambda m: f"block{int(m.group(1)) + 1}.layer.", key)
    key = re.sub(r"\.shortcut\.", ".convShortcut.", key)
    return re.sub(r"^bn\.", "bn1.", key)


def wrn_key_from_pytorch_ood(key: str) -> str:
    """The inverse of :func:`wrn_key_to_pytorch_ood` (a pytorch-ood WideResNet state dict, e.g.
    one of its model registry's CIFAR WRN-40-2 files, in our names)."""
    key = re.sub(r"^block(\d+)\.layer\.", lambda m: f"groups.{int(m.group(1)) - 1}.", key)
    key = re.sub(r"\.convShortcut\.", ".shortcut.", key)
    return re.sub(r"^bn1\.", "bn.", key)


def test_wrn40_2_is_pytorch_oods_wideresnet_with_the_same_weights():
    torch.manual_seed(0)
    ours = build_network("wrn40_2", 10, 32)
    ref = OodWideResNet(num_classes=10, depth=40, widen_factor=2, drop_rate=0.0)
    # the same parameters, tensor for tensor (2,243,546: the paper's 2.2M)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters()) == 2_243_546
    mapped = {wrn_key_to_pytorch_ood(k): v for k, v in _calibrate_batchnorm(ours, 32).state_dict().items()}
    assert set(mapped) == set(ref.state_dict())
    assert all(wrn_key_from_pytorch_ood(k) in ours.state_dict() for k in ref.state_dict())
    ref.load_state_dict(mapped, strict=True)
    ref.eval()
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        fmap = ref.feature_maps(x)  # [8, 128, 8, 8]
        assert fmap.shape == (8, 128, 8, 8) and fmap.abs().max() > 0.1
        torch.testing.assert_close(ours.forward_features(x), fmap, **TOL)
        torch.testing.assert_close(ours.forward_penultimate(x), ref.features(x), **TOL)
        torch.testing.assert_close(ours.forward_head(fmap), ref.forward_feature_maps(fmap), **TOL)
        torch.testing.assert_close(ours(x), ref(x), **TOL)


def test_a_pytorch_ood_wrn_state_dict_renamed_loads_as_a_clip_smot_model_file(tmp_path):
    """What a user holding one of pytorch-ood's registry WRN-40-2 state dicts (plain tensors) can do:
    rename its keys, load them into our wrn40_2 and write a model file with the registry's CIFAR
    normalisation; load_model reads it back as the same network. (Old checkpoints without BN's
    num_batches_tracked load too: torch fills it in for a plain dict.)"""
    torch.manual_seed(0)
    ref = _calibrate_batchnorm(OodWideResNet(num_classes=10, depth=40, widen_factor=2, drop_rate=0.3), 32)
    state = {k: v for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")}
    ours = build_network("wrn40_2", 10, 32)
    ours.load_state_dict({wrn_key_from_pytorch_ood(k): v for k, v in state.items()}, strict=True)
    mean, std = [c / 255 for c in (125.3, 123.0, 113.9)], [c / 255 for c in (63.0, 62.1, 66.7)]
    save_model(tmp_path / "model.safetensors", ours, arch="wrn40_2", classnames=[f"c{i}" for i in range(10)],
               input_size=32, mean=mean, std=std, dataset="cifar10")
    loaded, meta = load_model(tmp_path / "model.safetensors")
    assert meta["mean"] == pytest.approx(mean) and meta["std"] == pytest.approx(std)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), ref(x), **TOL)


# ---------------------------------------------------------------------------------------------
# ResNet-18 against pytorch-ood's ResNet18 (torchvision's resnet18, with its representation methods).


def resnet_key_to_torchvision(key: str) -> str:
    """Our ResNet's key as torchvision's (and pytorch-ood's ResNet18) names it: ``layers.S.*`` ->
    ``layerS+1.*``, a block's ``shortcut.0/1`` -> ``downsample.0/1``; ``conv1``, ``bn1`` and ``fc``
    keep theirs. (kuangliu's and OpenOOD's CIFAR ResNet18 keep ``shortcut`` and name the stages
    ``layer1..4``; kuangliu's head is ``linear``, OpenOOD's ``fc``.)"""
    key = re.sub(r"^layers\.(\d+)\.", lambda m: f"layer{int(m.group(1)) + 1}.", key)
    return re.sub(r"\.shortcut\.", ".downsample.", key)


@pytest.mark.parametrize("size, params", [(32, 11_173_962), (224, 11_181_642)])
def test_resnet18_is_pytorch_oods_resnet18_with_the_same_weights(size, params):
    """224: pytorch-ood's ResNet18 as it is (torchvision's ImageNet stem); 32: with the CIFAR stem,
    conv1 a 3x3 stride-1 convolution and no max-pool, the layout of kuangliu's and OpenOOD's
    ResNet18_32x32 (11,173,962 parameters for 10 classes: the 11.2M usually quoted)."""
    torch.manual_seed(0)
    ours = build_network("resnet18", 10, size)
    ref = OodResNet18(num_classes=10)
    if size == 32:
        ref.conv1, ref.maxpool = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False), torch.nn.Identity()
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters()) == params
    side = 32 if size == 32 else 64  # (64 for the ImageNet stem: its strides, on a smaller image)
    mapped = {resnet_key_to_torchvision(k): v for k, v in _calibrate_batchnorm(ours, side).state_dict().items()}
    ref.load_state_dict(mapped, strict=True)
    ref.eval()
    x = torch.randn(4, 3, side, side)
    with torch.no_grad():
        fmap = ref.feature_maps(x)
        assert fmap.shape == (4, 512, side // 8 if size == 32 else side // 32, side // 8 if size == 32 else side // 32)
        torch.testing.assert_close(ours.forward_features(x), fmap, **TOL)
        torch.testing.assert_close(ours.forward_penultimate(x), ref.features(x), **TOL)
        torch.testing.assert_close(ours.forward_head(fmap), ref.forward_feature_maps(fmap), **TOL)
        torch.testing.assert_close(ours(x), ref(x), **TOL)


def test_resnet18_imagenet_stem_has_torchvisions_parameter_count():
    """1000 classes: torchvision's documented 11,689,512 parameters."""
    assert sum(p.numel() for p in build_network("resnet18", 1000, 224).parameters()) == 11_689_512


# ---------------------------------------------------------------------------------------------
# DenseNet-BC-100 (k = 12) against torchvision's DenseNet with a CIFAR stem.


def densenet_key_to_torchvision(key: str, layers: int = 16) -> str:
    """Our DenseNetBC's key as torchvision's DenseNet names it. Ours keeps one flat ``blocks``
    Sequential: each dense block's ``layers`` layers, then (after the first two) a transition,
    so index ``i`` is block ``i // (layers + 1)``, position ``i % (layers + 1)``.
    ``conv1`` -> ``features.conv0``; a dense layer's ``bn1/conv1/bn2/conv2`` ->
    ``features.denseblockB.denselayerJ.norm1/conv1/norm2/conv2``; a transition's ``bn/conv`` ->
    ``features.transitionB.norm/conv``; the final ``bn`` -> ``features.norm5``; ``fc`` ->
    ``classifier``."""
    if key.startswith("conv1."):
        return "features.conv0." + key[len("conv1."):]
    if key.startswith("bn."):
        return "features.norm5." + key[len("bn."):]
    if key.startswith("fc."):
        return "classifier." + key[len("fc."):]
    m = re.match(r"^blocks\.(\d+)\.(\w+)\.(.+)$", key)
    assert m, key
    block, pos = divmod(int(m.group(1)), layers + 1)
    if pos == layers:  # a transition
        name = {"bn": "norm", "conv": "conv"}[m.group(2)]
        return f"features.transition{block + 1}.{name}.{m.group(3)}"
    name = {"bn1": "norm1", "conv1": "conv1", "bn2": "norm2", "conv2": "conv2"}[m.group(2)]
    return f"features.denseblock{block + 1}.denselayer{pos + 1}.{name}.{m.group(3)}"


def test_densenet_bc_100_is_torchvisions_densenet_with_a_cifar_stem():
    """torchvision's DenseNet(growth 12, blocks (16, 16, 16), 24 initial features, bottleneck 4k,
    compression 0.5 (num_features // 2)), its ImageNet stem (7x7 stride-2 conv, BN, ReLU, max-pool)
    replaced by the CIFAR one (a 3x3 stride-1 conv, nothing after it: ODIN's / OpenOOD's
    DenseNet3): 769,162 parameters for 10 classes (Huang et al.'s 0.8M for DenseNet-BC, L = 100,
    k = 12), the same logits, features and 8x8 map."""
    torch.manual_seed(0)
    ours = build_network("densenet_bc", 10, 32)
    ref = torchvision.models.DenseNet(growth_rate=12, block_config=(16, 16, 16), num_init_features=24,
                                      bn_size=4, drop_rate=0, num_classes=10)
    ref.features.conv0 = torch.nn.Conv2d(3, 24, 3, 1, 1, bias=False)
    ref.features.norm0 = ref.features.relu0 = ref.features.pool0 = torch.nn.Identity()
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters()) == 769_162
    # the channel counts: 24 + 16 * 12 = 216 -> 108, + 192 = 300 -> 150, + 192 = 342
    assert [getattr(ref.features, f"transition{i}").conv.out_channels for i in (1, 2)] == [108, 150]
    assert ours.num_features == ref.classifier.in_features == 342
    mapped = {densenet_key_to_torchvision(k): v for k, v in _calibrate_batchnorm(ours, 32).state_dict().items()}
    assert set(mapped) == set(ref.state_dict())
    ref.load_state_dict(mapped, strict=True)
    ref.eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        fmap = torch.relu(ref.features(x))  # torchvision applies the last ReLU in forward
        assert fmap.shape == (4, 342, 8, 8)
        torch.testing.assert_close(ours.forward_features(x), fmap, **TOL)
        torch.testing.assert_close(ours.forward_penultimate(x), fmap.mean(dim=(2, 3)), **TOL)
        torch.testing.assert_close(ours(x), ref(x), **TOL)
