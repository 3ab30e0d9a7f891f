import json
import os
import re

import pytest
import torch
from helpers import cam_resnet  # noqa: F401 (fixture)
from helpers import safetensors_reads, save_safetensors_by_hand
from safetensors.torch import save_file

import clip_smot
from clip_smot.cam import CAMProvider
from clip_smot.cli import _ARCHS
from clip_smot.common.errors import UserError
from clip_smot.resnet.networks import NETWORKS, build_network, load_model, save_model

_V = re.escape(clip_smot.__version__)  # (this clip-smot's version, as a refused file's line names it)


def test_cli_choices_are_the_registry():
    assert set(_ARCHS) == set(NETWORKS)


@pytest.mark.parametrize("arch,feat_dim", [("resnet18", 512), ("wrn40_2", 128), ("densenet_bc", 342), ("resnet_tiny", 128)])
def test_forward_backward_every_parameter_gets_a_gradient(arch, feat_dim):
    torch.manual_seed(0)
    model = build_network(arch, 10, 32)
    x = torch.randn(4, 3, 32, 32)
    feats = model.forward_features(x)
    assert feats.shape[:2] == (4, feat_dim) and feats.ndim == 4
    assert feats.min() >= 0 and (feats > 0).float().mean() > 0.1  # (the map after its final ReLU: a CAM's)
    assert model.forward_penultimate(x).shape == (4, feat_dim)
    torch.testing.assert_close(model.forward_penultimate(x), feats.sum(dim=(2, 3)) / (feats.shape[2] * feats.shape[3]))
    logits = model.forward_head(feats)
    assert logits.shape == (4, 10)
    torch.testing.assert_close(logits, model(x))
    pooled = model.forward_penultimate(x)  # (forward_head takes pooled features [B, C] too, as they are)
    torch.testing.assert_close(model.forward_head(pooled), pooled @ model.fc.weight.t() + model.fc.bias)
    torch.testing.assert_close(model.forward_head(pooled), logits)
    assert model.get_classifier() is model.fc
    logits.sum().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not missing


def test_resnet18_stems_and_paper_sizes():
    cifar = build_network("resnet18", 10, 32)
    assert cifar.conv1.kernel_size == (3, 3) and cifar.conv1.stride == (1, 1)
    assert isinstance(cifar.maxpool, torch.nn.Identity)
    assert cifar.forward_features(torch.randn(1, 3, 32, 32)).shape[-1] == 4
    imnet = build_network("resnet18", 200, 224)
    assert imnet.conv1.kernel_size == (7, 7) and imnet.conv1.stride == (2, 2)
    assert imnet.forward_features(torch.randn(1, 3, 224, 224)).shape[-1] == 7
    from clip_smot.resnet.networks import ResNet

    default = ResNet((1, 1, 1, 1), (16, 32, 64, 128), 3)  # (the class's documented default stem: CIFAR's)
    assert default.conv1.kernel_size == (3, 3) and isinstance(default.maxpool, torch.nn.Identity)
    # parameter counts of the standard networks (ResNet-18 CIFAR ~11.17M, WRN-40-2 ~2.24M, DenseNet-BC-100-12 ~0.77M)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(cifar) == 11_173_962
    assert abs(count(build_network("wrn40_2", 10, 32)) - 2.24e6) < 0.02e6
    assert abs(count(build_network("densenet_bc", 10, 32)) - 0.77e6) < 0.02e6


def test_cam_provider_works_on_every_network():
    for arch in NETWORKS:
        torch.manual_seed(0)
        cam = CAMProvider(build_network(arch, 5, 32), (0.5,) * 3, (0.25,) * 3)(torch.rand(2, 3, 32, 32), torch.tensor([0, 3]))
        assert cam.shape == (2, 32, 32) and cam.min() >= 0 and cam.max() <= 255


def _save(path, arch="resnet_tiny"):
    torch.manual_seed(0)
    model = build_network(arch, 3, 32)
    save_model(path, model, arch=arch, classnames=["a", "b", "c"], input_size=32, mean=[0.1, 0.2, 0.3],
               std=[0.5, 0.5, 0.5], dataset="x", method="ce", stage="base", config={"lr": 0.1})
    return model


def test_model_file_round_trip(tmp_path):
    model = _save(tmp_path / "m.safetensors")
    loaded, meta = load_model(tmp_path / "m.safetensors")
    assert meta["classnames"] == ["a", "b", "c"] and meta["num_classes"] == 3 and meta["input_size"] == 32
    assert meta["mean"] == [0.1, 0.2, 0.3] and meta["config"] == {"lr": 0.1} and meta["stage"] == "base"
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), model.eval()(x))


def test_a_model_file_whose_open_fails_is_one_line(tmp_path, monkeypatch):
    """safetensors maps a file through torch (UntypedStorage.from_file): an open(2) of it that fails
    there (EIO of a failing disk, injected in a real eval --checkpoint; EACCES of a file that may
    not be read) is torch's RuntimeError "unable to open file <PATH> in read-only mode:
    Input/output error (5)", which load_model let out as a traceback, at its header read and at
    its tensors' load alike. One line naming the flag and the file."""
    path = tmp_path / "m.safetensors"
    _save(path)

    def fails(*args, **kwargs):
        raise RuntimeError(f"unable to open file <{path}> in read-only mode: Input/output error (5)")

    monkeypatch.setattr(torch.UntypedStorage, "from_file", fails)
    with pytest.raises(UserError, match=rf"^--checkpoint {path}: .*Input/output error") as e:
        load_model(path, flag="--checkpoint")
    assert str(e.value) == f"--checkpoint {path}: cannot be read (Input/output error)"  # (the disk's, no damage)


def test_a_model_file_torch_cannot_map_at_its_tensors_load_is_one_line_and_another_error_is_raised(
        tmp_path, monkeypatch):
    """The header read, then the load of the tensors: torch failing to map the file only at the
    second (EIO of a disk failing between the two) is the same one line. A RuntimeError that is
    not torch's open of the file is raised as it is, at either."""
    path = tmp_path / "m.safetensors"
    _save(path)
    real, calls, failing = torch.UntypedStorage.from_file, [], [None, 2]

    def fails_after(*args, **kwargs):
        calls.append(args)
        if len(calls) > failing[1]:
            raise failing[0]
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.UntypedStorage, "from_file", fails_after)
    load_model(path)
    assert len(calls) == 2  # (one map for the header read, one for the tensors' load)
    for error, after in ((RuntimeError(f"unable to open file <{path}> in read-only mode: Input/output error (5)"), 1),
                         (RuntimeError("a bug"), 0), (RuntimeError("a bug"), 1)):
        failing[:], calls[:] = [error, after], []
        with pytest.raises((UserError, RuntimeError)) as e:
            load_model(path, flag="--checkpoint")
        if "a bug" in str(error):
            assert type(e.value) is RuntimeError and str(e.value) == "a bug"
        else:
            assert str(e.value) == f"--checkpoint {path}: cannot be read (Input/output error)"


def test_model_file_bad_inputs(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_model(tmp_path / "none.safetensors")
    # a FIFO (train --cam-model on a pipe, as under torchrun): it is there, so not "no such file"
    os.mkfifo(tmp_path / "pipe.safetensors")
    with pytest.raises(UserError, match=rf"^--cam-model {tmp_path / 'pipe.safetensors'}: not a regular file "
                                        r"\(a FIFO, a device\)$"):
        load_model(tmp_path / "pipe.safetensors", flag="--cam-model")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(UserError, match="not a safetensors file"):
        load_model(tmp_path / "junk.safetensors")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"), metadata={"format": "clip-smot-prompt"})
    with pytest.raises(UserError, match=r"a prompt file \(fit's or export's .safetensors\), not a model file of "
                                        "clip-smot train"):
        load_model(tmp_path / "other.safetensors", flag="--cam-model")
    _save(tmp_path / "m.safetensors")
    from safetensors.torch import load_file, safe_open

    with safe_open(str(tmp_path / "m.safetensors"), "pt") as f:
        meta = dict(f.metadata())
    meta["arch"] = "resnet18"  # weights of a tiny ResNet under the name of another
    save_file(load_file(str(tmp_path / "m.safetensors")), str(tmp_path / "lie.safetensors"), metadata=meta)
    with pytest.raises(UserError, match="do not fit a resnet18"):
        load_model(tmp_path / "lie.safetensors")
    del meta["classnames"]
    save_file({"w": torch.zeros(2)}, str(tmp_path / "lacks.safetensors"), metadata=meta)
    with pytest.raises(UserError, match="lacks metadata classnames"):
        load_model(tmp_path / "lacks.safetensors")


def _edited(tmp_path, name, tensors=None, **meta_changes):
    """A copy of a tiny model file with its metadata (and tensors) edited by hand, its sha256
    removed (as the format asks of a file edited on purpose)."""
    from safetensors.torch import load_file, safe_open

    _save(tmp_path / "m.safetensors")
    with safe_open(str(tmp_path / "m.safetensors"), "pt") as f:
        meta = {k: v for k, v in f.metadata().items() if k != "sha256"}
    meta.update(meta_changes)
    path = tmp_path / name
    save_safetensors_by_hand(path, tensors if tensors is not None else load_file(str(tmp_path / "m.safetensors")),
                             metadata=meta)  # (complex64 among them)
    return path


@pytest.mark.parametrize("changes, expected", [
    ({"input_size": "100000"}, r"input_size 100000 in its metadata is outside \[8, 1024\]"),
    ({"input_size": "4"}, r"input_size 4 in its metadata is outside \[8, 1024\]"),
    ({"std": "[0.5, 0.0, 0.5]"}, r"mean and std: three finite numbers each, of images in \[0, 1\]: each mean in "
                                 r"\[0, 1\], each std at least 0.001\)$"),
    # finite, but a std float32 rounds to 0, or a mean past any pixel: inputs inf, NaN logits and
    # all-zero CAMs (a SMOT run with it as --cam-model masked nothing and exited 0)
    ({"std": "[1e-300, 0.25, 0.25]"}, "each std at least 0.001"),
    ({"mean": "[1e38, 0.5, 0.5]"}, "each mean in \\[0, 1\\]"),
    # a std past any images' in [0, 1]: 1e300 is float32's inf, which erased the channel (exit 0)
    ({"std": "[1e300, 0.25, 0.25]"}, r"inconsistent metadata \(std 1e\+300: images in \[0, 1\] have a std of at most "
                                     r"0.5; each std at most 1\)$"),
    ({"std": "[0.25, 1.5, 0.25]"}, r"\(std 1.5: "),
    ({"mean": "[NaN, 0.1, 0.1]"}, "mean and std: three finite numbers each"),
    ({"mean": f"[{10**400}, 0.1, 0.1]"}, "malformed metadata"),  # (float() of it: an OverflowError traceback)
    ({"classnames": "[1, 2, 3]"}, "inconsistent metadata"),
    # counts and numbers as save_model writes them; int() and float() took these (exit 0)
    ({"num_classes": "\u0663"}, r"malformed metadata \(num_classes '\u0663' is not a whole number in ASCII digits\)"),
    ({"input_size": " 32"}, r"malformed metadata \(input_size ' 32' is not a whole number in ASCII digits\)"),
    ({"input_size": "3_2"}, "input_size '3_2' is not a whole number"),
    ({"mean": "[true, 0.5, 0.5]"}, r"malformed metadata \(mean is not a JSON list of numbers\)"),
    ({"std": '["0.25", 0.25, 0.25]'}, r"malformed metadata \(std is not a JSON list of numbers\)"),
    ({"mean": '"0.5"'}, r"malformed metadata \(mean is not a JSON list\)"),
    ({"classnames": '"abc"'}, r"malformed metadata \(classnames is not a JSON list\)"),  # (was read as a, b, c)
    ({"num_classes": "1", "classnames": '["a"]'}, "2 or more names expected"),
    ({"config": "[1, 2]"}, "config: a JSON object"),  # (eval --checkpoint read config.get: AttributeError)
    ({"config": '{"dataset": 10}'}, "config: a JSON object whose dataset and data are strings"),
    ({"arch": "resnet50"}, r"unknown architecture 'resnet50' \(known: resnet18, wrn40_2, densenet_bc, resnet_tiny\)$"),
    # another format, in a header longer than what check_kind sniffs (1 MiB): refused when it is read
    ({"format": "pt", "note": "x" * (1 << 20)}, r"not a clip-smot model file \(format is 'pt', expected "
                                                r"'clip-smot-model'; train one with 'clip-smot train'\)$"),
])
def test_model_file_metadata_out_of_bounds_is_one_line(tmp_path, changes, expected):
    """A model.safetensors whose metadata asked for input_size 100000 was loaded, and every image
    resized to 100000 x 100000 (killed for memory)."""
    with pytest.raises(UserError, match=expected):
        load_model(_edited(tmp_path, "edited.safetensors", **changes))


def test_model_file_shapes_are_checked_before_the_network_is_built(tmp_path, monkeypatch):
    """num_classes 10 million with a head of 3 classes: refused from the file's header, before a
    [10M, 128] head (5 GB) is allocated; nothing is built but on the meta device."""
    import time

    import clip_smot.resnet.networks as networks

    names = [""] * 10_000_000  # (the names' JSON fits safetensors' 100 MB header)
    path = _edited(tmp_path, "big.safetensors", num_classes=str(len(names)), classnames=__import__("json").dumps(names))
    built = []
    real_build = networks.build_network
    monkeypatch.setattr(networks, "build_network", lambda *a: built.append(torch.empty(0).device) or real_build(*a))
    t0 = time.perf_counter()
    with pytest.raises(UserError, match=r"weights do not fit a resnet_tiny of 10000000 classes \(fc.weight has shape "
                                        r"\[3, 128\], not \[10000000, 128\]\)"):
        load_model(path)
    assert time.perf_counter() - t0 < 30 and built == [torch.device("meta")]
    with pytest.raises(UserError, match=r"do not fit a resnet_tiny of 3 classes \(no fc.bias\)"):
        load_model(_edited(tmp_path, "nobias.safetensors",
                           tensors={k: v for k, v in build_network("resnet_tiny", 3, 32).state_dict().items()
                                    if k != "fc.bias"}))


def test_non_finite_weights_are_refused_by_both_cam_model_readers(tmp_path, cam_resnet):
    """A NaN weight gives NaN CAMs, which become all-zero maps: a SMOT run with such a --cam-model
    masked nothing and exited 0. A model file (train's) and a state dict (fit's) are refused."""
    from clip_smot.clip.cam_network import load_cam_network

    model = _save(tmp_path / "m.safetensors")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["fc.weight"][0, 0] = float("nan")
    model.load_state_dict(state)
    save_model(tmp_path / "nan.safetensors", model, arch="resnet_tiny", classnames=["a", "b", "c"], input_size=32,
               mean=[0.1, 0.2, 0.3], std=[0.5, 0.5, 0.5])
    with pytest.raises(UserError, match=r"^--cam-model \S+nan.safetensors: fc.weight holds non-finite numbers$"):
        load_model(tmp_path / "nan.safetensors", flag="--cam-model")
    with pytest.raises(UserError, match=r"^--cam-model \S+nan.safetensors: fc.weight holds non-finite numbers$"):
        load_cam_network(str(tmp_path / "nan.safetensors"))
    torchvision_state = torch.load(cam_resnet, weights_only=True)
    torchvision_state["layer1.0.bn1.running_var"][3] = float("inf")
    torch.save(torchvision_state, tmp_path / "inf.pth")
    with pytest.raises(UserError, match=r"^--cam-model \S+inf.pth: layer1.0.bn1.running_var holds non-finite numbers$"):
        load_cam_network(str(tmp_path / "inf.pth"))
    load_model(tmp_path / "m.safetensors", flag="--cam-model")  # (finite weights load)


def test_a_negative_batchnorm_variance_is_refused_by_both_cam_model_readers(tmp_path, cam_resnet):
    """A negative running_var is finite, but its square root is NaN: NaN logits, and NaN CAMs that
    become all-zero maps (a SMOT run with it as --cam-model masked nothing and exited 0)."""
    from clip_smot.clip.cam_network import load_cam_network

    model = _save(tmp_path / "m.safetensors")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["layers.3.0.bn2.running_var"][5] = -0.5
    model.load_state_dict(state)
    save_model(tmp_path / "neg.safetensors", model, arch="resnet_tiny", classnames=["a", "b", "c"], input_size=32,
               mean=[0.1, 0.2, 0.3], std=[0.5, 0.5, 0.5])
    with torch.no_grad():  # (what such a network gives: NaN)
        assert torch.isnan(model.eval()(torch.zeros(1, 3, 32, 32))).all()
    with pytest.raises(UserError, match=r"^--cam-model \S+neg.safetensors: layers.3.0.bn2.running_var holds negative "
                                        r"variances$"):
        load_model(tmp_path / "neg.safetensors", flag="--cam-model")
    torchvision_state = torch.load(cam_resnet, weights_only=True)
    torchvision_state["layer1.0.bn1.running_var"][3] = -1.0
    torch.save(torchvision_state, tmp_path / "neg.pth")
    with pytest.raises(UserError, match=r"^--cam-model \S+neg.pth: layer1.0.bn1.running_var holds negative variances$"):
        load_cam_network(str(tmp_path / "neg.pth"))


def test_finite_weights_that_overflow_are_refused(tmp_path):
    """fc.weight scaled to float32's largest value is finite, but the logits are inf and the CAMs
    NaN: an image whose CAM is NaN was masked whole, the others not at all, without a word."""
    model = _save(tmp_path / "m.safetensors")
    with torch.no_grad():
        model.fc.weight.div_(model.fc.weight.abs().max()).mul_(3e38)  # (largest 3e38: finite)
    save_model(tmp_path / "huge.safetensors", model, arch="resnet_tiny", classnames=["a", "b", "c"], input_size=32,
               mean=[0.1, 0.2, 0.3], std=[0.5, 0.5, 0.5])
    with pytest.raises(UserError, match=r"^--cam-model \S+huge.safetensors: its logits for a grey, black, white or "
                                        r"checkered image are not finite \(weights too large for float32\)$"):
        load_model(tmp_path / "huge.safetensors", flag="--cam-model")


def _torchvision_names(name: str) -> str:
    """Our ResNet's state-dict name as torchvision's ResNet names it."""
    import re

    name = re.sub(r"^layers\.(\d)\.", lambda m: f"layer{int(m.group(1)) + 1}.", name)
    return name.replace(".shortcut.", ".downsample.")


@pytest.mark.parametrize("size", [32, 224])
def test_resnet18_computes_torchvisions_resnet18_with_the_same_weights(size):
    """With the ImageNet stem (224) our ResNet-18 is torchvision's resnet18; with the CIFAR stem
    (32) it is torchvision's with conv1 a 3x3 stride-1 convolution and no max-pool (the usual CIFAR
    ResNet-18). Same weights (BN statistics random too): same logits, and forward_penultimate is
    torchvision's average-pooled features, forward_features its layer4 output."""
    import torchvision

    torch.manual_seed(0)
    ours = build_network("resnet18", 10, size).eval()
    with torch.no_grad():
        for m in ours.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                for t in (m.weight, m.bias, m.running_mean):
                    t.copy_(torch.randn_like(t) * 0.2 + (1.0 if t is m.weight else 0.0))
                m.running_var.copy_(torch.rand_like(m.running_var) + 0.5)
    tv = torchvision.models.resnet18(num_classes=10).eval()
    if size == 32:
        tv.conv1, tv.maxpool = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False), torch.nn.Identity()
    tv.load_state_dict({_torchvision_names(k): v for k, v in ours.state_dict().items()}, strict=True)
    x = torch.randn(2, 3, 64 if size == 224 else 32, 64 if size == 224 else 32)  # (64: the stem's strides, smaller)
    with torch.no_grad():
        h = tv.layer4(tv.layer3(tv.layer2(tv.layer1(tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))))))
        torch.testing.assert_close(ours.forward_features(x), h)
        torch.testing.assert_close(ours.forward_penultimate(x), torch.flatten(tv.avgpool(h), 1))
        torch.testing.assert_close(ours(x), tv(x))



def test_wide_blocks_are_pre_activation_with_the_projection_on_the_activated_input():
    """WRN's block (Zagoruyko & Komodakis' code): BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus the input;
    where the shape changes, the 1x1 projection takes the input after the first BN-ReLU, as there."""
    import torch.nn.functional as F

    from clip_smot.resnet.networks import WideBlock

    torch.manual_seed(0)
    for c_in, c_out, stride in ((16, 32, 1), (32, 64, 2), (32, 32, 1)):
        block = WideBlock(c_in, c_out, stride).eval()
        with torch.no_grad():
            for bn in (block.bn1, block.bn2):
                bn.running_mean.normal_()
                bn.bias.normal_()
            x = torch.randn(2, c_in, 8, 8)
            o = F.relu(block.bn1(x))
            y = block.conv2(F.relu(block.bn2(block.conv1(o))))
            shortcut = x if (c_in, stride) == (c_out, 1) else F.conv2d(o, block.shortcut.weight, stride=stride)
            torch.testing.assert_close(block(x), y + shortcut)


def test_inputs_up_to_64_pixels_keep_the_cifar_stem():
    """A ResNet for inputs of 64 pixels or less keeps their resolution (a 3x3 stride-1 stem, no
    max-pool: the usual CIFAR ResNet, docs/method.md); larger inputs get torchvision's ImageNet
    stem, a 7x7 stride-2 convolution and a max-pool (a quarter of the side)."""
    for size, kernel, side in ((32, (3, 3), 4), (64, (3, 3), 8), (65, (7, 7), 3), (96, (7, 7), 3)):
        model = build_network("resnet_tiny", 3, size).eval()
        assert model.conv1.kernel_size == kernel, size
        assert isinstance(model.maxpool, torch.nn.Identity) == (kernel == (3, 3)), size
        # the side / 8 (three stride-2 stages) for the CIFAR stem; / 32, rounded up, for ImageNet's
        with torch.no_grad():
            assert model.forward_features(torch.zeros(1, 3, size, size)).shape[-1] == side, size


def test_a_network_needs_two_classes():
    with pytest.raises(UserError, match="need at least 2 classes, got 1"):
        build_network("resnet_tiny", 1, 32)
    assert build_network("resnet_tiny", 2, 32).fc.out_features == 2


def test_wrn_and_densenet_end_in_an_8x8_map_for_32_pixels():
    """WRN (three groups, strides 1, 2, 2) and DenseNet-BC (two transitions that halve the side
    by 2x2 average pooling) end in an 8x8 map for a 32x32 input, as in their papers (shown on
    the shallowest of each, depth 10); a DenseNet transition averages each 2x2 block of its 1x1
    convolution's output."""
    import torch.nn.functional as F

    from clip_smot.resnet.networks import DenseNetBC, Transition, WideResNet

    torch.manual_seed(0)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert WideResNet(10, 2, 10).eval().forward_features(x).shape == (1, 128, 8, 8)
        assert DenseNetBC(10, 4, 10).eval().forward_features(x).shape[-2:] == (8, 8)
        t = Transition(4, 2).eval()
        t.bn.running_mean.normal_()
        y = torch.randn(1, 4, 6, 6)
        c = F.conv2d(F.relu(t.bn(y)), t.conv.weight)  # [1, 2, 6, 6]
        by_hand = (c[..., 0::2, 0::2] + c[..., 0::2, 1::2] + c[..., 1::2, 0::2] + c[..., 1::2, 1::2]) / 4
        torch.testing.assert_close(t(y), by_hand)


@pytest.mark.parametrize("wrap", ["DataParallel", "compile"])
def test_a_wrapped_model_is_saved_with_plain_parameter_names(tmp_path, wrap):
    """train saves the model inside DistributedDataParallel (its .module) or torch.compile (its
    ._orig_mod): the file holds the plain network's names, and loads as that network."""
    torch.manual_seed(0)
    model = build_network("resnet_tiny", 3, 32).eval()
    wrapped = torch.nn.DataParallel(model) if wrap == "DataParallel" else torch.compile(model)
    save_model(tmp_path / "m.safetensors", wrapped, arch="resnet_tiny", classnames=["a", "b", "c"], input_size=32,
               mean=[0.5] * 3, std=[0.25] * 3)
    from safetensors.torch import load_file

    assert set(load_file(str(tmp_path / "m.safetensors"))) == set(model.state_dict())
    loaded, _ = load_model(tmp_path / "m.safetensors")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


@pytest.mark.parametrize("changes, expected", [
    ({"format_version": "2"}, rf"model format version 2 is a newer clip-smot's \({_V}\); this clip-smot {_V} reads "
                              r"version 1: upgrade clip-smot to read it$"),
    ({"format_version": "2", "library_version": "9.0.0"}, r"model format version 2 is a newer clip-smot's \(9\.0\.0\)"),
    ({"format_version": "x"}, rf"model format version 'x' is not one clip-smot writes \(this clip-smot {_V} reads 1\)$"),
    # "01" is 1 as a number, yet no version clip-smot writes: not "a newer clip-smot's"
    ({"format_version": "01"}, rf"model format version '01' is not one clip-smot writes \(this clip-smot {_V} "
                               r"reads 1\)$"),
    # a version or library_version that is no short name is cut, or left out: 39 x's after the quote
    ({"format_version": "x" * 50}, rf"model format version '{'x' * 39} is not one clip-smot writes \(this clip-smot "),
    ({"format_version": "2", "library_version": "9" * 41}, rf"model format version 2 is a newer clip-smot's; this "
                                                           rf"clip-smot {_V} reads version 1: upgrade clip-smot"),
    ({"format_version": "2", "library_version": ""}, r"model format version 2 is a newer clip-smot's; this clip-smot "),
    ({"classnames": '["a", "b", "c", "d"]'}, r"inconsistent metadata \(num_classes 3, classnames: 4 entries"),
    ({"mean": "[0.1, 0.2]"}, r"mean and std: three finite numbers each"),
    ({"std": "[0.5, 0.5, 0.5, 0.5]"}, r"mean and std: three finite numbers each"),
    # a class named twice: fit's --cam-model looks its data's classes up by name, and took the last
    # logit of the name (data classes cat, dog: the CAM of cat was logit 2's), without a word
    ({"classnames": '["a", "b", "a"]'}, r"inconsistent metadata \(class 'a' is named twice in classnames\)$"),
])
def test_model_file_metadata_that_does_not_fit_together_is_one_line(tmp_path, changes, expected):
    """Four class names for three logits would name a prediction by the wrong class; two means
    would fail in the middle of eval's first batch, a broadcasting traceback."""
    with pytest.raises(UserError, match=expected):
        load_model(_edited(tmp_path, "edited.safetensors", **changes))


def test_the_smallest_and_largest_input_sizes_load(tmp_path):
    """input_sizes 8 and 1024, the ends of a model file's range (docs/resnet.md: 8 to 1024), load."""
    for size in (8, 1024):
        path = tmp_path / f"m{size}.safetensors"
        save_model(path, build_network("resnet_tiny", 3, size), arch="resnet_tiny", classnames=["a", "b", "c"],
                   input_size=size, mean=[0.5] * 3, std=[0.25] * 3)
        assert load_model(path)[1]["input_size"] == size


def test_a_model_file_with_an_extra_tensor_names_it(tmp_path):
    tensors = {**build_network("resnet_tiny", 3, 32).state_dict(), "extra.weight": torch.zeros(2)}
    with pytest.raises(UserError, match=r"weights do not fit a resnet_tiny of 3 classes \(unexpected extra.weight\)$"):
        load_model(_edited(tmp_path, "extra.safetensors", tensors=tensors))


@pytest.mark.parametrize("dtype, stored", [(torch.complex64, "C64"), (torch.bool, "BOOL"), (torch.int32, "I32")])
def test_a_weight_not_stored_as_real_floats_is_one_line(tmp_path, dtype, stored):
    """A complex fc.weight was copied in with torch's two-line warning and its imaginary parts
    dropped (exit 0); a bool one failed in load_state_dict. Each, and integers (which save_model
    never writes), is refused from the header."""
    from safetensors.torch import load_file

    _save(tmp_path / "m.safetensors")
    tensors = load_file(str(tmp_path / "m.safetensors"))
    tensors["fc.weight"] = tensors["fc.weight"].to(dtype)
    error = (rf"weights do not fit a resnet_tiny \(fc.weight is stored as {stored}, not as real floating-point numbers\)$"
             if safetensors_reads(dtype, tmp_path) else "not a safetensors file")  # (C64 before safetensors 0.7)
    with pytest.raises(UserError, match=rf"^--checkpoint .*edited.safetensors: {error}"):
        load_model(_edited(tmp_path, "edited.safetensors", tensors=tensors))
    for half in (torch.float16, torch.bfloat16, torch.float64):  # (real numbers of another width: they load)
        tensors["fc.weight"] = load_file(str(tmp_path / "m.safetensors"))["fc.weight"].to(half)
        load_model(_edited(tmp_path, "edited.safetensors", tensors=tensors))


def test_a_batchnorm_count_stored_as_complex_is_one_line_and_real_counts_load(tmp_path):
    """A BatchNorm's num_batches_tracked (an integer count) stored as complex was copied in with
    torch's warning and its imaginary part dropped: refused from the header; stored as another
    integer or as a float, it is a count still, and loads (torch casts it)."""
    from safetensors.torch import load_file

    _save(tmp_path / "m.safetensors")
    tensors = load_file(str(tmp_path / "m.safetensors"))
    count = tensors["bn1.num_batches_tracked"]
    tensors["bn1.num_batches_tracked"] = count.to(torch.complex64)
    error = (r"weights do not fit a resnet_tiny \(bn1.num_batches_tracked is stored as C64, not as real numbers\)$"
             if safetensors_reads(torch.complex64, tmp_path) else "not a safetensors file")  # (C64 before 0.7)
    with pytest.raises(UserError, match=rf"^--checkpoint .*edited.safetensors: {error}"):
        load_model(_edited(tmp_path, "edited.safetensors", tensors=tensors))
    for real in (torch.int32, torch.float32):
        tensors["bn1.num_batches_tracked"] = count.to(real)
        load_model(_edited(tmp_path, "edited.safetensors", tensors=tensors))


def test_the_overflow_probe_is_normalised_grey_black_white_and_checkered_images_of_at_most_64_pixels(tmp_path,
                                                                                                    monkeypatch):
    """load_model's overflow check runs four images through the network, normalised by the file's
    mean and std: mid-grey (0.5 everywhere), black, white and a checkerboard of 0 and 1 (a grey
    image alone is near 0 once normalised, where a huge first-layer weight stays finite); at the
    file's input size but at most 64 pixels (the network is fully convolutional: a 1024-pixel
    model costs one 64-pixel forward)."""
    from clip_smot.resnet import networks

    seen = []
    real_build = networks.build_network

    def build(*a):
        model = real_build(*a)
        model.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
        return model

    monkeypatch.setattr(networks, "build_network", build)
    mean, std = [0.25, 0.5, 0.75], [0.5, 0.25, 0.125]
    by_hand = {0.5: [0.5, 0.0, -2.0], 0.0: [-0.5, -2.0, -6.0], 1.0: [1.5, 2.0, 2.0]}  # (v - mean) / std
    for size, side in ((16, 16), (1024, 64)):
        seen.clear()
        path = tmp_path / f"m{size}.safetensors"
        save_model(path, real_build("resnet_tiny", 3, size), arch="resnet_tiny", classnames=["a", "b", "c"],
                   input_size=size, mean=mean, std=std)
        load_model(path)
        assert len(seen) == 1 and seen[0].shape == (4, 3, side, side), size
        for i, v in enumerate((0.5, 0.0, 1.0)):
            torch.testing.assert_close(seen[0][i], torch.tensor(by_hand[v]).view(3, 1, 1).expand(3, side, side))
        for y, x in ((0, 0), (0, 1), (1, 0), (side - 1, side - 2)):  # (a pixel is 1 where y + x is odd)
            torch.testing.assert_close(seen[0][3, :, y, x], torch.tensor(by_hand[float((y + x) % 2)]))


def test_a_channels_last_model_is_saved_and_loads(tmp_path):
    """train on CUDA converts the network to channels_last: its convolution weights are then not
    contiguous tensors, which safetensors refuses to write; the file holds them contiguous."""
    torch.manual_seed(0)
    model = build_network("resnet_tiny", 3, 32).eval()
    cl = build_network("resnet_tiny", 3, 32).eval()
    cl.load_state_dict(model.state_dict())
    cl = cl.to(memory_format=torch.channels_last)
    assert not cl.conv1.weight.is_contiguous()
    save_model(tmp_path / "m.safetensors", cl, arch="resnet_tiny", classnames=["a", "b", "c"], input_size=32,
               mean=[0.5] * 3, std=[0.25] * 3)
    loaded, _ = load_model(tmp_path / "m.safetensors")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_model_file_metadata_at_the_ends_of_its_ranges_loads(tmp_path):
    """Two classes, each mean 0 or 1 (images in [0, 1]) and each std exactly the floor 1e-3 are
    all within a model file's ranges (docs: 2 or more classes, means in [0, 1], stds at least 1e-3)."""
    path = tmp_path / "m.safetensors"
    save_model(path, build_network("resnet_tiny", 2, 32), arch="resnet_tiny", classnames=["a", "b"], input_size=32,
               mean=[0.0, 1.0, 0.5], std=[1e-3] * 3)
    meta = load_model(path)[1]
    assert meta["num_classes"] == 2 and meta["mean"] == [0.0, 1.0, 0.5] and meta["std"] == [1e-3] * 3


@pytest.mark.parametrize("changes, expected", [
    ({"input_size": "7"}, r"input_size 7 in its metadata is outside \[8, 1024\]"),
    ({"mean": "[1.5, 0.5, 0.5]"}, r"each mean in \[0, 1\]"),
    ({"mean": "[-0.25, 0.5, 0.5]"}, r"each mean in \[0, 1\]"),
    # an infinite std normalises every image to zeros: finite logits, a network that sees nothing
    ({"std": "[Infinity, 0.25, 0.25]"}, "mean and std: three finite numbers each"),
])
def test_model_file_metadata_just_outside_its_ranges_is_one_line(tmp_path, changes, expected):
    with pytest.raises(UserError, match=expected):
        load_model(_edited(tmp_path, "edited.safetensors", **changes))


def test_a_safetensors_file_without_metadata_is_not_a_model_file(tmp_path):
    save_file({"w": torch.zeros(2)}, str(tmp_path / "bare.safetensors"))  # (no __metadata__ at all)
    with pytest.raises(UserError, match=r"^--checkpoint \S+bare.safetensors: a safetensors file without clip-smot "
                                        r"metadata, not a model file of clip-smot train; `clip-smot train` writes one"):
        load_model(tmp_path / "bare.safetensors")


def test_a_model_file_without_its_optional_metadata_loads(tmp_path):
    """dataset, method, stage and config are optional: absent, they read as "" and {}."""
    from safetensors.torch import load_file, safe_open

    _save(tmp_path / "m.safetensors")
    with safe_open(str(tmp_path / "m.safetensors"), "pt") as f:
        meta = {k: v for k, v in f.metadata().items() if k not in ("dataset", "method", "stage", "config", "sha256")}
    save_file(load_file(str(tmp_path / "m.safetensors")), str(tmp_path / "plain.safetensors"), metadata=meta)
    got = load_model(tmp_path / "plain.safetensors")[1]
    assert (got["dataset"], got["method"], got["stage"], got["config"]) == ("", "", "", {})
    got = load_model(tmp_path / "m.safetensors")[1]  # (what _save wrote)
    assert (got["dataset"], got["method"], got["stage"], got["config"]) == ("x", "ce", "base", {"lr": 0.1})


def test_a_model_file_changed_after_it_was_written_is_refused(tmp_path):
    """safetensors keeps no checksum: a flipped bit of a weight loaded as another network, silently
    (any finite value passes every other check). The line names the weight that does not match
    the file's sha256; an edit of the metadata (a class renamed, keeping the sha256) is named as
    the metadata's. Without the key (an older clip-smot's file) it loads."""
    import hashlib

    from safetensors.torch import load_file, safe_open

    _save(tmp_path / "m.safetensors")
    raw = (tmp_path / "m.safetensors").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    at = 8 + n + header["fc.weight"]["data_offsets"][0] + 1  # (a low byte of fc.weight[0, 0]: a little off)
    (tmp_path / "d.safetensors").write_bytes(raw[:at] + bytes([raw[at] ^ 0x01]) + raw[at + 1:])
    assert not torch.equal(load_file(str(tmp_path / "d.safetensors"))["fc.weight"],
                           load_file(str(tmp_path / "m.safetensors"))["fc.weight"])
    with pytest.raises(UserError, match=rf"^--checkpoint {tmp_path / 'd.safetensors'}: fc.weight does not match its "
                                        r"sha256 \(changed after it was written: a damaged copy\?\); train it again, "
                                        "or remove the key sha256 from a file edited on purpose$"):
        load_model(tmp_path / "d.safetensors")
    with safe_open(str(tmp_path / "m.safetensors"), "pt") as f:
        meta = dict(f.metadata())
    # the key as documented: per tensor, SHA-256 of the other metadata as sorted JSON, "NAME DTYPE [SHAPE]", its bytes
    tensors, sha256 = load_file(str(tmp_path / "m.safetensors")), json.loads(meta["sha256"])
    rest = json.dumps({k: v for k, v in meta.items() if k != "sha256"}, sort_keys=True)
    assert sha256.keys() == tensors.keys()
    for name, t in tensors.items():
        data = t.reshape(-1).view(torch.uint8).numpy().tobytes()
        assert sha256[name] == hashlib.sha256(f"{rest}{name} {t.dtype} {list(t.shape)}".encode() + data).hexdigest()
    renamed = {**meta, "classnames": meta["classnames"].replace('"a"', '"z"')}  # (["z", "b", "c"])
    assert renamed["classnames"] != meta["classnames"]
    save_file(tensors, str(tmp_path / "r.safetensors"), metadata=renamed)
    with pytest.raises(UserError, match=r": its metadata or tensors do not match its sha256 \("):
        load_model(tmp_path / "r.safetensors")
    save_file(tensors, str(tmp_path / "r.safetensors"), metadata={k: v for k, v in renamed.items() if k != "sha256"})
    assert load_model(tmp_path / "r.safetensors")[1]["classnames"] == json.loads(renamed["classnames"])


def test_batchnorm_variances_of_zero_and_below_one_load(tmp_path):
    """A channel that was constant in training has running_var 0 (its sqrt(var + eps) is finite),
    and trained variances are below 1: only negative ones are refused."""
    torch.manual_seed(0)
    model = build_network("resnet_tiny", 3, 32)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.fill_(0.5)
        model.layers[3][0].bn2.running_var[5] = 0.0
    save_model(tmp_path / "m.safetensors", model, arch="resnet_tiny", classnames=["a", "b", "c"], input_size=32,
               mean=[0.5] * 3, std=[0.25] * 3)
    loaded, _ = load_model(tmp_path / "m.safetensors")
    assert loaded.layers[3][0].bn2.running_var[5] == 0.0 and loaded.bn1.running_var[0] == 0.5


def test_check_finite_weights_takes_a_batchnorm_without_running_statistics():
    from clip_smot.resnet.networks import check_finite_weights

    check_finite_weights(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4, track_running_stats=False)),
                         "x")


def test_the_same_config_in_another_order_gives_the_same_file(tmp_path):
    """The config is written with sorted keys: the same model and settings give the same bytes."""
    model = build_network("resnet_tiny", 3, 32)
    for name, config in (("a", {"lr": 0.1, "epochs": 2}), ("b", {"epochs": 2, "lr": 0.1})):
        save_model(tmp_path / f"{name}.safetensors", model, arch="resnet_tiny", classnames=["a", "b", "c"],
                   input_size=32, mean=[0.5] * 3, std=[0.25] * 3, config=config)
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()


def test_wrn_and_densenet_parameter_counts_follow_their_papers():
    """Parameter counts written out from the papers' layer lists (a BatchNorm: 2 per channel):
    WRN-40-2 (three groups of 6 pre-activation blocks, 16 -> 32 -> 64 -> 128 channels, a 1x1
    projection in each group's first block) and DenseNet-BC-100-12 (three blocks of 16 layers,
    BN-1x1 conv to 48-BN-3x3 conv to 12, transitions halving the channels)."""
    k = 10
    wrn, c_in = 3 * 16 * 9, 16
    for c in (32, 64, 128):
        for j in range(6):
            ci = c_in if j == 0 else c
            wrn += 2 * ci + ci * c * 9 + 2 * c + c * c * 9 + (ci * c if j == 0 else 0)
        c_in = c
    wrn += 2 * 128 + 128 * k + k
    dense, c = 3 * 24 * 9, 24
    for i in range(3):
        for _ in range(16):
            dense += 2 * c + c * 48 + 2 * 48 + 48 * 12 * 9
            c += 12
        if i < 2:
            dense += 2 * c + c * (c // 2)
            c //= 2
    assert c == 342
    dense += 2 * c + c * k + k
    for arch, expected in (("wrn40_2", wrn), ("densenet_bc", dense)):
        assert sum(p.numel() for p in build_network(arch, k, 32).parameters()) == expected, arch


def test_wrn_and_densenet_stems_are_a_3x3_convolution_that_keeps_the_resolution():
    """Both CIFAR networks begin with a 3x3, stride-1, padding-1 convolution (no bias) of the
    image: their feature maps are that convolution's output carried through the rest."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        wrn = build_network("wrn40_2", 10, 32).eval()
        assert wrn.conv1.weight.shape == (16, 3, 3, 3) and wrn.conv1.bias is None
        torch.testing.assert_close(wrn.forward_features(x),
                                   F.relu(wrn.bn(wrn.groups(F.conv2d(x, wrn.conv1.weight, padding=1)))))
        dense = build_network("densenet_bc", 10, 32).eval()
        assert dense.conv1.weight.shape == (24, 3, 3, 3) and dense.conv1.bias is None
        torch.testing.assert_close(dense.forward_features(x),
                                   F.relu(dense.bn(dense.blocks(F.conv2d(x, dense.conv1.weight, padding=1)))))


def test_a_basic_block_projects_its_shortcut_when_the_stride_or_the_width_changes():
    """He et al.'s option B: a 1x1 convolution and BN on the shortcut wherever the block's
    output differs from its input in size (stride 2) or in channels, either alone."""
    from clip_smot.resnet.networks import BasicBlock

    torch.manual_seed(0)
    for c_in, c_out, stride in ((16, 16, 2), (16, 32, 1), (16, 32, 2)):
        block = BasicBlock(c_in, c_out, stride).eval()
        assert len(block.shortcut) == 2 and block.shortcut[0].stride == (stride, stride)
        with torch.no_grad():
            assert block(torch.randn(1, c_in, 8, 8)).shape == (1, c_out, 8 // stride, 8 // stride)
    assert len(BasicBlock(16, 16, 1).shortcut) == 0


def test_resnet_tiny_is_one_basic_block_per_stage_of_16_to_128_channels():
    """Its parameters written out: a 3x3 stem to 16 channels and BN, one basic block per stage
    (16, 32, 64, 128; a 1x1 projection and BN where the width changes), the linear head."""
    k = 3
    expected, c_in = 3 * 16 * 9 + 2 * 16, 16
    for c in (16, 32, 64, 128):
        expected += c_in * c * 9 + 2 * c + c * c * 9 + 2 * c + (c_in * c + 2 * c if c != c_in else 0)
        c_in = c
    expected += 128 * k + k
    model = build_network("resnet_tiny", k, 32)
    assert sum(p.numel() for p in model.parameters()) == expected
    with torch.no_grad():  # the stages' strides 1, 2, 2, 2: sides 32, 16, 8, 4
        h = stem = model.maxpool(torch.relu(model.bn1(model.conv1(torch.zeros(1, 3, 32, 32)))))
        sides = []
        for stage in model.layers:
            h = stage(h)
            sides.append(h.shape[-1])
    assert stem.shape[-1] == 32 and sides == [32, 16, 8, 4]


def test_wrn_groups_have_strides_1_2_2():
    torch.manual_seed(0)
    wrn = build_network("wrn40_2", 10, 32).eval()
    h, sides = wrn.conv1(torch.zeros(1, 3, 32, 32)), []
    with torch.no_grad():
        for group in wrn.groups:
            h = group(h)
            sides.append(h.shape[-1])
    assert sides == [32, 16, 8]


def test_a_wide_block_of_stride_2_projects_its_shortcut_at_the_same_width():
    from clip_smot.resnet.networks import WideBlock

    block = WideBlock(16, 16, 2).eval()
    assert block.shortcut is not None and block.shortcut.stride == (2, 2)
    with torch.no_grad():
        assert block(torch.randn(1, 16, 8, 8)).shape == (1, 16, 4, 4)


def test_the_networks_refuse_a_stem_or_depth_they_do_not_have():
    """The network classes called directly (NETWORKS passes only valid values): a stem other than
    cifar or imagenet, a WRN or DenseNet-BC depth that is not 6n + 4, an unknown arch, one class."""
    from clip_smot.resnet.networks import DenseNetBC, ResNet, WideResNet

    with pytest.raises(ValueError, match=r"^stem must be 'cifar' or 'imagenet', got 'svhn'$"):
        ResNet((1, 1, 1, 1), (16, 32, 64, 128), 3, stem="svhn")
    with pytest.raises(ValueError, match=r"^WRN depth must be 6n \+ 4, got 41$"):
        WideResNet(41, 2, 3)
    with pytest.raises(ValueError, match=r"^DenseNet-BC depth must be 6n \+ 4, got 99$"):
        DenseNetBC(99, 12, 3)
    with pytest.raises(UserError, match=r"^--arch resnet50: unknown architecture \(choose from resnet18, wrn40_2, "
                                        r"densenet_bc, resnet_tiny\)$"):
        build_network("resnet50", 3)
    with pytest.raises(UserError, match=r"^need at least 2 classes, got 1$"):
        build_network("resnet_tiny", 1)


@pytest.mark.parametrize("arch", ["resnet18", "wrn40_2", "densenet_bc"])
def test_convolutions_are_he_initialised_over_their_fan_out(arch):
    """Each convolution's weights are drawn from N(0, 2 / fan_out), fan_out = out_channels * kh * kw
    (He et al.'s init for ReLU networks in fan-out mode, what torchvision's ResNet and the WRN and
    DenseNet reference codes use): the sample std of every convolution of 1000 weights or more is
    within 10% of sqrt(2 / fan_out) (fan-in mode gives 0.272 instead of 0.059 for ResNet-18's
    3 -> 64 stem, and sqrt(2) times 0.059 for a stage's first 3x3 convolution)."""
    import math

    torch.manual_seed(0)
    model = build_network(arch, 10, 32)
    checked = 0
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Conv2d) and m.weight.numel() >= 1000:
            c_out, _, kh, kw = m.weight.shape
            expected = math.sqrt(2.0 / (c_out * kh * kw))
            assert abs(m.weight.std().item() / expected - 1) < 0.1, (name, m.weight.std().item(), expected)
            assert abs(m.weight.mean().item()) < 0.1 * expected, name
            checked += 1
    assert checked >= 10
