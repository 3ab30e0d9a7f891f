import math
import re

import pytest
import torch
import torch.nn as nn
import torchvision

from clip_smot.cam import CAMProvider, normalize_cam


def _one_channel_resnet(channel: int, num_classes: int = 3) -> nn.Module:
    """A torchvision ResNet-18 whose class 1 reads only one channel of layer4."""
    torch.manual_seed(0)
    m = torchvision.models.resnet18(num_classes=num_classes)
    with torch.no_grad():
        m.fc.weight.zero_()
        m.fc.weight[1, channel] = 1.0
    return m.eval()


def test_cam_lights_up_where_the_channel_is_active():
    model = _one_channel_resnet(channel=7)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        feats = model.layer4(model.layer3(model.layer2(model.layer1(
            model.maxpool(model.relu(model.bn1(model.conv1(x))))))))  # [2, 512, 2, 2]
    provider = CAMProvider(model, mean=(0, 0, 0), std=(1, 1, 1))
    cam = provider(x, torch.tensor([1, 1]))
    assert cam.shape == (2, 64, 64)
    assert cam.min() >= 0 and cam.max() <= 255
    for i in range(2):
        act = feats[i, 7]  # [2, 2]
        if act.max() > act.min():
            # the brightest CAM quadrant is where channel 7 is most active
            cy, cx = divmod(int(act.argmax()), 2)
            quad = cam[i, cy * 32:(cy + 1) * 32, cx * 32:(cx + 1) * 32]
            assert quad.mean() == max(
                cam[i, a * 32:(a + 1) * 32, b * 32:(b + 1) * 32].mean() for a in range(2) for b in range(2)
            )
            assert cam[i].max() == 255
    # by hand: relu of the channel map, bilinear upsampling, min-max to [0, 255]
    manual = nn.functional.interpolate(feats[:, 7:8].relu(), size=(64, 64), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(cam, normalize_cam(manual))


def test_cam_uses_top1_when_labels_do_not_match():
    """labels_match=False: the CAM is for the network's own top-1 class, as its forward pass
    (average pooling, fc) ranks them, whatever labels are passed. At 96 px the layer4 map is
    3 x 3, so the CAMs of different classes differ (at 32 px it is 1 x 1: every CAM is all zero
    and the comparison would hold for any class)."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.rand(4, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    with torch.no_grad():
        logits = model((x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))
    top1 = logits.argmax(-1)  # (max pooling would rank another class first for some of these images)
    wrong = (top1 + torch.tensor([1, 4, 6, 9])) % 10  # never the top-1
    by_top1 = CAMProvider(model, mean, std)(x, top1)  # labels_match: the CAM of the class given
    assert (by_top1.flatten(1).amax(1) == 255).all()  # real maps, not all zero
    by_wrong = CAMProvider(model, mean, std)(x, wrong)
    assert ((by_wrong - by_top1).abs().flatten(1).amax(1) > 1).all()  # the class matters
    provider = CAMProvider(model, mean, std, labels_match=False)
    torch.testing.assert_close(provider(x, wrong), by_top1)
    torch.testing.assert_close(provider(x), by_top1)


def test_a_constant_map_at_the_networks_resolution_masks_nothing():
    """At 8-pixel inputs a ResNet's last map is 1 x 1: constant, and so a CAM that masks nothing
    (docs/method.md §1). Upsampled bilinearly it varied by about one ulp, which min-max scaling
    stretched to 0 .. 255: 144 of 256 digit CAMs masked 13% of their pixels by rounding alone."""
    model = _one_channel_resnet(channel=7)
    with torch.no_grad():
        model.fc.weight[1] = 1.0  # (every channel: a positive map)
    x = torch.rand(6, 3, 29, 31)
    inp = torch.nn.functional.interpolate(x, size=(8, 8), mode="bilinear", align_corners=False)
    assert model.layer4(model.layer3(model.layer2(model.layer1(model.maxpool(model.relu(model.bn1(model.conv1(
        inp)))))))).sum(1).min() > 0  # [6, 1, 1]: positive, constant maps
    cam = CAMProvider(model, (0, 0, 0), (1, 1, 1), input_size=8)(x, torch.full((6,), 1))
    assert cam.shape == (6, 29, 31) and cam.abs().sum() == 0
    varied = CAMProvider(model, (0, 0, 0), (1, 1, 1), input_size=64)(x, torch.full((6,), 1))  # [2 x 2] maps
    assert (varied.flatten(1).amax(1) == 255).sum() >= 1


def test_normalize_cam():
    cam = torch.tensor([[[1.0, 3.0], [2.0, 5.0]], [[4.0, 4.0], [4.0, 4.0]]])
    out = normalize_cam(cam)
    torch.testing.assert_close(out[0], torch.tensor([[0.0, 127.5], [63.75, 255.0]]))
    assert out[1].abs().sum() == 0
    # min_span: a map flat up to resampling noise (the fit loop's cropped uint8 CAMs) stays zero
    noisy = torch.tensor([[[100.0, 100.0 + 1e-5], [100.0, 100.0]], [[0.0, 2.0], [1.0, 0.0]]])
    out = normalize_cam(noisy, min_span=1.0)
    assert out[0].abs().sum() == 0
    torch.testing.assert_close(out[1], torch.tensor([[0.0, 255.0], [127.5, 0.0]]))
    assert normalize_cam(noisy)[0].max() == 255  # without it, the noise is stretched to 0 .. 255
    # "no more than min_span": a span of exactly min_span is flat too; just above it, scaled
    edge = torch.tensor([[[0.0, 1.0], [0.5, 0.0]]])
    assert normalize_cam(edge, min_span=1.0).abs().sum() == 0
    torch.testing.assert_close(normalize_cam(edge, min_span=0.999), torch.tensor([[[0.0, 255.0], [127.5, 0.0]]]))


def test_normalize_cam_scales_a_map_of_tiny_values_to_0_255_too():
    """A map spanning 2e-14 (the ReLU of a class's evidence that is all but zero) was divided by a
    floor of 1e-12 instead of its span: 0 .. 5.1, not 0 .. 255; a constant map stays zero."""
    cam = torch.tensor([[[0.0, 1e-14], [2e-14, 0.0]], [[3e-14, 3e-14], [3e-14, 3e-14]]])
    out = normalize_cam(cam)
    torch.testing.assert_close(out[0], torch.tensor([[0.0, 127.5], [255.0, 0.0]]))
    assert out[1].abs().sum() == 0
    assert normalize_cam(cam, min_span=-1.0)[1].abs().sum() == 0  # (no 0 / 0 for a span below min_span)


def test_normalize_cam_refuses_a_single_map_and_keeps_maps_of_no_pixel():
    """A map [H, W] was read as a batch of rows, each scaled to 0 .. 255 on its own ([[0, 1], [2, 4]] gave
    [[0, 255], [0, 255]], not [[0, 63.75], [127.5, 255]]); maps of no pixel stopped in amin ("Expected
    reduction dim 1 to have non-zero size")."""
    with pytest.raises(ValueError, match=r"cam must be maps \[B, H, W\] \(a batch\), got shape \[2, 2\]"):
        normalize_cam(torch.tensor([[0.0, 1.0], [2.0, 4.0]]))
    torch.testing.assert_close(normalize_cam(torch.tensor([[[0.0, 1.0], [2.0, 4.0]]])),
                               torch.tensor([[[0.0, 63.75], [127.5, 255.0]]]))
    for shape in ((2, 0, 3), (0, 0, 0), (0, 2, 2)):
        assert normalize_cam(torch.zeros(shape, dtype=torch.float64)).shape == shape
    assert normalize_cam(torch.zeros(2, 0, 3, dtype=torch.uint8)).dtype == torch.float32


def test_cam_normalises_and_resizes_the_input_for_the_network():
    """mean/std and input_size (the fit's CAM networks): normalise, resize to the network's size,
    and upsample the CAM back to the image's size."""
    model = _one_channel_resnet(channel=5)
    x = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    cam = CAMProvider(model, mean, std, input_size=64)(x, torch.tensor([1, 1]))
    # by hand: (x - mean) / std, bilinear to 64 x 64, layer4 (2 x 2 here), channel 5, relu, back to 48 x 48
    inp = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    inp = nn.functional.interpolate(inp, size=(64, 64), mode="bilinear", align_corners=False)
    with torch.no_grad():
        feats = model.layer4(model.layer3(model.layer2(model.layer1(
            model.maxpool(model.relu(model.bn1(model.conv1(inp))))))))  # [2, 512, 2, 2]
    manual = nn.functional.interpolate(feats[:, 5:6].relu(), size=(48, 48), mode="bilinear", align_corners=False)[:, 0]
    assert cam.shape == (2, 48, 48) and (manual.flatten(1).amax(1) > manual.flatten(1).amin(1)).all()
    torch.testing.assert_close(cam, normalize_cam(manual))


def test_cam_equals_torchcams_up_to_the_documented_relu_and_scaling():
    """torchcam's CAM (an independent implementation: hooks on layer4 and fc) of a torchvision
    ResNet-18 with random weights, for given classes, is Zhou et al.'s map at the feature
    resolution, without a ReLU. With the ReLU of SMOT's CAM, upsampled bilinearly to the image
    and min-max scaled to [0, 255] (as ours is documented to be), it equals ours."""
    from torchcam.methods import CAM

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.rand(4, 3, 96, 80)  # images in [0, 1]; feature map [3, 3]
    y = torch.tensor([0, 3, 7, 9])
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    ours = CAMProvider(model, mean=mean, std=std)(x, y)  # [4, 96, 80]

    extractor = CAM(model, target_layer="layer4", fc_layer="fc", input_shape=(3, 96, 80))
    with torch.no_grad():
        scores = model((x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))
    (theirs,) = extractor(class_idx=y.tolist(), scores=scores, normalized=False)  # [4, 3, 3]
    extractor.remove_hooks()
    assert theirs.shape == (4, 3, 3) and (theirs < 0).any() and (theirs > 0).any()  # the ReLU matters
    up = torch.nn.functional.interpolate(theirs.relu()[:, None], size=(96, 80), mode="bilinear",
                                         align_corners=False)[:, 0]
    lo, hi = up.amin(dim=(1, 2), keepdim=True), up.amax(dim=(1, 2), keepdim=True)
    torch.testing.assert_close(ours, (up - lo) / (hi - lo) * 255, atol=1e-3, rtol=0)


def test_a_cam_model_whose_keys_declare_a_huge_network_is_refused_before_building(tmp_path):
    """A 3 KB --cam-model whose keys named a block 199,999 of layer1 built a 200,000-block
    ResNet (5 GB); a head of 100M classes repeated from one value through a zero stride would
    be 200 GB. Both are refused at once, from the keys and the tensors' own sizes."""
    import time

    from torchvision.models.resnet import BasicBlock, ResNet

    from clip_smot.clip.cam_network import load_cam_network
    from clip_smot.common.errors import UserError

    small = {"conv1.weight": torch.zeros(1), "fc.weight": torch.zeros(2, 1), "fc.bias": torch.zeros(2),
             **{f"layer{i}.0.conv1.weight": torch.zeros(1) for i in (2, 3, 4)},
             "layer1.199999.conv1.weight": torch.zeros(1)}
    torch.save(small, tmp_path / "keys.pth")
    assert (tmp_path / "keys.pth").stat().st_size < 4096
    state = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10).state_dict()
    state["fc.weight"], state["fc.bias"] = torch.zeros(1, 1).expand(10**8, 512), torch.zeros(1).expand(10**8)
    torch.save(state, tmp_path / "stride0.pth")
    state = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10).state_dict()
    state["layer2.0.conv1.weight"] = torch.zeros(128, 64, 3, 1)
    torch.save(state, tmp_path / "shape.pth")
    shared = torch.zeros(1)  # (every block's key names one stored tensor: 20,000 keys, a small file)
    deep = {**{k: v for k, v in small.items() if not k.startswith("layer1.")},
            **{f"layer1.{b}.conv1.weight": shared for b in range(20_000)}}
    torch.save(deep, tmp_path / "deep.pth")
    for name, expected in (("keys", "layer1 names blocks up to 199999 but holds 1"),
                           ("deep", r"layer1 holds 20000 blocks, more than any ResNet \(ResNet-152: 36; at most 64\)"),
                           ("stride0", "fc.weight declares more values than the file holds"),
                           ("shape", r"layer2.0.conv1.weight has shape \[128, 64, 3, 1\], not \[128, 64, 3, 3\]")):
        t0 = time.perf_counter()
        with pytest.raises(UserError, match=rf"^--cam-model {tmp_path / name}.pth: .*{expected}"):
            load_cam_network(str(tmp_path / f"{name}.pth"))
        assert time.perf_counter() - t0 < 10


def _deflated(src, dst):
    """``src`` (a torch.save zip) rewritten with its entries deflated, as torch.load still reads it."""
    import zipfile

    with zipfile.ZipFile(src) as z, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as out:
        for info in z.infolist():
            out.writestr(info.filename, z.read(info.filename))


def test_a_torch_file_that_unpacks_to_far_more_than_its_size_is_not_loaded(tmp_path, monkeypatch):
    """A 2 MB checkpoint whose deflated 2 GB of zeros torch.load unpacked into memory (export
    succeeded at 2.7 GB; 20 MB would be killed). Every torch file a user hands in (a checkpoint
    to resume or export, --cam-model, a --pretrained .pt) is measured from its zip directory
    first. The slack is made 0 here, so one megabyte of zeros stands for gigabytes."""
    from clip_smot.clip.cam_network import load_cam_network
    from clip_smot.clip.model import load_clip
    from clip_smot.common import file_kinds
    from clip_smot.common import run_folder as rf
    from clip_smot.common.errors import UserError

    monkeypatch.setattr(file_kinds, "ARCHIVE_SLACK", 0)
    rf.save_checkpoint(tmp_path / "plain.pt", "clip-smot-fit-checkpoint", {"junk": torch.zeros(1 << 18)})
    assert file_kinds.archive_refusal(tmp_path / "plain.pt") is None  # (torch.save stores: never more than its size)
    assert rf.read_checkpoint(tmp_path / "plain.pt", "clip-smot-fit-checkpoint")["junk"].numel() == 1 << 18
    _deflated(tmp_path / "plain.pt", tmp_path / "bomb.pt")
    assert torch.load(tmp_path / "bomb.pt", weights_only=True)["junk"].numel() == 1 << 18  # (loads, in full)
    size = (tmp_path / "bomb.pt").stat().st_size
    why = rf"its entries unpack to \d+ bytes, \d+ times the file's {size} \(torch.save stores tensors uncompressed\)"
    with pytest.raises(rf.CheckpointError, match=rf"^not a readable checkpoint \({why}; not loaded\)$"):
        rf.read_checkpoint(tmp_path / "bomb.pt", "clip-smot-fit-checkpoint")
    # (a state dict: a fit checkpoint is named as one where weights are wanted, before it is measured)
    torch.save({"junk": torch.zeros(1 << 18)}, tmp_path / "weights.pt")
    _deflated(tmp_path / "weights.pt", tmp_path / "bomb.pt")
    why = why.replace(str(size), str((tmp_path / "bomb.pt").stat().st_size))
    with pytest.raises(UserError, match=rf"^--cam-model {tmp_path / 'bomb.pt'}: {why}; not loaded$"):
        load_cam_network(str(tmp_path / "bomb.pt"))
    with pytest.raises(UserError, match=rf"^--pretrained {tmp_path / 'bomb.pt'}: {why}; not loaded$"):
        load_clip("RN50", str(tmp_path / "bomb.pt"), device="cpu")


@pytest.mark.parametrize("block, wrap", [("Bottleneck", "plain"), ("BasicBlock", "state_dict"),
                                         ("BasicBlock", "model"), ("BasicBlock", "old"),
                                         ("BasicBlock", "safetensors"), ("BasicBlock", "from_gpu")])
def test_a_torchvision_resnet_state_dict_loads_as_it_was_saved(tmp_path, block, wrap):
    """--cam-model FILE.pth: a torchvision ResNet of Bottleneck blocks (as ResNet-50's) or of
    BasicBlocks, saved plain, in {"state_dict": ...}, in {"model": ...} with
    DistributedDataParallel's "module." prefix, without the BatchNorms' num_batches_tracked
    (torchvision's own ImageNet files predate it), or as a .safetensors file of timm's metadata
    (format "pt", as the Hugging Face hub keeps timm's resnet18.tv_in1k), or saved on a GPU machine
    (its tensors' location "cuda:0", read on a machine without one). The network rebuilt
    computes what the saved one does, and is fed as torchvision's ImageNet networks are (its mean
    and std, 224 pixels); 7 classes are not ImageNet's."""
    import torchvision.models.resnet as tv

    from clip_smot.clip.cam_network import load_cam_network

    torch.manual_seed(0)
    saved = tv.ResNet(getattr(tv, block), [1, 1, 1, 1], num_classes=7).eval()
    state = saved.state_dict()
    obj = {"plain": state, "state_dict": {"state_dict": state, "epoch": 3},
           "model": {"model": {f"module.{k}": v for k, v in state.items()}},
           "old": {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}}.get(wrap)
    if wrap == "from_gpu":
        from helpers import save_as_if_from_cuda

        save_as_if_from_cuda(state, tmp_path / "net.pth")
        net = load_cam_network(str(tmp_path / "net.pth"))
    elif wrap == "safetensors":
        from safetensors.torch import save_file

        save_file(state, str(tmp_path / "net.safetensors"), metadata={"format": "pt"})
        net = load_cam_network(str(tmp_path / "net.safetensors"))
    else:
        torch.save(obj, tmp_path / "net.pth")
        net = load_cam_network(str(tmp_path / "net.pth"))
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(net.model.eval()(x), saved(x))
    assert net.mean == (0.485, 0.456, 0.406) and net.std == (0.229, 0.224, 0.225) and net.input_size == 224
    assert net.imagenet is False and net.class_ids is None


def _by_hand(model, x, y, mean=(0, 0, 0), std=(1, 1, 1), size=None):
    """The CAM of docs/method.md §1 written out: normalise, resize, layer4, fc row, relu, upsample, min-max."""
    inp = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    if size is not None:
        inp = nn.functional.interpolate(inp, size=size, mode="bilinear", align_corners=False)
    with torch.no_grad():
        feats = model.layer4(model.layer3(model.layer2(model.layer1(
            model.maxpool(model.relu(model.bn1(model.conv1(inp))))))))
        cam = torch.einsum("bc,bchw->bhw", model.fc.weight[y], feats).relu()
    up = nn.functional.interpolate(cam[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    lo, hi = up.amin(dim=(1, 2), keepdim=True), up.amax(dim=(1, 2), keepdim=True)
    return (up - lo) / (hi - lo) * 255


def test_cam_without_labels_is_for_the_top1_class_even_when_labels_match():
    """labels_match=True but no y given: the CAM of the network's own top-1 class."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        top1 = model(x).argmax(-1)
    cam = CAMProvider(model, (0, 0, 0), (1, 1, 1), labels_match=True)(x)
    torch.testing.assert_close(cam, _by_hand(model, x, top1), atol=1e-3, rtol=0)


def test_cam_refuses_integer_images():
    """uint8 images (torchvision.io's) were normalised as if 0 .. 255 were 0 .. 1: other CAMs, silently."""
    model = _one_channel_resnet(channel=5)
    with pytest.raises(TypeError, match="float images in \\[0, 1\\], got torch.uint8"):
        CAMProvider(model, (0, 0, 0), (1, 1, 1))(torch.zeros(1, 3, 32, 32, dtype=torch.uint8), torch.tensor([1]))


def test_cam_refuses_labels_not_one_per_image():
    """y = [1] for two images gave both the CAM of class 1; y [B, 1] stopped in einsum."""
    model = _one_channel_resnet(channel=5)
    provider = CAMProvider(model, (0, 0, 0), (1, 1, 1))
    for y in (torch.tensor([1]), torch.tensor([[1], [1]])):
        with pytest.raises(ValueError, match=r"y must hold one label per image, \[2\]"):
            provider(torch.rand(2, 3, 32, 32), y)


def test_cam_refuses_images_that_are_not_a_batch_of_three_channels():
    """Channels-last images [B, H, W, 3] stopped in the normalisation ("The size of tensor a (16) must match
    the size of tensor b (3)"), one image [3, H, W] with its label [1] on "y must hold one label per image,
    [3]" (its channels read as the batch): x and its shape are named first."""
    provider = CAMProvider(_one_channel_resnet(channel=5), (0, 0, 0), (1, 1, 1))
    for x, y in ((torch.rand(2, 16, 16, 3), torch.tensor([1, 1])), (torch.rand(3, 16, 16), torch.tensor([1])),
                 (torch.rand(2, 1, 16, 16), None)):
        shape = re.escape(str(list(x.shape)))
        with pytest.raises(ValueError, match=rf"^x must be images \[B, 3, H, W\], got shape {shape}$"):
            provider(x, y)


def test_cam_refuses_labels_outside_the_networks_classes_or_not_integers():
    """y = -1 (an "unlabelled" mark) gave the CAM of the last class, silently; y = 3 of 3 classes an
    IndexError from indexing; y = 1.7 the CAM of class 1."""
    model = _one_channel_resnet(channel=5)
    provider = CAMProvider(model, (0, 0, 0), (1, 1, 1))
    x = torch.rand(2, 3, 32, 32)
    for y in (torch.tensor([0, -1]), torch.tensor([3, 0])):
        with pytest.raises(ValueError, match=r"y must be class indices in \[0, 3\) of the CAM network"):
            provider(x, y)
    with pytest.raises(ValueError, match="y must be integer class indices, got torch.float32"):
        provider(x, torch.tensor([1.7, 0.0]))
    with pytest.raises(ValueError, match="y must be integer class indices, got torch.bool"):  # (a mask: classes 0, 1)
        provider(x, torch.tensor([True, False]))
    assert provider(x, torch.tensor([2, 0])).shape == (2, 32, 32)


def test_cam_resizes_a_non_square_image_whose_height_is_the_network_size():
    """input_size=64 and a 64 x 48 image: resized to 64 x 64 too (only the height matched)."""
    model = _one_channel_resnet(channel=5)
    x = torch.rand(2, 3, 64, 48, generator=torch.Generator().manual_seed(1))
    cam = CAMProvider(model, (0, 0, 0), (1, 1, 1), input_size=64)(x, torch.tensor([1, 1]))
    want = _by_hand(model, x, torch.tensor([1, 1]), size=(64, 64))
    assert cam.shape == (2, 64, 48)
    torch.testing.assert_close(cam, want, atol=1e-3, rtol=0)


def test_cam_provider_freezes_the_network_and_evaluates_it():
    """A network handed over in train mode is put in eval mode (BatchNorm's running statistics, not
    the batch's, and never updated: fresh ones, 0 and 1, are far from these images') and its
    parameters get requires_grad False."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3)
    with torch.no_grad():
        model.fc.weight.abs_()  # (positive maps: their min-max scaling is defined)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    provider = CAMProvider(model, (0, 0, 0), (1, 1, 1))
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    cam = provider(x, torch.tensor([0, 2]))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    torch.testing.assert_close(cam, _by_hand(model.eval(), x, torch.tensor([0, 2])), atol=1e-3, rtol=0)


class _Head(nn.Module):
    """A network with forward_features and get_classifier, plus an unrelated ``fc`` attribute."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = classifier
        self.fc = nn.Linear(4, 2)  # (not the classifier: a decoy)

    def forward_features(self, x):
        return self.conv(x)

    def get_classifier(self):
        return self.head


def test_cam_uses_get_classifier_and_refuses_a_non_linear_one():
    from clip_smot.cam import classifier_of

    head = nn.Linear(4, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, -1.0, 2.0]]))
    net = _Head(head)
    assert classifier_of(net) is head
    x = torch.rand(2, 3, 6, 5, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        f = net.conv(x)  # [2, 4, 6, 5]: the CAM resolution is the image's
    y = torch.tensor([0, 1])
    raw = torch.stack([f[0, 0], -f[1, 2] + 2 * f[1, 3]]).relu()
    lo, hi = raw.amin(dim=(1, 2), keepdim=True), raw.amax(dim=(1, 2), keepdim=True)
    torch.testing.assert_close(CAMProvider(net, (0, 0, 0), (1, 1, 1))(x, y), (raw - lo) / (hi - lo) * 255,
                               atol=1e-3, rtol=0)
    with pytest.raises(TypeError, match="linear classifier"):
        classifier_of(_Head(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))))


def test_a_cam_model_state_dict_with_other_entries_or_non_finite_weights(tmp_path):
    """A training script's state dict may hold non-tensor entries beside the weights (an epoch
    count): they are left out and the network loads. A NaN weight is refused, naming it: it
    would give NaN CAMs, which mask nothing, without a word."""
    import torchvision.models.resnet as tv

    from clip_smot.clip.cam_network import load_cam_network
    from clip_smot.common.errors import UserError

    torch.manual_seed(0)
    state = tv.ResNet(tv.BasicBlock, [1, 1, 1, 1], num_classes=5).state_dict()
    torch.save({**state, "epoch": 3, "arch": "resnet10"}, tmp_path / "extra.pth")
    assert load_cam_network(str(tmp_path / "extra.pth")).model.fc.out_features == 5
    state["layer3.0.conv2.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, tmp_path / "nan.pth")
    with pytest.raises(UserError, match=rf"^--cam-model {tmp_path / 'nan.pth'}: layer3.0.conv2.weight holds "
                                        "non-finite numbers$"):
        load_cam_network(str(tmp_path / "nan.pth"))


@pytest.mark.filterwarnings("ignore:Validating sparse tensor invariants")  # (torch's, on loading; the CLI filters it)
def test_a_cam_model_state_dict_of_no_class_or_of_odd_tensors_is_refused(tmp_path):
    """A --cam-model of no class (fc.weight [0, 512]) ended the fit in a traceback from argmax;
    a complex weight was cast to its real part (with a warning from torch's C++ on stderr), an
    integer one to a float, without a word; a sparse one was a traceback (its storage cannot be
    measured). Each is one line naming the file and the tensor."""
    import torchvision.models.resnet as tv

    from clip_smot.clip.cam_network import load_cam_network
    from clip_smot.common.errors import UserError

    torch.manual_seed(0)
    state = tv.ResNet(tv.BasicBlock, [1, 1, 1, 1], num_classes=5).state_dict()
    cases = {
        "none": ({**state, "fc.weight": torch.zeros(0, 512), "fc.bias": torch.zeros(0)},
                 r"fc.weight \(0, 512\) holds no class"),
        "complex": ({**state, "fc.weight": state["fc.weight"].to(torch.complex64)},
                    "fc.weight is of dtype torch.complex64, not a dense floating-point tensor"),
        "int": ({**state, "conv1.weight": state["conv1.weight"].to(torch.int64)},
                "conv1.weight is of dtype torch.int64, not a dense floating-point tensor"),
        "sparse": ({**state, "bn1.weight": state["bn1.weight"].to_sparse()},
                   "bn1.weight is a torch.sparse_coo tensor, not a dense floating-point tensor"),
        # (a counter, an integer in torchvision's files: a complex one was cast to its real part with torch's warning)
        "count": ({**state, "bn1.num_batches_tracked": torch.tensor(3 + 1j)},
                  "bn1.num_batches_tracked is of dtype torch.complex64, not a dense real tensor"),
    }
    for name, (bad, why) in cases.items():
        torch.save(bad, tmp_path / f"{name}.pth")
        with pytest.raises(UserError, match=rf"^--cam-model {tmp_path / name}.pth: {why}$"):
            load_cam_network(str(tmp_path / f"{name}.pth"))
    torch.save({**state, "fc.weight": state["fc.weight"].half()}, tmp_path / "half.pth")  # (another float: fine)
    assert load_cam_network(str(tmp_path / "half.pth")).model.fc.out_features == 5


def test_a_cam_model_file_larger_than_half_the_memory_is_refused_before_loading(tmp_path, monkeypatch):
    """torch.load reads a --cam-model whole before its shapes are compared with any ResNet, and a
    sparse file costs its writer no disk: one larger than half of the memory is not loaded (here
    a tiny ResNet's 20 MB file on a machine of 16 MiB)."""
    import torchvision.models.resnet as tv

    import clip_smot.common.device as device
    from clip_smot.clip.cam_network import load_cam_network
    from clip_smot.common.errors import UserError

    torch.save(tv.ResNet(tv.BasicBlock, [1, 1, 1, 1], num_classes=5).state_dict(), tmp_path / "r.pth")
    monkeypatch.setattr(device, "physical_memory", lambda: 16 << 20)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("the file was loaded"))
    with pytest.raises(UserError, match=rf"^--cam-model {tmp_path / 'r.pth'}: the file is 0.0 GiB, more than half "
                                        r"of this machine's 0.0 GiB; not loaded$"):
        load_cam_network(str(tmp_path / "r.pth"))


class _FixedMaps(nn.Module):
    """A network whose feature map is fixed, whatever the image: channel 0 [[2, 0], [0, 2]], channel 1
    [[0, 0.5], [0.5, 0]]; fc the identity with bias (0, 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("maps", torch.tensor([[[2.0, 0.0], [0.0, 2.0]], [[0.0, 0.5], [0.5, 0.0]]]))
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.eye(2))
            self.fc.bias.copy_(torch.tensor([0.0, 1.0]))

    def forward_features(self, x):
        return self.maps.expand(x.shape[0], 2, 2, 2) + 0 * x.mean()  # [B, 2, 2, 2]


def test_cam_top1_is_ranked_on_average_pooled_features_as_the_forward_pass():
    """Pooled by the mean, the logits are (1, 0.25 + 1): class 1 is the top-1 and its CAM the anti-diagonal
    (relu of channel 1, min-max scaled: 0 and 255). Pooled by the sum they would be (4, 1 + 1), class 0."""
    net = _FixedMaps()
    x = torch.rand(1, 3, 2, 2)  # (2 x 2, the map's size: the bilinear upsampling is the identity)
    want = torch.tensor([[[0.0, 255.0], [255.0, 0.0]]])
    provider = CAMProvider(net, (0, 0, 0), (1, 1, 1), labels_match=False)
    torch.testing.assert_close(provider(x, torch.tensor([0])), want)
    torch.testing.assert_close(CAMProvider(net, (0, 0, 0), (1, 1, 1))(x), want)
    # given class 0 (labels match): the diagonal
    torch.testing.assert_close(CAMProvider(net, (0, 0, 0), (1, 1, 1))(x, torch.tensor([0])),
                               torch.tensor([[[255.0, 0.0], [0.0, 255.0]]]))


def test_cam_labels_of_any_integer_dtype_and_float64_images():
    """uint8 labels index the classifier's rows as numbers, not as a boolean mask; float64 images are
    read as the float32 ones (the network's weights are float32)."""
    net = _FixedMaps()
    x = torch.rand(2, 3, 2, 2)
    want = torch.tensor([[[0.0, 255.0], [255.0, 0.0]], [[255.0, 0.0], [0.0, 255.0]]])  # classes 1, 0
    for dtype in (torch.uint8, torch.int32, torch.int64):
        torch.testing.assert_close(CAMProvider(net, (0, 0, 0), (1, 1, 1))(x, torch.tensor([1, 0], dtype=dtype)), want)
    model = _one_channel_resnet(channel=5)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))  # (a 2 x 2 map: a real CAM)
    provider = CAMProvider(model, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    torch.testing.assert_close(provider(x.double(), torch.tensor([1, 1])), provider(x, torch.tensor([1, 1])))


def test_cam_follows_the_images_device():
    """The mean and std move to the images' device (here "meta", standing in for a GPU)."""
    net = _FixedMaps().to("meta")
    provider = CAMProvider(net, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    cam = provider(torch.rand(2, 3, 4, 4, device="meta"), torch.tensor([1, 0], device="meta"))
    assert cam.device.type == "meta" and cam.shape == (2, 4, 4) and provider.mean.device.type == "meta"


def test_cam_under_bf16_autocast_is_float32():
    """train computes the CAMs under the step's autocast: the layer4 map comes out in bfloat16, the
    CAM is still weighed, scaled and returned in float32 (the fp32 CAM up to bfloat16's rounding)."""
    model = _one_channel_resnet(channel=5)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    provider = CAMProvider(model, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cam = provider(x, torch.tensor([1, 1]))
    assert cam.dtype == torch.float32
    torch.testing.assert_close(cam, _by_hand(model, x, torch.tensor([1, 1]), (0.5,) * 3, (0.25,) * 3), atol=3.0, rtol=0)


def test_cached_cams_of_a_resnet18_file_are_its_features_times_the_fc_row_by_hand(tmp_path):
    """--cam-model FILE.pth of torchvision's ResNet-18 (1000 classes: ImageNet's), on ImageNet
    data of the wnids of ostrich (9), tabby cat (281) and balloon (417), by the fit's route
    (load_cam_network, build_cam_provider, cache_cams), equals docs/method.md §1 written out with
    torchvision's own network: ImageNet's mean and std, resized to 224, layer4's map times the fc
    row of each image's 1000-way class, ReLU, upsampled to the image, min-max scaled, rounded."""
    import torch.nn.functional as F

    from clip_smot.clip.cam_network import build_cam_provider, cache_cams, load_cam_network
    from clip_smot.clip.fewshot import FewShotClasses

    torch.manual_seed(0)
    tv = torchvision.models.resnet18(num_classes=1000).eval()
    torch.save(tv.state_dict(), tmp_path / "r18.pth")
    net = load_cam_network(str(tmp_path / "r18.pth"))
    assert net.imagenet and net.input_size == 224 and net.class_ids is None
    classes = FewShotClasses(tmp_path, ("n01518878", "n02123045", "n02782093"), ("ostrich", "tabby cat", "balloon"),
                             (9, 281, 417))
    provider, label_map = build_cam_provider(net, classes)
    assert label_map == [9, 281, 417]
    images = torch.randint(0, 256, (1, 3, 40, 36), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    cams = cache_cams(provider, label_map, images, torch.tensor([2]))  # (balloon; batches: the next test)
    assert cams.dtype == torch.uint8 and cams.shape == (1, 40, 36)

    x = images.float() / 255
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    inp = F.interpolate((x - mean) / std, size=(224, 224), mode="bilinear", align_corners=False)
    with torch.no_grad():
        feats = tv.layer4(tv.layer3(tv.layer2(tv.layer1(tv.maxpool(tv.relu(tv.bn1(tv.conv1(inp))))))))  # [1, 512, 7, 7]
        maps = torch.einsum("bc,bchw->bhw", tv.fc.weight[[417]], feats).relu()
    up = F.interpolate(maps[:, None], size=(40, 36), mode="bilinear", align_corners=False)[:, 0]
    lo, hi = up.amin(dim=(1, 2), keepdim=True), up.amax(dim=(1, 2), keepdim=True)
    want = ((up - lo) / (hi - lo) * 255).round()
    diff = (cams.float() - want).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() < 0.01  # (a value at .5 may round either way)


def test_a_cam_model_file_of_no_resnet_state_dict_is_one_line(tmp_path):
    """A --cam-model holding no state dict (a tensor, a list), or a state dict without the stem,
    the classifier or a stage of a ResNet (another network's weights), is refused naming the file
    and what it lacks, before anything is built from it."""
    import torchvision.models.resnet as tv

    from clip_smot.clip.cam_network import load_cam_network
    from clip_smot.common.errors import UserError

    state = tv.ResNet(tv.BasicBlock, [1, 1, 1, 1], num_classes=5).state_dict()
    no_resnet = r"not a torchvision ResNet state dict \(no conv1.weight / fc.weight\)"
    cases = {
        "tensor": (torch.zeros(3), "expected a state dict, found Tensor"),
        "list": ([state["fc.weight"]], "expected a state dict, found list"),
        "no_fc": ({k: v for k, v in state.items() if not k.startswith("fc.")}, no_resnet),
        "no_conv1": ({k: v for k, v in state.items() if k != "conv1.weight"}, no_resnet),
        "fc_1d": ({**state, "fc.weight": torch.zeros(5)}, no_resnet),
        "no_layer4": ({k: v for k, v in state.items() if not k.startswith("layer4.")},
                      r"not a torchvision ResNet state dict \(no layer4\)"),
        "no_statistic": ({k: v for k, v in state.items() if k != "layer2.0.bn1.running_mean"},
                         r"does not match a torchvision ResNet \(no layer2.0.bn1.running_mean\)"),
    }
    for name, (obj, why) in cases.items():
        torch.save(obj, tmp_path / f"{name}.pth")
        with pytest.raises(UserError, match=rf"^--cam-model {tmp_path / name}.pth: {why}$"):
            load_cam_network(str(tmp_path / f"{name}.pth"))
    (tmp_path / "junk.pth").write_bytes(b"no pickle, no zip archive")  # (torch.load's own error, in one line)
    with pytest.raises(UserError, match=rf"^--cam-model {tmp_path / 'junk.pth'}: not a readable PyTorch state dict "
                                        r"\(UnpicklingError: [^\n]+\)$"):
        load_cam_network(str(tmp_path / "junk.pth"))
    with pytest.raises(UserError, match=rf"^--cam-model {tmp_path / 'none.pth'}: no such checkpoint file \(give "
                                        r"resnet18-imagenet or the path of a ResNet state dict"):
        load_cam_network(str(tmp_path / "none.pth"))
    from safetensors.torch import save_file

    save_file({"ctx": torch.zeros(4, 8)}, str(tmp_path / "prompt.safetensors"), metadata={"format": "clip-smot-prompt"})
    with pytest.raises(UserError, match=rf"^--cam-model {tmp_path / 'prompt.safetensors'}: a prompt file \(fit's or "
                                        r"export's .safetensors\), not "):
        load_cam_network(str(tmp_path / "prompt.safetensors"))


@pytest.mark.parametrize("key", [0, (1, 2)])
@pytest.mark.parametrize("wrap", [False, True])
def test_a_cam_model_state_dict_with_a_key_that_is_no_string_is_no_traceback(tmp_path, key, wrap):
    """A --cam-model state dict (plain, or under "state_dict") holding a tensor under an int or a
    tuple key beside the weights (torch.save writes such keys; a seeded fuzz of fit --cam-model):
    loading it was "AttributeError: 'int' object has no attribute 'removeprefix'", a traceback from
    fit. It is left out, as a non-tensor entry is."""
    import torchvision.models.resnet as tv

    from clip_smot.clip.cam_network import load_cam_network

    state = {**tv.ResNet(tv.BasicBlock, [1, 1, 1, 1], num_classes=5).state_dict(), key: torch.zeros(1)}
    path = tmp_path / "odd_key.pth"
    torch.save({"state_dict": state} if wrap else state, path)
    assert load_cam_network(str(path)).model.fc.out_features == 5


def test_a_cam_model_stage_of_64_blocks_is_not_refused_as_too_deep(tmp_path):
    """At most 64 blocks a stage (ResNet-152 has 36): a stage of exactly 64 is read as a ResNet's
    and compared with one (here found to lack its other weights), not refused for its depth."""
    from clip_smot.clip.cam_network import load_cam_network
    from clip_smot.common.errors import UserError

    state = {"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(2, 512), "fc.bias": torch.zeros(2),
             **{f"layer{i}.0.conv1.weight": torch.zeros(1) for i in (2, 3, 4)},
             **{f"layer1.{b}.conv1.weight": torch.zeros(1) for b in range(64)}}
    torch.save(state, tmp_path / "deep.pth")
    with pytest.raises(UserError, match=rf"^--cam-model {tmp_path / 'deep.pth'}: does not match a torchvision ResNet"):
        load_cam_network(str(tmp_path / "deep.pth"))
    torch.save({**state, "layer1.64.conv1.weight": torch.zeros(1)}, tmp_path / "deeper.pth")
    with pytest.raises(UserError, match=r"layer1 holds 65 blocks, more than any ResNet"):
        load_cam_network(str(tmp_path / "deeper.pth"))


def test_resnet18_imagenet_weights_in_the_cache_load_without_a_network_probe(tmp_path, monkeypatch):
    """--cam-model resnet18-imagenet with torchvision's file in torch's hub cache: loaded from
    there (no probe of the internet, which may be unreachable), as an ImageNet network fed at
    224 pixels with ImageNet's mean and std."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # (the probe is monkeypatched: the message of no switch)
    from clip_smot.clip import cam_network

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "resnet18-f37072fd.pth").write_bytes(b"cached")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(cam_network, "host_reachable", lambda host: pytest.fail("probed the internet"))
    tiny = torchvision.models.resnet.ResNet(torchvision.models.resnet.BasicBlock, [1, 1, 1, 1])
    asked = []
    monkeypatch.setattr(torchvision.models, "resnet18", lambda weights: asked.append(weights) or tiny)
    net = cam_network.load_cam_network("resnet18-imagenet")
    assert asked == [torchvision.models.ResNet18_Weights.IMAGENET1K_V1] and net.model is tiny
    assert (net.imagenet, net.input_size, net.class_ids, net.source) == (True, 224, None, "resnet18-imagenet")
    assert net.mean == (0.485, 0.456, 0.406) and net.std == (0.229, 0.224, 0.225)
    # not cached: downloaded where the host answers, else one line saying how to pass the file
    (tmp_path / "checkpoints" / "resnet18-f37072fd.pth").unlink()
    monkeypatch.setattr(cam_network, "host_reachable", lambda host: host == ("download.pytorch.org", 443))
    assert cam_network.load_cam_network("resnet18-imagenet").model is tiny and len(asked) == 2
    monkeypatch.setattr(cam_network, "host_reachable", lambda host: False)
    offline = "there is no internet to download them; download https://download.pytorch.org/models/resnet18-"
    with pytest.raises(cam_network.UserError, match=offline):
        cam_network.load_cam_network("resnet18-imagenet")
    assert len(asked) == 2


def test_cached_cams_are_every_images_cam_for_its_mapped_class_whatever_the_batches():
    """cache_cams in batches of 2 over 5 images (the last batch of one), each CAM for the network's
    class of the image's data label (label_map), rounded to uint8: docs/method.md §1 written out."""
    from clip_smot.clip.cam_network import cache_cams

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3).eval()
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    images = torch.randint(0, 256, (5, 3, 96, 80), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([0, 1, 2, 0, 1])
    cams = cache_cams(CAMProvider(model, mean, std), [2, 0, 1], images, labels, batch_size=2)
    want = _by_hand(model, images.float() / 255, torch.tensor([2, 0, 1, 2, 0]), mean, std).round()  # [5, 96, 80]
    assert want.isfinite().all() and (want.amax(dim=(1, 2)) == 255).all()  # (no map all zero: each is scaled)
    diff = (cams.float() - want).abs()
    assert cams.dtype == torch.uint8 and diff.max() <= 1 and (diff > 0).float().mean() < 0.01


def test_a_cam_networks_classes_are_the_datas_by_folder_or_by_name_and_all_of_them(tmp_path):
    """A network of named classes (a model.safetensors of 'clip-smot train') gives true-label CAMs
    when every class of the data is one of its classes, by folder name or else by class name
    (ImageNet folders are wnids, its class names words); one class it lacks makes them top-1
    CAMs. An ImageNet network maps ImageNet data through the wnids' 1000-way indices."""
    import torchvision.models.resnet as tv

    from clip_smot.clip.cam_network import CamNetwork, build_cam_provider
    from clip_smot.clip.fewshot import FewShotClasses

    model = tv.ResNet(tv.BasicBlock, [1, 1, 1, 1], num_classes=3)
    net = CamNetwork(model, (0.5,) * 3, (0.25,) * 3, 32, False, ("dogs", "cats", "birds"), "model.safetensors")
    for folders, names, want in ((("birds", "cats"), ("Bird", "Cat"), [2, 1]),  # (by folder)
                                 (("n01", "n02"), ("birds", "cats"), [2, 1]),  # (by name)
                                 (("birds", "cars"), ("birds", "cars"), None)):  # (cars: not all)
        provider, label_map = build_cam_provider(net, FewShotClasses(tmp_path, folders, names, None))
        assert label_map == want and provider.labels_match is (want is not None) and provider.input_size == 32
    other = FewShotClasses(tmp_path, ("n01", "n02"), ("x", "y"), (417, 9))  # (ImageNet data, not its network)
    assert build_cam_provider(net, other)[1] is None
    imagenet = CamNetwork(model, (0.5,) * 3, (0.25,) * 3, 224, True, None, "resnet18-imagenet")
    assert build_cam_provider(imagenet, FewShotClasses(tmp_path, ("a", "b"), ("a", "b"), (417, 9)))[1] == [417, 9]
    assert build_cam_provider(imagenet, FewShotClasses(tmp_path, ("a", "b"), ("a", "b"), None))[1] is None


def test_resnet18_imagenet_weights_where_torch_keeps_them_load_through_torchvision(tmp_path, monkeypatch):
    """torchvision's ResNet-18 file where torch's hub keeps downloads ($TORCH_HOME/hub/checkpoints,
    as a user's earlier online run left it): --cam-model resnet18-imagenet loads it through
    torchvision's own resnet18(weights=IMAGENET1K_V1) and torch.hub, neither patched, opening no
    connection. (The test above stands in for both.)"""
    import re
    import socket

    from clip_smot.clip import cam_network

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    state = {k: v + 0.5 if v.is_floating_point() else v for k, v in torchvision.models.resnet18().state_dict().items()}
    cached = tmp_path / "torch" / "hub" / "checkpoints" / weights.url.rsplit("/", 1)[1]
    cached.parent.mkdir(parents=True)
    torch.save(state, cached)
    monkeypatch.setattr(socket.socket, "connect", lambda *a: pytest.fail("opened a connection"))
    net = cam_network.load_cam_network("resnet18-imagenet")
    assert all(torch.equal(net.model.state_dict()[k], v) for k, v in state.items())
    cached.unlink()
    monkeypatch.setattr(cam_network, "host_reachable", lambda host: False)
    with pytest.raises(cam_network.UserError, match=rf"^--cam-model resnet18-imagenet: torchvision's ImageNet ResNet-18 "
                                                    rf"weights are not cached \({re.escape(str(cached))}\)"):
        cam_network.load_cam_network("resnet18-imagenet")


def test_cam_functions_name_an_argument_that_is_no_tensor():
    """A numpy array stopped on "'numpy.ndarray' object has no attribute 'numel'", naming no argument."""
    import numpy as np

    with pytest.raises(TypeError, match="^cam must be a torch.Tensor, got ndarray$"):
        normalize_cam(np.zeros((1, 2, 2)))
    with pytest.raises(TypeError, match="^cam must hold real numbers, got torch.complex64$"):  # (not its real part)
        normalize_cam(torch.tensor([[[1 + 5j, 3.0]]]))
    provider = CAMProvider(_Head(nn.Linear(4, 2)), [0.5] * 3, [0.5] * 3)
    with pytest.raises(TypeError, match="^x must be a torch.Tensor, got ndarray$"):
        provider(np.zeros((1, 3, 2, 2), dtype=np.float32))
    with pytest.raises(TypeError, match="^y must be a torch.Tensor, got list$"):
        provider(torch.zeros(1, 3, 2, 2), [0])


def test_normalize_cam_of_a_map_whose_span_overflows_its_dtype():
    """Min-max scaling by hand: (x - lo) / (hi - lo) * 255. In int8, 100 - (-100) wrapped to -56, a span
    below 0, and the map became all zero; in float32, 3e38 - (-3e38) is inf and the top pixel inf / inf."""
    want = torch.tensor([[[0.0, 127.5, 255.0]]])
    for cam in (torch.tensor([[[-100, 0, 100]]], dtype=torch.int8),
                torch.tensor([[[-20000, 0, 20000]]], dtype=torch.int16),
                torch.tensor([[[-3e38, 0.0, 3e38]]]),
                torch.tensor([[[-6e4, 0.0, 6e4]]], dtype=torch.float16)):
        torch.testing.assert_close(normalize_cam(cam).float(), want, msg=str(cam.dtype))


def test_normalize_cam_of_values_float32_cannot_tell_apart():
    """2^25, 2^25 + 1 and 2^25 + 2 are all 2^25 in float32 (24-bit mantissa), as are 1, 1 + 1e-10 and
    1 + 2e-10, and -1e300 .. 1e300 are -inf .. inf there: int32, int64 and float64 maps are scaled in float64,
    by hand (x - lo) / (hi - lo) * 255 = 0, 127.5, 255, in float32 for integers and float64 for float64. A
    float16 map is returned as float16."""
    want = torch.tensor([[[0.0, 127.5, 255.0]]])
    for dtype in (torch.int32, torch.int64):
        out = normalize_cam(torch.tensor([[[2**25, 2**25 + 1, 2**25 + 2]]], dtype=dtype))
        assert out.dtype == torch.float32, dtype
        torch.testing.assert_close(out, want, msg=str(dtype))
    for values in ([1.0, 1.0 + 1e-10, 1.0 + 2e-10], [-1e300, 0.0, 1e300]):
        out = normalize_cam(torch.tensor([[values]], dtype=torch.float64))
        assert out.dtype == torch.float64
        torch.testing.assert_close(out, want.double(), msg=str(values))
    assert normalize_cam(torch.tensor([[[0.0, 1.0]]], dtype=torch.float16)).dtype == torch.float16


def test_normalize_cam_refuses_a_min_span_that_is_no_number():
    """A map spans 1 here; with min_span NaN it came back all zero as if flat, silently, and min_span=None
    stopped on "'>' not supported between instances of 'Tensor' and 'NoneType'"."""
    cam = torch.tensor([[[0.0, 1.0]]])
    for bad in (float("nan"), None, "1", True):  # (True was read as 1: every map of span <= 1 zeroed)
        with pytest.raises((ValueError, TypeError), match="min_span"):
            normalize_cam(cam, min_span=bad)


def test_cam_provider_refuses_a_std_of_zero_or_below_or_nan():
    """The network's inputs are (x - mean) / std. A std of 0 divided to inf and NaN features: the CAMs came
    back all zero, so SMOT masked nothing; a std of -0.229 fed the network -x' and gave other maps. As odin's
    std: a ValueError naming std."""
    model = _one_channel_resnet(channel=7)
    x, y = torch.rand(1, 3, 64, 64), torch.tensor([1])
    for std in ((0.0, 0.224, 0.225), (math.nan, 0.224, 0.225), (-0.229, -0.224, -0.225), (math.inf,) * 3):
        with pytest.raises(ValueError, match="std"):
            CAMProvider(model, (0.485, 0.456, 0.406), std)(x, y)
    for mean in ((math.nan, 0.456, 0.406), (0.485, math.inf, 0.406)):  # (NaN inputs to the network)
        with pytest.raises(ValueError, match="mean must be finite"):
            CAMProvider(model, mean, (0.229, 0.224, 0.225))(x, y)


def test_cam_provider_names_a_mean_or_std_not_of_three_values_and_a_bad_input_size():
    """A mean of 2 values stopped in view() ("shape '[1, 3, 1, 1]' is invalid for input of size 2"),
    an input_size of 0, -1, 2.5 or True at the first call, in the interpolation or later: each is a
    ValueError naming the argument when the provider is made."""
    model = _one_channel_resnet(channel=7)
    imagenet = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    for mean, std in (((0.5, 0.5), imagenet[1]), (imagenet[0], (0.2,) * 4), ((), imagenet[1])):
        with pytest.raises(ValueError, match=r"^mean and std must hold 3 values each \(one per channel\)"):
            CAMProvider(model, mean, std)
    for size in (0, -1, 2.5, True, "64"):
        with pytest.raises(ValueError, match=r"^input_size must be None or an integer >= 1, got "):
            CAMProvider(model, *imagenet, input_size=size)
    assert CAMProvider(model, *imagenet, input_size=32)(torch.rand(1, 3, 64, 64), torch.tensor([1])).shape == (1, 64, 64)


class _FeaturesOnly(nn.Module):
    """forward_features but no classifier (neither get_classifier nor fc)."""

    def forward_features(self, x):
        return x


class _StemWithoutMaxpool(nn.Module):
    """A CIFAR-style ResNet: torchvision's stem and stages and fc, but no maxpool and no forward_features."""

    def __init__(self) -> None:
        super().__init__()
        for name in ("conv1", "bn1", "relu", "layer1", "layer2", "layer3", "layer4"):
            setattr(self, name, nn.Identity())
        self.fc = nn.Linear(3, 2)


def test_cam_provider_refuses_a_network_it_cannot_read_and_a_mean_or_std_of_none():
    """A network with neither forward_features nor a ResNet's stem and stages, or with no classifier, stopped
    at the first call ("'Linear' object has no attribute 'maxpool'"); a mean of None on "Could not infer dtype
    of NoneType". Each is a TypeError naming the argument when the provider is made."""
    imagenet = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    for model, name in ((nn.Linear(3, 2), "Linear"), (_FeaturesOnly(), "_FeaturesOnly"), ("resnet18", "str"),
                        (_StemWithoutMaxpool(), "_StemWithoutMaxpool")):
        with pytest.raises(TypeError, match=rf"^model must be a ResNet-like network, .*; got {name}$"):
            CAMProvider(model, *imagenet)
    resnet = _one_channel_resnet(channel=7)
    for mean, std in ((None, imagenet[1]), (imagenet[0], None), ("abc", imagenet[1])):
        with pytest.raises(TypeError, match=r"^mean and std must be 3 numbers each \(one per channel\), got "):
            CAMProvider(resnet, mean, std)


def test_a_model_file_torch_cannot_map_is_one_line_naming_the_read(tmp_path, monkeypatch):
    """--cam-model of a `clip-smot train` model file torch cannot map (UntypedStorage.from_file
    failing EIO, as a failing disk's): its format cannot be read from the header, so it is taken
    for a model file, whose loader says the read failed, one line; not a traceback."""
    from clip_smot.clip.cam_network import load_cam_network
    from clip_smot.common.errors import UserError
    from clip_smot.resnet.networks import build_network, save_model

    path = tmp_path / "model.safetensors"
    save_model(path, build_network("resnet_tiny", 3, 32), arch="resnet_tiny", classnames=["a", "b", "c"],
               input_size=32, mean=[0.5] * 3, std=[0.25] * 3, dataset="x", method="ce", stage="base", config={})

    def fails(*args, **kwargs):
        raise RuntimeError(f"unable to open file <{path}> in read-only mode: Input/output error (5)")

    monkeypatch.setattr(torch.UntypedStorage, "from_file", fails)
    with pytest.raises(UserError) as e:
        load_cam_network(str(path))
    assert str(e.value) == f"--cam-model {path}: cannot be read (Input/output error)"
