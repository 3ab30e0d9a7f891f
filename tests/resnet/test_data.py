import shutil
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from clip_smot.common.errors import UserError
from clip_smot.resnet import data as rd


def test_random_crop_flip_takes_crops_of_the_padded_image():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    out = rd.random_crop_flip(x, 2, True, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = F.pad(x, (2, 2, 2, 2))
    seen_flip = seen_shift = False
    for i in range(64):
        matches = [(oy, ox, f) for oy in range(5) for ox in range(5) for f in (False, True)
                   if torch.equal(out[i], (lambda c: c.flip(-1) if f else c)(padded[i, :, oy:oy + 8, ox:ox + 8]))]
        assert matches, i  # every output is a (possibly flipped) 8x8 window of the padded image
        seen_flip |= any(f for _, _, f in matches) and not any(not f for _, _, f in matches)
        seen_shift |= all((oy, ox) != (2, 2) for oy, ox, _ in matches)
    assert seen_flip and seen_shift
    same = rd.random_crop_flip(x, 2, True, torch.Generator().manual_seed(1))
    assert torch.equal(out, same)  # reproducible from the generator
    assert torch.equal(rd.random_crop_flip(x, 0, False, g), x)


def test_tensor_batches_shard_an_epoch_between_ranks():
    labels = torch.arange(10)
    images = labels.view(10, 1, 1, 1).expand(10, 3, 4, 4).to(torch.uint8).contiguous()
    shards = []
    for rank in range(2):
        b = rd.TensorBatches(images, labels, 3, torch.device("cpu"), seed=5, pad=0, flip=False, rank=rank, world=2)
        ys = torch.cat([y for _, y in b.epoch(0)])
        assert len(ys) == 5 and len(b) == 2
        xs = torch.cat([x for x, _ in b.epoch(0)])
        assert torch.equal(xs[:, 0, 0, 0].long(), ys)  # images travel with their labels
        shards.append(ys)
    assert sorted(torch.cat(shards).tolist()) == list(range(10))  # disjoint, complete
    again = torch.cat([y for _, y in rd.TensorBatches(images, labels, 3, torch.device("cpu"), 5, 0, False).epoch(1)])
    other = torch.cat([y for _, y in rd.TensorBatches(images, labels, 3, torch.device("cpu"), 5, 0, False).epoch(2)])
    assert not torch.equal(again, other)  # a new order each epoch


def test_the_ranks_steps_together_take_the_one_process_batches():
    """--batch-size is global: at each step the ranks' batches (B / world each) are together the
    batch a single process takes at that step, but for the last N mod world images of the order."""
    labels = torch.arange(23)
    images = labels.view(23, 1, 1, 1).expand(23, 3, 4, 4).to(torch.uint8).contiguous()
    one = [set(y.tolist()) for _, y in rd.TensorBatches(images, labels, 6, torch.device("cpu"), 5, 0, False).epoch(3)]
    ranks = [[y.tolist() for _, y in rd.TensorBatches(images, labels, 3, torch.device("cpu"), 5, 0, False, rank=r,
                                                      world=2).epoch(3)] for r in range(2)]
    together = [set(a) | set(b) for a, b in zip(*ranks)]
    assert [len(b) for b in ranks[0]] == [len(b) for b in ranks[1]] == [3, 3, 3, 2]  # the same steps on each rank
    assert together[:3] == one[:3] and together[3] < one[3] and len(one[3] - together[3]) == 1

def test_missing_cifar_offline_is_a_quick_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # (the probe is monkeypatched: the message of no switch)
    calls = []
    monkeypatch.setattr(rd, "_reachable", lambda host, timeout=3.0: calls.append(host) or False)
    t0 = time.perf_counter()
    with pytest.raises(UserError, match="cifar10: not found under .* cannot be reached"):
        rd.load_id_split("cifar10", str(tmp_path), "train")
    assert time.perf_counter() - t0 < 20 and calls == [("www.cs.toronto.edu", 443)]
    with pytest.raises(UserError, match="svhn: not found"):
        rd.load_ood_set("svhn", None, 32, data=str(tmp_path))


def test_an_offline_message_names_the_set_its_root_its_host_and_what_to_do(tmp_path, monkeypatch):
    """docs/resnet.md: offline, a missing set is one line naming the folder searched, the host that
    did not answer, and the two ways out (another machine, or $CLIP_SMOT_DATA / --data)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # (the probe is monkeypatched: the message of no switch)
    monkeypatch.setattr(rd, "_reachable", lambda host, timeout=3.0: False)
    loads = {"cifar100": ("www.cs.toronto.edu", lambda: rd.load_id_split("cifar100", str(tmp_path), "val")),
             "svhn": ("ufldl.stanford.edu", lambda: rd.load_ood_set("svhn", None, 32, data=str(tmp_path)))}
    for name, (host, load) in loads.items():
        with pytest.raises(UserError) as e:
            load()
        assert str(e.value) == (f"{name}: not found under {tmp_path} and {host} cannot be reached (offline?); "
                                "download it on a machine with internet, or point $CLIP_SMOT_DATA (train: --data) "
                                "to the folder that holds it")
    # a set that is there, truncated or damaged, was "not found" too: the files a user sees there
    (tmp_path / "cifar-100-python").mkdir()
    (tmp_path / "cifar-100-python" / "train").write_bytes(b"\x80\x02truncated")
    with pytest.raises(UserError, match=rf"^cifar100: incomplete or damaged under {tmp_path} \(cifar-100-python is "
                                        r"there, but fails torchvision's MD5 checks\) and www.cs.toronto.edu cannot be "
                                        r"reached \(offline\?\); "):
        rd.load_id_split("cifar100", str(tmp_path), "val")
    # HF_HUB_OFFLINE set (by habit, on a machine with internet): the switch is named, not the host
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as e:
        loads["svhn"][1]()
    assert str(e.value) == (f"svhn: not found under {tmp_path} and HF_HUB_OFFLINE is set, which stops every download "
                            "(unset it to download); download it on a machine with internet, or point "
                            "$CLIP_SMOT_DATA (train: --data) to the folder that holds it")


def test_processes_that_need_a_missing_set_at_once_download_it_once(tmp_path, monkeypatch):
    """The ranks of `torchrun ... train --dataset cifar10` on a fresh machine each downloaded and
    extracted CIFAR into the same folder at once (torchvision writes in place: one rank could
    read a file that another was rewriting). One now downloads; the others wait and read it."""
    import threading

    import torchvision.datasets as tvd

    active, downloads, peak = [0], [0], [0]
    guard = threading.Lock()

    class FakeCIFAR10:  # torchvision's contract: download=False raises RuntimeError when the files are missing
        def __init__(self, root, download=False, train=True):
            path = tmp_path / "cifar" / "data.bin"
            if download:
                with guard:
                    active[0] += 1
                    downloads[0] += 1
                    peak[0] = max(peak[0], active[0])
                time.sleep(0.3)
                path.write_bytes(b"x" * 16)
                with guard:
                    active[0] -= 1
            if not path.is_file():
                raise RuntimeError("Dataset not found or corrupted.")
            self.data = np.zeros((1, 32, 32, 3), np.uint8)

    monkeypatch.setattr(tvd, "CIFAR10", FakeCIFAR10)
    monkeypatch.setattr(rd, "_reachable", lambda host: True)
    (tmp_path / "cifar").mkdir()
    # (the lock is a file lock: separate opens conflict between threads as between processes)
    threads = [threading.Thread(target=rd._torchvision, args=("cifar10", tmp_path / "cifar")) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (downloads[0], peak[0]) == (1, 1)


def test_reachable_gives_up_within_its_timeout(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # really probe
    t0 = time.perf_counter()
    rd._reachable(("10.255.255.1", 9), timeout=0.5)  # unroutable: either refused or timed out
    assert time.perf_counter() - t0 < 2


def test_offline_switch_skips_every_download_probe(monkeypatch):
    import socket

    from clip_smot.clip import cam_network as cam_models
    from clip_smot.clip import model as clip_model

    def no_socket(*args, **kwargs):
        raise AssertionError("probed the network under HF_HUB_OFFLINE=1")

    monkeypatch.setattr(socket, "create_connection", no_socket)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert rd._reachable(("www.cs.toronto.edu", 443)) is False
    assert clip_model._hub_reachable() is False
    assert cam_models.host_reachable(cam_models._DOWNLOAD_HOST) is False


def test_large_image_folders_go_through_the_dataloader(tmp_path, monkeypatch):
    for split, n in (("train", 3), ("val", 2)):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(n):
                noise = np.random.default_rng(i).integers(0, 256, (90, 100, 3), dtype=np.uint8)  # (crops differ)
                Image.fromarray(noise).save(tmp_path / split / c / f"{i}.jpg")
    s = rd.load_id_split(None, str(tmp_path), "train")
    assert s.input_size == 224 and s.images is None and len(s.files) == 6 and s.classnames == ["a", "b"]
    fb = rd.FileBatches(s.files, s.labels, 72, 4, torch.device("cpu"), seed=0, workers=0)
    batches = list(fb.epoch(0))
    assert [tuple(x.shape) for x, _ in batches] == [(4, 3, 72, 72), (2, 3, 72, 72)]
    assert batches[0][0].dtype == torch.uint8
    val = rd.load_id_split(None, str(tmp_path), "val", input_size=72)
    xs = [x for x, _ in rd.eval_batches(val, 3, torch.device("cpu"))]
    assert sum(len(x) for x in xs) == 4 and xs[0].shape[-1] == 72
    # an image's crops come from (seed, epoch, image): the same batch whatever the RNG held before
    # (exact resume), and with 2 workers as without (a resume may change --workers; with the crops
    # drawn per process, the weights of a run resumed with --workers 0 differed by 0.26)
    torch.manual_seed(123)
    again = [x for x, _ in fb.epoch(0)]
    assert all(torch.equal(a, b) for (a, _), b in zip(batches, again))
    two = rd.FileBatches(s.files, s.labels, 72, 4, torch.device("cpu"), seed=0, workers=2)
    assert all(torch.equal(a, b) and torch.equal(y, z) for (a, y), (b, z) in zip(batches, two.epoch(0)))
    def crop(epoch):  # image 0's crop in an epoch
        fb.dataset.epoch = epoch
        return fb.dataset[0][0]

    assert torch.equal(crop(0), crop(0)) and not torch.equal(crop(0), crop(1))
    state = torch.get_rng_state()
    reseeded = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: reseeded.append(seed))
    fb.dataset[1]
    assert torch.equal(torch.get_rng_state(), state) and reseeded == []  # (the global RNGs are left as they were)


def test_imagenet200_takes_its_200_wnids_from_an_imagenet_folder(tmp_path):
    from clip_smot.common.bundled import imagenet200_wnids

    wnids = imagenet200_wnids()
    for w in wnids + ["n99999999"]:  # an ImageNet folder holds other classes too
        (tmp_path / "val" / w).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "val" / w / "a.JPEG")
    s = rd.load_id_split("imagenet200", str(tmp_path), "val")
    assert s.classnames == wnids and s.labels.tolist() == list(range(200)) and s.input_size == 224
    assert [f.parent.name for f in s.files] == wnids
    (tmp_path / "val" / wnids[5] / "a.JPEG").unlink()
    (tmp_path / "val" / wnids[5]).rmdir()
    with pytest.raises(UserError, match=f"class folder {wnids[5]} of ImageNet-200 is missing"):
        rd.load_id_split("imagenet200", str(tmp_path), "val")
    # a val/ half sorted: ImageNet's flat files left beside the wnid folders are refused, not left out
    (tmp_path / "val" / wnids[5]).mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "val" / wnids[5] / "a.JPEG")
    Image.new("RGB", (8, 8)).save(tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG")
    with pytest.raises(UserError, match=r"^--data .*val: 1 image\(s\) beside the class folders, e.g. "
                                        r"ILSVRC2012_val_00000001.JPEG: an image has no class there"):
        rd.load_id_split("imagenet200", str(tmp_path), "val")


def test_the_first_missing_imagenet200_class_is_named_and_a_file_is_no_class_folder(tmp_path):
    """ImageNet-200's classes are checked in the order of its wnid list: the first one missing is
    named; a file in a class folder's place is no class folder."""
    from clip_smot.common.bundled import imagenet200_wnids

    wnids = imagenet200_wnids()
    for w in wnids:
        (tmp_path / "val" / w).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "val" / w / "a.JPEG")
    for w in (wnids[3], wnids[150]):
        (tmp_path / "val" / w / "a.JPEG").unlink()
        (tmp_path / "val" / w).rmdir()
    with pytest.raises(UserError, match=rf"^--data {tmp_path / 'val'}: class folder {wnids[3]} of ImageNet-200 "
                                        r"is missing$"):
        rd.load_id_split("imagenet200", str(tmp_path), "val")
    for w in (wnids[3], wnids[150]):
        (tmp_path / "val" / w).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / "val" / w / "a.JPEG")
    Image.new("RGB", (8, 8)).save(tmp_path / "val" / "img.JPEG")
    (tmp_path / "val" / wnids[7] / "a.JPEG").unlink()
    (tmp_path / "val" / wnids[7]).rmdir()
    (tmp_path / "val" / "img.JPEG").rename(tmp_path / "val" / wnids[7])  # an image file, named as the class
    with pytest.raises(UserError, match=rf"class folder {wnids[7]} of ImageNet-200 is missing$"):
        rd.load_id_split("imagenet200", str(tmp_path), "val")


def test_the_eval_transform_of_a_thin_strip_crops_before_it_resizes(monkeypatch):
    import torchvision.transforms as T

    rng = np.random.default_rng(0)
    for size in (65, 224):
        reference = T.Compose([T.Resize(round(size * 256 / 224)), T.CenterCrop(size)])  # torchvision's, as before
        for shape in [(300, 250), (40, 300), (300, 40), (100, 201), (57, 1000), (1, 900), (3, 7)]:
            im = Image.fromarray(rng.integers(0, 255, (*shape, 3), dtype=np.uint8))
            got = np.asarray(rd._eval_transform(size)(im)).astype(int)
            assert np.abs(got - np.asarray(reference(im)).astype(int)).max() <= 1, (size, shape)  # rounding only
    # a 1 x 1000 strip was first enlarged to 256 x 256,000 pixels (a 1 x 5000 one: 1 GB, seconds)
    sizes, resize = [], Image.Image.resize
    monkeypatch.setattr(Image.Image, "resize", lambda self, size, *a, **k: sizes.append(size) or resize(self, size, *a, **k))
    out = rd._eval_transform(224)(Image.fromarray(rng.integers(0, 255, (1, 1000, 3), dtype=np.uint8)))
    assert out.size == (224, 224) and max(w * h for w, h in sizes) == 224 * 224


def test_the_eval_transform_resizes_to_the_nearest_pixel_of_size_256_224():
    """docs/resnet.md: test images are resized to 256 and centre-cropped to 224; at another input
    size, the same ratio to the nearest pixel: at 96, 109.71 is 110 (int() would cut it to 109)."""
    import torchvision.transforms as T

    im = Image.fromarray(np.random.default_rng(4).integers(0, 255, (150, 200, 3), dtype=np.uint8))
    want = np.asarray(T.Compose([T.Resize(110), T.CenterCrop(96)])(im)).astype(int)
    got = np.asarray(rd._eval_transform(96)(im)).astype(int)
    assert got.shape == (96, 96, 3) and np.abs(got - want).max() <= 1
    for strip in ((30, 400, 3), (400, 30, 3)):  # (cropped before it is resized: the same sizes)
        im = Image.fromarray(np.random.default_rng(5).integers(0, 255, strip, dtype=np.uint8))
        want = np.asarray(T.Compose([T.Resize(110), T.CenterCrop(96)])(im)).astype(int)
        assert np.abs(np.asarray(rd._eval_transform(96)(im)).astype(int) - want).max() <= 1, strip


def test_an_ood_image_list_gives_its_images(tmp_path):
    """``--ood NAME=LIST.txt`` and ``NAME=ROOT::LIST.txt`` (eval --help, for both tracks): the
    ResNet track took the list for an image and stopped with 'unreadable or truncated image'."""
    for i, value in enumerate((0, 128, 255)):
        Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "list.txt").write_text("2.png -1\n0.png -1\n")
    for where in (str(tmp_path / "list.txt"), f"{tmp_path}::{tmp_path / 'list.txt'}"):
        s = rd.load_ood_set("mine", where, 8)
        assert s.labels.tolist() == [-1, -1]
        assert s.images[:, 0, 0, 0].tolist() == [255, 0]  # the listed images, in the list's order


def test_a_small_ood_folder_is_resized_on_its_shorter_side_and_centre_cropped(tmp_path):
    """The CIFAR OOD benchmark (docs/method.md §3: Textures, iSUN, Places365, LSUN "resized to 32x32") reads
    Textures and Places365 with ``Resize(32), CenterCrop(32)``: a non-square image was squashed
    to 32 x 32 instead, which changes its shapes (DTD's images are up to 640 x 480)."""
    import torchvision.transforms as T

    rng = np.random.default_rng(1)
    shapes = [(48, 64), (64, 40), (32, 32), (20, 90)]  # (h, w): wider, taller, square, a strip
    for i, shape in enumerate(shapes):
        Image.fromarray(rng.integers(0, 255, (*shape, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    s = rd.load_ood_set("textures", str(tmp_path), 32)
    reference = T.Compose([T.Resize(32), T.CenterCrop(32)])
    for i, got in enumerate(s.images):  # uint8 [3, 32, 32], in file order
        want = torch.from_numpy(np.array(reference(Image.open(tmp_path / f"{i}.png")))).permute(2, 0, 1)
        assert (got.int() - want.int()).abs().max() <= 1, shapes[i]  # rounding only
    assert torch.equal(s.images[2], torch.from_numpy(np.array(Image.open(tmp_path / "2.png"))).permute(2, 0, 1))


def test_class_folders_against_a_class_list_say_what_differs(tmp_path):
    """Folders that are the class list's in another order (or a list naming a class twice) were
    'class folders do not match the class list (unknown: none, missing: none)'."""
    for c in ("ant", "bee"):
        (tmp_path / c).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / c / "0.png")
    assert rd._folder_split(tmp_path, "--id", ["ant", "bee"])[0] == ["ant", "bee"]
    for classnames, why in ((["bee", "ant"], "not in the folders' sorted order"), (["ant", "bee", "ant"], "twice"),
                            (["ant", "cow"], "unknown: ['bee'], missing: ['cow']")):
        with pytest.raises(UserError) as e:
            rd._folder_split(tmp_path, "--id", classnames)
        assert "class folders do not match the class list (" in str(e.value) and why in str(e.value)


def test_class_folders_against_a_class_list_name_up_to_five_of_each_difference(tmp_path):
    for c in ("a", "b", "c", "d", "e", "f"):
        (tmp_path / c).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / c / "0.png")
    with pytest.raises(UserError) as e:
        rd._folder_split(tmp_path, "--id", ["z"])
    assert str(e.value) == (f"--id {tmp_path}: class folders do not match the class list "
                            "(unknown: ['a', 'b', 'c', 'd', 'e'], missing: ['z'])")


def test_an_image_beside_the_class_folders_is_refused_not_left_out(tmp_path):
    """eval --id DIR and train --data DIR read DIR's class folders: an image lying beside them (a
    val/ half sorted into class folders) has no class, and was left out without a word (the ID
    set scored 2 images of the folder's 3, exit 0). It is one line naming it; a file that is no
    image, or a hidden one, is none of the set's, as before."""
    for c in ("ant", "bee"):
        (tmp_path / "val" / c).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "val" / c / "0.png")
    (tmp_path / "val" / "notes.txt").write_text("not an image")
    Image.new("RGB", (8, 8)).save(tmp_path / "val" / ".hidden.png")
    assert rd.load_class_folders(tmp_path / "val", ["ant", "bee"], 8, "--id").labels.tolist() == [0, 1]
    Image.new("RGB", (8, 8)).save(tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG")
    with pytest.raises(UserError) as e:
        rd.load_class_folders(tmp_path / "val", ["ant", "bee"], 8, "--id")
    assert str(e.value) == (f"--id {tmp_path / 'val'}: 1 image(s) beside the class folders, e.g. "
                            "ILSVRC2012_val_00000001.JPEG: an image has no class there; move each into its class "
                            "folder, or out of this folder")
    shutil.copytree(tmp_path / "val", tmp_path / "train")
    with pytest.raises(UserError, match=rf"^--data {tmp_path / 'train'}: 1 image\(s\) beside the class folders"):
        rd.load_id_split(None, str(tmp_path), "train")


def test_an_eval_class_folder_must_hold_the_models_classes(tmp_path):
    """eval --id DIR: the folder's classes must be the model's (docs/method.md §6), or the labels
    would be read against the wrong class names."""
    for c in ("ant", "bee"):
        (tmp_path / c).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / c / "0.png")
    assert rd.load_class_folders(tmp_path, ["ant", "bee"], 8, "--id").labels.tolist() == [0, 1]
    with pytest.raises(UserError, match=r"^--id .*: class folders do not match the class list "
                                        r"\(unknown: \['bee'\], missing: \['cow'\]\)$"):
        rd.load_class_folders(tmp_path, ["ant", "cow"], 8, "--id")


def test_the_data_root_is_the_flag_then_clip_smot_data_then_the_home_cache(tmp_path, monkeypatch):
    """docs/resnet.md: torchvision sets live in --data ROOT, $CLIP_SMOT_DATA, or ~/.cache/clip_smot/datasets."""
    monkeypatch.setenv("CLIP_SMOT_DATA", str(tmp_path / "env"))
    assert rd.data_root(str(tmp_path / "flag")) == tmp_path / "flag"
    assert rd.data_root(None) == tmp_path / "env"
    monkeypatch.delenv("CLIP_SMOT_DATA")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert rd.data_root(None) == tmp_path / "home" / ".cache" / "clip_smot" / "datasets"


def test_the_probed_hosts_are_those_torchvision_downloads_from(tmp_path, monkeypatch):
    """The offline probe opens the host and port of torchvision's own download URLs (SVHN's is
    plain http: port 80)."""
    from urllib.parse import urlsplit

    import torchvision.datasets as tvd

    def host(url):
        u = urlsplit(url)
        return (u.hostname, u.port or {"http": 80, "https": 443}[u.scheme])

    calls = []
    monkeypatch.setattr(rd, "_reachable", lambda h, timeout=3.0: calls.append(h) or False)
    for name, cls in (("cifar10", tvd.CIFAR10), ("cifar100", tvd.CIFAR100)):
        with pytest.raises(UserError, match=f"{name}: not found"):
            rd.load_id_split(name, str(tmp_path), "val")
        assert calls.pop() == host(cls.url)
    with pytest.raises(UserError, match="svhn: not found"):
        rd.load_ood_set("svhn", None, 32, data=str(tmp_path))
    assert calls == [host(tvd.SVHN.split_list["test"][0])]


def test_a_download_that_fails_is_one_line_naming_the_set_and_the_reason(tmp_path, monkeypatch):
    """torchvision raises RuntimeError for a download whose checksum does not match."""
    import torchvision.datasets as tvd

    class BadDownload:
        def __init__(self, root, download=False, **kwargs):
            raise RuntimeError("File not found or corrupted." if not download else "md5 mismatch")

    monkeypatch.setattr(tvd, "CIFAR10", BadDownload)
    monkeypatch.setattr(rd, "_reachable", lambda h, timeout=3.0: True)
    with pytest.raises(UserError, match=rf"^cifar10: download into {tmp_path} failed \(md5 mismatch\)$"):
        rd.load_id_split("cifar10", str(tmp_path), "train")


def test_torchvision_unavailable_reads_the_test_split_and_probes_only_a_missing_set(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # (the probe is monkeypatched: the message of no switch)
    import torchvision.datasets as tvd

    present, calls = {"test"}, []

    class FakeSVHN:  # (torchvision's contract: RuntimeError when the split's file is missing)
        def __init__(self, root, download=False, split="train"):
            if split not in present:
                raise RuntimeError("Dataset not found or corrupted.")

    monkeypatch.setattr(tvd, "SVHN", FakeSVHN)
    monkeypatch.setattr(rd, "_reachable", lambda h, timeout=3.0: calls.append(h) or False)
    assert rd.torchvision_unavailable("svhn", tmp_path) is None and calls == []  # there: offline or not
    present.clear()
    assert rd.torchvision_unavailable("svhn", tmp_path) == (
        f"svhn is not under {tmp_path} and ufldl.stanford.edu cannot be reached (offline?)")
    monkeypatch.setattr(rd, "_reachable", lambda h, timeout=3.0: True)
    assert rd.torchvision_unavailable("svhn", tmp_path) is None  # missing, but it can be downloaded
    present.add("train")  # only the train split there: the test split is what is read
    monkeypatch.setattr(rd, "_reachable", lambda h, timeout=3.0: False)
    assert rd.torchvision_unavailable("svhn", tmp_path) is not None


def test_torchvision_unavailable_reads_cifars_test_split_too(tmp_path, monkeypatch):
    """A CIFAR folder that holds only the training batches cannot be evaluated on: it is reported
    (offline) however complete its train split, and one with the test batch is not."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # (the probe is monkeypatched: the message of no switch)
    import torchvision.datasets as tvd

    present, reads = set(), []

    class FakeCIFAR100:  # (torchvision's contract: RuntimeError when the split's file is missing)
        def __init__(self, root, download=False, train=True):
            reads.append(train)
            if train not in present:
                raise RuntimeError("Dataset not found or corrupted.")

    monkeypatch.setattr(tvd, "CIFAR100", FakeCIFAR100)
    monkeypatch.setattr(rd, "_reachable", lambda h, timeout=3.0: False)
    present.add(True)  # the train split only
    assert rd.torchvision_unavailable("cifar100", tmp_path) == (
        f"cifar100 is not under {tmp_path} and www.cs.toronto.edu cannot be reached (offline?)")
    present.add(False)
    assert rd.torchvision_unavailable("cifar100", tmp_path) is None and reads == [False, False]


def test_torchvision_unavailable_names_a_set_that_is_there_but_damaged(tmp_path, monkeypatch):
    """`reproduce --cifar-root` checks the sets before anything runs: one whose folder is there,
    its files damaged (a download cut short), was "not under" the root, the folder in plain
    sight; it is named as train names it. Its files are never unpickled (their MD5 fails first)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # (the probe is monkeypatched: the message of no switch)
    monkeypatch.setattr(rd, "_reachable", lambda h, timeout=3.0: False)
    (tmp_path / "cifar-10-batches-py").mkdir()
    for name in ("data_batch_1", "test_batch", "batches.meta"):
        (tmp_path / "cifar-10-batches-py" / name).write_bytes(b"\x80\x02truncated")
    (tmp_path / "test_32x32.mat").write_bytes(b"")
    for name, folder, host in (("cifar10", "cifar-10-batches-py", "www.cs.toronto.edu"),
                               ("svhn", "test_32x32.mat", "ufldl.stanford.edu")):
        assert rd.torchvision_unavailable(name, tmp_path) == (
            f"{name} is incomplete or damaged under {tmp_path} ({folder} is there, but fails torchvision's MD5 "
            f"checks) and {host} cannot be reached (offline?)")
    assert rd.torchvision_unavailable("cifar100", tmp_path) == (
        f"cifar100 is not under {tmp_path} and www.cs.toronto.edu cannot be reached (offline?)")


def test_builtin_cifar_sets_keep_their_pixels_labels_split_and_download_choice(tmp_path, monkeypatch):
    """torchvision's CIFAR arrays are [N, H, W, C]: image k's pixel (y, x) of channel c is
    data[k, y, x, c]. An ID split takes --input-size; as an OOD set (any case of its name) it is
    the test split, unlabelled, at the input size; a root a file named is never downloaded into."""
    from types import SimpleNamespace

    data = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    calls = []

    def fake(name, root, download=True, **kwargs):
        calls.append((name, download, kwargs))
        return SimpleNamespace(data=data, classes=["a", "b"], targets=[1, 0, 1])

    monkeypatch.setattr(rd, "_torchvision", fake)
    s = rd.load_id_split("cifar10", str(tmp_path), "train")
    assert int(s.images[1, 2, 5, 7]) == int(data[1, 5, 7, 2]) and int(s.images[2, 0, 30, 3]) == int(data[2, 30, 3, 0])
    assert s.labels.tolist() == [1, 0, 1] and calls.pop() == ("cifar10", True, {"train": True})
    s = rd.load_id_split("cifar100", str(tmp_path), "val", input_size=16, download=False)
    assert s.input_size == 16 and tuple(s.images.shape) == (3, 3, 16, 16)
    assert calls.pop() == ("cifar100", False, {"train": False})
    s = rd.load_ood_set("CIFAR10", None, 16, data=str(tmp_path), download=False)
    assert s.name == "CIFAR10" and s.labels.tolist() == [-1, -1, -1] and tuple(s.images.shape) == (3, 3, 16, 16)
    assert s.input_size == 16 and calls.pop() == ("cifar10", False, {"train": False})


def test_builtin_sets_keep_cifars_class_names_and_read_svhns_test_split_as_it_is(tmp_path, monkeypatch):
    """A CIFAR ID split names its classes (a model's labels are their indices; eval checks an ID
    set's classes against the model's); SVHN as an OOD set is its test split, whose arrays are
    already [N, C, H, W] (torchvision's SVHN), unlabelled."""
    from types import SimpleNamespace

    nhwc = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    nchw = np.random.default_rng(1).integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
    calls = []

    def fake(name, root, download=True, **kwargs):
        calls.append((name, kwargs))
        if name == "svhn":
            return SimpleNamespace(data=nchw, labels=np.array([1, 2, 3]))
        return SimpleNamespace(data=nhwc, classes=["airplane", "automobile"], targets=[0, 1])

    monkeypatch.setattr(rd, "_torchvision", fake)
    assert rd.load_id_split("cifar10", str(tmp_path), "val").classnames == ["airplane", "automobile"]
    s = rd.load_ood_set("svhn", None, 32, data=str(tmp_path))
    assert calls[-1] == ("svhn", {"split": "test"})
    assert s.labels.tolist() == [-1, -1, -1] and int(s.images[2, 1, 7, 30]) == int(nchw[2, 1, 7, 30])


def test_a_small_id_folder_is_squashed_bilinearly_to_the_input_size(tmp_path):
    rng = np.random.default_rng(2)
    for split in ("train", "val"):
        (tmp_path / split / "a").mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)).save(tmp_path / split / "a" / "0.png")
    s = rd.load_id_split(None, str(tmp_path), "train", input_size=8)
    want = np.asarray(Image.open(tmp_path / "train" / "a" / "0.png").resize((8, 8), Image.BILINEAR))  # PIL's
    assert torch.equal(s.images[0], torch.from_numpy(want.copy()).permute(2, 0, 1))


def test_a_folders_input_size_is_32_up_to_64_pixels_on_the_longer_side(tmp_path):
    for (w, h), want in (((64, 64), 32), ((65, 20), 224), ((20, 65), 224), ((40, 10), 32)):
        root = tmp_path / f"{w}x{h}"
        (root / "train" / "a").mkdir(parents=True)
        Image.new("RGB", (w, h)).save(root / "train" / "a" / "0.png")
        assert rd.default_input_size(None, str(root)) == want, (w, h)
    assert [rd.default_input_size(d, None) for d in ("cifar10", "cifar100", "digits", "imagenet200")] == [32, 32, 32, 224]


def test_a_folders_input_size_comes_from_the_first_image_of_its_first_class(tmp_path):
    """docs/resnet.md (--input-size): 32 for folders whose first image is <= 64 px, that is the
    first image of the first class in sorted order, whatever the images of the other classes."""
    for c, side in (("ant", 20), ("bee", 100)):
        (tmp_path / "train" / c).mkdir(parents=True)
        Image.new("RGB", (side, side)).save(tmp_path / "train" / c / "0.png")
    assert rd.default_input_size(None, str(tmp_path)) == 32
    (tmp_path / "train" / "ant" / "0.png").unlink()
    Image.new("RGB", (100, 100)).save(tmp_path / "train" / "ant" / "0.png")
    Image.new("RGB", (20, 20)).save(tmp_path / "train" / "bee" / "0.png")
    assert rd.default_input_size(None, str(tmp_path)) == 224


def test_a_split_other_than_train_or_val_and_no_data_at_all_are_refused(tmp_path):
    with pytest.raises(ValueError, match="^split must be train or val, got 'test'$"):
        rd.load_id_split(None, str(tmp_path), "test")
    for data in (None, ""):  # (no --dataset either: a one-line error, not a TypeError of Path(None))
        with pytest.raises(UserError, match=r"^give --dataset NAME or --data DIR$"):
            rd.load_id_split(None, data, "train")


def test_missing_or_unknown_data_is_one_line_naming_what_is_missing(tmp_path):
    with pytest.raises(UserError, match=r"^--dataset imagenet200 needs --data IMAGENET_DIR"):
        rd.load_id_split("imagenet200", None, "train")
    (tmp_path / "in" / "train").mkdir(parents=True)
    with pytest.raises(UserError, match=r"^--data .*in: no val/ folder inside \(expected .*in/val/<wnid>/\*\.JPEG\)$"):
        rd.load_id_split("imagenet200", str(tmp_path / "in"), "val")
    good = tmp_path / "good"
    for split in ("train", "val"):
        (good / split / "a").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(good / split / "a" / "0.png")
    with pytest.raises(UserError, match=r"^--dataset tinyimagenet: unknown \(choose from cifar10, cifar100, imagenet200"):
        rd.load_id_split("tinyimagenet", str(good), "train")
    (tmp_path / "file-train" / "val" / "a").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "file-train" / "val" / "a" / "0.png")
    for root in (tmp_path / "no-train", tmp_path / "file-train"):  # a test split without training images
        (root / "val" / "a").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(root / "val" / "a" / "0.png")
    (tmp_path / "file-train" / "train").write_text("not a folder")
    for root in (tmp_path / "no-train", tmp_path / "file-train"):
        with pytest.raises(UserError, match=rf"^--data {root}: no train/ folder inside"):
            rd.load_id_split(None, str(root), "val", input_size=8)
    (good / "val" / "a" / "0.png").unlink()
    (good / "val" / "a").rmdir()
    (good / "val").rmdir()
    with pytest.raises(UserError, match=rf"^--data {good}: no val/ folder inside \(expected {good}/val/<class>/<image>\)$"):
        rd.load_id_split(None, str(good), "val", input_size=8)


def test_64_pixel_inputs_are_small_images_decoded_as_the_set_is_loaded(tmp_path):
    """docs/resnet.md: input sizes up to 64 are decoded once, above by the DataLoader."""
    import torchvision.transforms as T

    for split in ("train", "val"):
        (tmp_path / split / "a").mkdir(parents=True)
        Image.fromarray(np.random.default_rng(3).integers(0, 256, (70, 90, 3), dtype=np.uint8)).save(
            tmp_path / split / "a" / "0.png")
    for size, small in ((64, True), (65, False)):
        s = rd.load_id_split(None, str(tmp_path), "val", input_size=size)
        c = rd.load_class_folders(tmp_path / "val", ["a"], size, "--id")
        assert (s.images is not None, c.images is not None) == (small, small), size
    assert tuple(rd.load_id_split(None, str(tmp_path), "val", input_size=64).images.shape) == (1, 3, 64, 64)
    im = Image.open(tmp_path / "val" / "a" / "0.png")
    got = np.asarray(rd._eval_transform(64)(im)).astype(int)  # squashed as the decoded sets are, not cropped
    assert np.abs(got - np.asarray(T.Resize((64, 64))(im)).astype(int)).max() == 0


def test_resampling_may_take_half_the_memory_and_any_amount_when_it_is_unknown(monkeypatch):
    s = rd.SizedImageSet("x", [], torch.zeros(2, dtype=torch.long), 8, (0.5,) * 3, (0.5,) * 3,
                         images=torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    need = 2 * 3 * 16 * 16  # bytes of the set at 16 x 16
    monkeypatch.setattr(rd, "physical_memory", lambda: 2 * need - 1)
    with pytest.raises(UserError, match="more than half of this machine's"):
        rd.resize_set(s, 16)
    monkeypatch.setattr(rd, "physical_memory", lambda: 2 * need)  # exactly half
    assert tuple(rd.resize_set(s, 16).images.shape) == (2, 3, 16, 16)
    monkeypatch.setattr(rd, "physical_memory", lambda: None)  # the OS does not say
    assert tuple(rd.resize_set(s, 24).images.shape) == (2, 3, 24, 24)


def test_each_rank_takes_every_world_th_image_of_the_order_with_its_own_augmentation():
    """docs/resnet.md: the ranks share each epoch's permutation; crops and flips are seeded by
    seed, epoch and rank (two ranks do not crop alike)."""
    n, seed, epoch = 11, 3, 1
    labels = torch.arange(n)
    images = torch.randint(0, 256, (n, 3, 6, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(rd.mix_seed(seed, epoch)))
    for rank in (0, 1):
        got = list(rd.TensorBatches(images, labels, 2, torch.device("cpu"), seed, pad=2, flip=True, rank=rank,
                                    world=2).epoch(epoch))
        assert torch.cat([y for _, y in got]).tolist() == perm[rank::2][:5].tolist()
        g = torch.Generator().manual_seed(rd.mix_seed(seed, epoch, rank, 1))
        for x, y in got:
            assert torch.equal(x, rd.random_crop_flip(images[y], 2, True, g))


def test_the_first_unreadable_image_of_a_batch_is_the_one_named(tmp_path):
    files = []
    for i in range(3):
        f = tmp_path / f"{i}.png"
        Image.new("RGB", (80, 80), (i, i, i)).save(f)
        files.append(f)
    for f in files[1:]:
        f.write_bytes(f.read_bytes()[:60])  # truncated
    s = rd.SizedImageSet("x", [], torch.full((3,), -1), 72, (0.5,) * 3, (0.5,) * 3, files=files)
    with pytest.raises(UserError, match=rf"^{files[1]}: unreadable or truncated image"):
        list(rd.eval_batches(s, 3, torch.device("cpu")))


def test_file_batches_under_ddp_give_each_rank_an_equal_disjoint_share_a_new_one_each_epoch(tmp_path):
    """5 images over 2 ranks: 2 each (the last N mod world of the order are left out), another
    permutation each epoch (DistributedSampler.set_epoch)."""
    files = []
    for i in range(5):
        Image.new("RGB", (20, 20), (i, 0, 0)).save(tmp_path / f"{i}.png")
        files.append(tmp_path / f"{i}.png")
    ranks = [rd.FileBatches(files, torch.arange(5), 8, 4, torch.device("cpu"), seed=0, workers=0, rank=r, world=2)
             for r in range(2)]
    assert [len(b) for b in ranks] == [1, 1]
    epochs = []
    for epoch in range(4):
        shares = [torch.cat([y for _, y in b.epoch(epoch)]).tolist() for b in ranks]
        assert [len(s) for s in shares] == [2, 2] and not set(shares[0]) & set(shares[1]), shares
        epochs.append(shares)
    assert len({str(e) for e in epochs}) > 1


def test_eval_batches_of_files_keep_the_sets_order(tmp_path):
    files = []
    for i in range(6):
        Image.new("RGB", (80, 80), (40 * i, 0, 0)).save(tmp_path / f"{i}.png")
        files.append(tmp_path / f"{i}.png")
    s = rd.SizedImageSet("x", ["a", "b"], torch.tensor([0, 1, 1, 0, 1, 0]), 72, (0.5,) * 3, (0.5,) * 3, files=files)
    batches = list(rd.eval_batches(s, 4, torch.device("cpu")))
    assert torch.cat([y for _, y in batches]).tolist() == [0, 1, 1, 0, 1, 0]
    assert [int(x[0, 36, 36]) for xs, _ in batches for x in xs] == [0, 40, 80, 120, 160, 200]


def test_the_built_in_photos_and_textures_are_the_digits_ood_folders_of_those_names(tmp_path, monkeypatch):
    from clip_smot.common import digits

    for name, values in (("photos", (255,)), ("textures", (0, 100))):
        (tmp_path / "ood" / name).mkdir(parents=True)
        for j, v in enumerate(values):
            Image.new("RGB", (32, 32), (v, v, v)).save(tmp_path / "ood" / name / f"{j:04d}.png")
    monkeypatch.setattr(digits, "ensure_digits", lambda size=32, root=None: tmp_path)
    s = rd.load_ood_set("Textures", None, 16)
    assert s.name == "Textures" and s.labels.tolist() == [-1, -1] and tuple(s.images.shape) == (2, 3, 16, 16)
    assert s.images[:, 0, 0, 0].tolist() == [0, 100]


def test_only_images_more_than_twice_as_long_as_wide_skip_torchvisions_resize_and_crop():
    t = rd._ResizeCenterCrop(8)
    t.plain = lambda img: "torchvision's Resize + CenterCrop"
    for w, h in ((20, 10), (10, 20), (12, 10)):  # at most 2:1
        assert t(Image.new("RGB", (w, h))) == "torchvision's Resize + CenterCrop", (w, h)
    for w, h in ((21, 10), (10, 21)):  # past 2:1: the crop's box resampled straight from the image
        assert t(Image.new("RGB", (w, h))).size == (8, 8), (w, h)


def test_a_data_root_name_too_long_offline_is_one_line(tmp_path, monkeypatch):
    """$CLIP_SMOT_DATA whose last name is 300 characters (found by fuzzing the environment),
    offline: train --dataset cifar10 ended in 'OSError: [Errno 36] File name too long' from the
    check for a damaged copy, not the one line saying the set is not there."""
    from click.testing import CliRunner

    from clip_smot.cli import cli

    monkeypatch.setattr(rd, "_reachable", lambda host, timeout=3.0: False)  # (never the network)
    monkeypatch.setenv("CLIP_SMOT_DATA", str(tmp_path / ("d" * 300)))
    res = CliRunner().invoke(cli, ["train", "--dataset", "cifar10", "--arch", "resnet_tiny", "--device", "cpu",
                                   "--workers", "0", "--out", str(tmp_path / "run"), "--dry-run"])
    assert res.exit_code == 1 and isinstance(res.exception, (SystemExit, type(None))), repr(res.exception)
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "cifar10" in lines[0] and "Traceback" not in res.output, res.output
    assert list(tmp_path.iterdir()) == []
