"""Time a whole `clip-smot fit` run end to end on a synthetic ImageNet-size few-shot folder.

Writes (once, reused afterwards) ``--classes`` x ``--shots`` synthetic JPEGs under real
ImageNet-1k wnids (smooth random colour fields with a bright blob, ``--image-size`` pixels,
like a resized ImageNet photo), a ResNet-18 state dict with random weights as the CAM network
(the same compute as torchvision's ImageNet weights, which need a download), and runs
:func:`clip_smot.clip.fit.run_fit` with random CLIP weights (``--pretrained none``: the same compute
as the pretrained ones). Everything counts: decoding, CAMs, every epoch, the export.

    python benchmarks/fit_e2e.py --device cpu --classes 4 --shots 2 --epochs 1 --model ViT-B-16
    python benchmarks/fit_e2e.py --device cuda   # 1000 classes x 16 shots, 50 epochs (issue 6: < 8 min)
    python benchmarks/fit_e2e.py --device cuda --epochs 5 --no-compile   # a shorter run, layers not compiled
    python benchmarks/fit_e2e.py --device cuda --text-attention causal --no-compile --no-cuda-graph \
        --no-overlap-encoders   # the plain eager step (fit's defaults before run 3)

The speed options default to `clip-smot fit`'s (on a GPU: FlexAttention, compiled layers, a CUDA
graph, overlapped encoders); the JSON gives them as the fit resolved them (its config.json).

The last line printed is one JSON object: ``seconds`` (wall time of run_fit), ``seconds_setup``
(everything but the epochs: decode + CAMs + prompt + export), ``seconds_per_epoch`` (median),
``seconds_first_epoch`` (with any compiling and CUDA-graph capture), ``ms_per_step``,
``images``, ``epochs``, ``device``, ``peak_mem_gib``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clip_smot.clip.fewshot import imagenet_wnids
from clip_smot.clip.fit import FitConfig, run_fit


def _write_class(root: Path, wnid: str, shots: int, size: int, seed: int) -> None:
    from PIL import Image

    d = root / "train" / wnid
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(shots):
        low = rng.random((3, 4, 4))  # a smooth field: bilinear upsampling of 4x4 noise
        img = np.stack([np.array(Image.fromarray((c * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR))
                        for c in low], axis=-1).astype(np.float32)
        cy, cx, r = rng.random(3) * [1, 1, 0.3] + [0, 0, 0.1]
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r**2))[..., None] * 200
        Image.fromarray(np.clip(img + blob, 0, 255).astype(np.uint8)).save(d / f"{wnid}_{i}.JPEG", quality=90)


def make_dataset(root: Path, classes: int, shots: int, size: int, workers: int) -> Path:
    """``root/train/<wnid>/*.JPEG``: ``shots`` images for each of the first ``classes`` wnids."""
    marker = root / f"done-{classes}-{shots}-{size}"
    if not marker.exists():
        wnids = imagenet_wnids()[:classes]
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda a: _write_class(root, a[1], shots, size, a[0]), enumerate(wnids)))
        marker.write_text("ok")
    return root


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--shots", type=int, default=16)
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--model", default="ViT-B-16")
    p.add_argument("--precision", default="bf16")
    on_off = argparse.BooleanOptionalAction  # default None: fit's default for the device
    p.add_argument("--cuda-graph", action=on_off, default=None, help="fit --cuda-graph")
    p.add_argument("--text-attention", default="auto", help="fit --text-attention (auto, causal, mask, square, flex)")
    p.add_argument("--text-residual", default="fp32", help="fit --text-residual (fp32, precision)")
    p.add_argument("--compile", action=on_off, default=None, help="fit --compile (text layers and image blocks)")
    p.add_argument("--overlap-encoders", action=on_off, default=None,
                   help="fit --overlap-encoders (image encoder on a 2nd stream)")
    p.add_argument("--image-size", type=int, default=320, help="side of the synthetic JPEGs")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 4)
    p.add_argument("--root", default="/tmp/clip_smot_e2e")
    p.add_argument("--prepare-only", action="store_true",
                   help="write the JPEGs and the CAM network, then stop (a later run reuses them)")
    args = p.parse_args()

    root = Path(args.root)
    t0 = time.time()
    make_dataset(root / "data", args.classes, args.shots, args.image_size, args.workers)
    print(f"dataset ready in {time.time() - t0:.1f} s", flush=True)
    cam = root / "resnet18-random.pth"
    if not cam.exists():
        import torchvision

        torch.manual_seed(0)
        tmp = cam.with_suffix(f".tmp{os.getpid()}")  # renamed when whole: a concurrent run never reads half a file
        torch.save(torchvision.models.resnet18(num_classes=1000).state_dict(), tmp)
        os.replace(tmp, cam)
    if args.prepare_only:
        return
    out = root / f"run-{time.time_ns()}"
    cfg = FitConfig(data=str(root / "data"), shots=args.shots, model=args.model, pretrained="none",
                    cam_model=str(cam), epochs=args.epochs, batch_size=args.batch_size, precision=args.precision,
                    device=args.device, workers=args.workers, out=str(out), cuda_graph=args.cuda_graph,
                    text_attention=args.text_attention, text_residual=args.text_residual, compile=args.compile,
                    overlap_encoders=args.overlap_encoders)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    run_fit(cfg)
    seconds = time.time() - t0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    used = json.loads((out / "config.json").read_text())  # the speed options as the fit resolved them
    per_epoch = [r["seconds"] for r in log]
    n = args.classes * args.shots
    steps = n // min(args.batch_size, n)
    result = {
        "seconds": round(seconds, 2),
        "seconds_setup": round(seconds - sum(per_epoch), 2),
        "seconds_per_epoch": round(statistics.median(per_epoch), 3),
        "seconds_first_epoch": round(per_epoch[0], 3),  # with any compiling and graph capture
        "ms_per_step": round(1000 * statistics.median(per_epoch) / steps, 2),
        "images": n,
        "classes": args.classes,
        "epochs": args.epochs,
        "model": args.model,
        "precision": args.precision,
        **{k: used[k] for k in ("cuda_graph", "text_attention", "text_residual", "compile", "overlap_encoders")},
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu" else "cpu",
        "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
