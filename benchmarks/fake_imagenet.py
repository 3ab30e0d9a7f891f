"""Synthetic ImageNet and OOD folders for ``benchmarks/table8_time.sh`` (what ``clip-smot reproduce
table8`` reads), and, with ``--tiny-models``, a tiny random CLIP and CAM network for CPU smoke runs
(``--random-models``: full-size ones with random weights, for a GPU with no weights to download).

Writes ``ROOT/imagenet/train/<wnid>/`` (``--train-per-class`` JPEGs), ``ROOT/imagenet/val/<wnid>/``
(``--val-per-class``) for the first ``--classes`` ImageNet-1k wnids, and ``ROOT/ood/{iNaturalist,
SUN,Places,Textures}/`` (``--ood-per-set`` each), every image a ``--size`` JPEG made by
``score_throughput.make_jpegs`` (a smooth colour field with noise: it compresses and decodes like
a photograph), in ``--jobs`` processes (``--distinct N``: N JPEGs written in ``ROOT/pool``, every
image a hard link to one of them). A folder written before with the same arguments is kept
(``ROOT/done.json`` records them). Defaults: the real pipeline's sizes (1000 classes, 16 training
images a class: the 16 shots the fits draw; ImageNet's 50,000 val images; 10,000 images in each of
the four OOD sets; 500x375 pixels)::

    python benchmarks/fake_imagenet.py runs/table8_time/data --jobs 16
    python benchmarks/fake_imagenet.py /tmp/t8 --classes 3 --val-per-class 2 --ood-per-set 2 --size 64x48 \\
        --tiny-models /tmp/t8/models
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

OOD_SETS = ("iNaturalist", "SUN", "Places", "Textures")  # clip_smot.reproduce.IMAGENET_OOD
TINY_CLIP = {  # the tests' tiny ViT (tests/conftest.py)
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def _write(folder: Path, n: int, size: tuple[int, int], seed: int, start: int) -> int:
    from score_throughput import make_jpegs

    make_jpegs(folder, n, size, seed, start)
    return n


def _link(pool: Path, distinct: int, folder: Path, n: int, start: int, first: int) -> None:
    """``folder``'s ``n`` JPEGs from the ``start``-th, named as :func:`~score_throughput.make_jpegs`
    names them, as hard links to the pool's files: the ``first``-th of the pool, then on round."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        os.link(pool / f"{(first + i) % distinct:07d}.jpg", folder / f"{start + i:07d}.jpg")


def write_data(root: Path, classes: int, train: int, val: int, ood: int, size: tuple[int, int], jobs: int,
               distinct: int = 0) -> None:
    """The folders (see the module docstring), unless ``root/done.json`` records these arguments.
    ``distinct``: write that many JPEGs (in ``root/pool``) and make every image a hard link to
    one of them, in turn (0: every image its own JPEG)."""
    from clip_smot.common.bundled import imagenet_wnids

    wanted = {"classes": classes, "train_per_class": train, "val_per_class": val, "ood_per_set": ood,
              "size": list(size), **({"distinct": distinct} if distinct else {})}
    done = root / "done.json"
    if done.is_file() and json.loads(done.read_text()) == wanted:
        return
    if root.exists() and any(root.iterdir()):
        raise SystemExit(f"{root}: holds other data than asked for; delete it or give another folder")
    work = [(root / "imagenet" / split / w, n, size, 1000 * k + (split == "val"))
            for k, w in enumerate(imagenet_wnids()[:classes]) for split, n in (("train", train), ("val", val))]
    work = [(folder, n, size, seed, 0) for folder, n, size, seed in work]
    chunk = 500  # an OOD set's 10,000 JPEGs in 20 calls: the --jobs processes share them
    work += [(root / "ood" / name, min(chunk, ood - s), size, 10_000_000 + k, s)
             for k, name in enumerate(OOD_SETS) for s in range(0, ood, chunk)]
    if distinct:  # the pool's JPEGs written, every image a link to one of them
        links, first = work, 0
        work = [(root / "pool", min(chunk, distinct - s), size, 0, s) for s in range(0, distinct, chunk)]
    with ProcessPoolExecutor(jobs) as pool:
        list(pool.map(_write, *zip(*work)))
    if distinct:
        for folder, n, _, _, start in links:
            _link(root / "pool", distinct, folder, n, start, first)
            first += n
    done.write_text(json.dumps(wanted))


def _random_clip(name: str, path: Path) -> None:
    """open_clip's ``name`` with seeded random weights, saved as a .safetensors checkpoint at
    ``path`` (written whole, then renamed: a killed write leaves no file that looks done)."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(1234)
    model = open_clip.create_model(name, pretrained=None)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path.with_suffix(".partial")))
    os.replace(path.with_suffix(".partial"), path)


def write_tiny_models(folder: Path) -> dict[str, str]:
    """A tiny random CLIP (config JSON and .safetensors) and CAM ResNet (.pth): --model,
    --pretrained and --cam-model of a CPU smoke run."""
    import open_clip
    import torch
    from torchvision.models.resnet import BasicBlock, ResNet

    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "clip-smot-tiny.json"
    config.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(str(config))
    _random_clip("clip-smot-tiny", folder / "tiny.safetensors")
    torch.save(ResNet(BasicBlock, [1, 1, 1, 1], num_classes=1000).state_dict(), folder / "cam.pth")
    return {"model": str(config), "pretrained": str(folder / "tiny.safetensors"), "cam_model": str(folder / "cam.pth")}


def write_random_models(folder: Path) -> dict[str, str]:
    """The real pipeline's networks with random weights, for a GPU timing where no weights can be
    downloaded: ViT-B-16 (a seeded random checkpoint file, .safetensors) and a torchvision ResNet-18
    state dict (.pth) as the CAM network. The same shapes, so the same time as with trained weights;
    and weights in a file, as a tag's are, so the evaluations share the feature cache as a user's
    run does (``--pretrained none`` is never cached: its weights differ at every load)."""
    import torch
    from torchvision.models import resnet18

    folder.mkdir(parents=True, exist_ok=True)
    clip = folder / "ViT-B-16-random.safetensors"
    if not clip.is_file():
        _random_clip("ViT-B-16", clip)
    torch.manual_seed(1234)
    torch.save(resnet18(num_classes=1000).state_dict(), folder / "resnet18-random.pth")
    return {"model": "ViT-B-16", "pretrained": str(clip), "cam_model": str(folder / "resnet18-random.pth")}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("root", type=Path)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--train-per-class", type=int, default=16)
    p.add_argument("--val-per-class", type=int, default=50)
    p.add_argument("--ood-per-set", type=int, default=10_000)
    p.add_argument("--size", default="500x375", help="WIDTHxHEIGHT of each JPEG")
    p.add_argument("--jobs", type=int, default=4, help="processes writing JPEGs")
    p.add_argument("--distinct", type=int, default=0, metavar="N",
                   help="write N JPEGs and make every image a hard link to one of them (0: all distinct); the "
                        "same bytes to decode, written in seconds instead of minutes")
    models = p.add_mutually_exclusive_group()
    models.add_argument("--tiny-models", type=Path, metavar="DIR", help="also write a tiny CLIP and CAM network here")
    models.add_argument("--random-models", type=Path, metavar="DIR",
                        help="also write a random ViT-B-16 checkpoint and ResNet-18 CAM network here")
    args = p.parse_args(argv)
    size = tuple(int(v) for v in args.size.lower().split("x"))
    write_data(args.root, args.classes, args.train_per_class, args.val_per_class, args.ood_per_set, size, args.jobs,
               args.distinct)
    if args.tiny_models:
        print(json.dumps(write_tiny_models(args.tiny_models)))
    if args.random_models:
        print(json.dumps(write_random_models(args.random_models)))


if __name__ == "__main__":
    main()
