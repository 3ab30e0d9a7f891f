"""Time SMOT epochs of a ResNet-18 on CIFAR-sized data: the project's data path against a plain loop.

Synthetic data: ``--images`` random uint8 images [3, 32, 32] (default 50,000, CIFAR-10's
training set size) with random labels over 10 classes. Each step trains on 128 images and
their 128 masked copies, with CAMs of the true label from a frozen (random) base ResNet-18.

* project path (``clip_smot.resnet.train.train_epoch``): the whole set on the device as uint8, random
  crop + flip on the device, thresholds drawn once per epoch, bf16 autocast and channels_last
  on CUDA, fused SGD, no host synchronisation per step (``--variants``: also ``--compile`` and
  ``--cuda-graph`` of ``clip-smot train``);
* reference: what a plain PyTorch loop does: a DataLoader with per-image crop/flip on CPU
  workers, fp32, thresholds drawn per batch on the host, ``loss.item()`` every step.

Both get a warm-up (``--warmup-steps``) and then ``--epochs`` (``--reference-epochs``) timed
epochs; the median epoch time is reported. The last line printed is JSON: epoch_s, reference_epoch_s, speedup, device,
peak_mem_gib, images (and a few more fields).

    python benchmarks/resnet_epoch.py --device cuda
    python benchmarks/resnet_epoch.py --device cpu --images 256 --epochs 1   # a quick CPU check
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from clip_smot.cam import CAMProvider
from clip_smot.common.device import autocast, resolve_device
from clip_smot.resnet.data import CIFAR10_MEAN, CIFAR10_STD, TensorBatches
from clip_smot.resnet.networks import build_network
from clip_smot.resnet.train import (
    StepParts,
    compile_for_training,
    make_optimizer,
    train_epoch,
)
from clip_smot.smot import (
    cam_mask,
    perturb,
    sample_thresholds,
    smoothing_eps,
    smot_loss,
)

ALPHA, BETA, LAM, T = 50.0, 20.0, 0.1, 10.0  # docs/method.md §1 defaults for CIFAR-10
VARIANTS = ("eager", "compile", "cuda-graph")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cam(device: torch.device, arch: str, k: int, channels_last: bool) -> CAMProvider:
    torch.manual_seed(1)
    base = build_network(arch, k, 32).to(device)
    if channels_last:
        base = base.to(memory_format=torch.channels_last)
    return CAMProvider(base, CIFAR10_MEAN, CIFAR10_STD, labels_match=True)


def _project_setup(images, labels, args, device, variant: str):
    """Model, optimizer, step parts, amp, batches and the callable the steps use, for one variant."""
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    model = build_network(args.arch, args.classes, 32).to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    opt = make_optimizer(model, 0.1, 0.9, 5e-4, device)  # fused on CUDA, as clip-smot train
    cam = _cam(device, args.arch, args.classes, cuda)
    step_model = model
    if variant in ("compile", "cuda-graph"):  # what clip-smot train --compile / --cuda-graph do
        step_model = compile_for_training(model, cam, cuda_graph=variant == "cuda-graph")
    parts = StepParts(method="smot", mean=torch.tensor(CIFAR10_MEAN, device=device).view(1, 3, 1, 1),
                      std=torch.tensor(CIFAR10_STD, device=device).view(1, 3, 1, 1), cam=cam, T=T, lam=LAM,
                      channels_last=cuda, cuda_graph=variant == "cuda-graph")
    amp = autocast(device, "bf16" if cuda else "fp32")
    batches = TensorBatches(images, labels, args.batch_size, device, seed=0)
    return model, step_model, opt, parts, amp, batches


def project_epochs(images, labels, args, device) -> tuple[list[float], float]:
    """The project's path; returns (epoch times, peak GPU memory in GiB)."""
    cuda = device.type == "cuda"
    _, step_model, opt, parts, amp, batches = _project_setup(images, labels, args, device,
                                                             "compile" if args.compile else "eager")
    step_model.train()
    kw = dict(seed=0, alpha=ALPHA, beta=BETA, n_samples=batches.per_rank)
    train_epoch(step_model, opt, batches, 0, parts, amp, max_steps=args.warmup_steps, **kw)
    _sync(device)
    times = _timed_epochs(step_model, opt, batches, parts, amp, kw, args.epochs, device)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else 0.0
    return times, peak


def _timed_epochs(step_model, opt, batches, parts, amp, kw, epochs, device) -> list[float]:
    """Wall time of epochs 1..``epochs`` (peak-memory counter reset first on CUDA)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        stats = train_epoch(step_model, opt, batches, epoch, parts, amp, **kw)
        float(stats["loss_sum"])  # the epoch's end: wait for the device
        times.append(time.perf_counter() - t0)
    return times


def variant_epochs(images, labels, args, device, variant: str) -> dict:
    """One variant: a whole warm-up epoch (compilation, CUDA graph recording), then timed epochs.

    ``compile_s`` is the warm-up epoch's time beyond a steady epoch's: the one-off cost.
    ``warmup_loss`` (the warm-up epoch's mean loss, same seeds for every variant) lets the
    variants be compared for agreement.
    """
    cuda = device.type == "cuda"
    torch._dynamo.reset()
    if cuda:
        torch.cuda.empty_cache()
    _, step_model, opt, parts, amp, batches = _project_setup(images, labels, args, device, variant)
    step_model.train()
    kw = dict(seed=0, alpha=ALPHA, beta=BETA, n_samples=batches.per_rank)
    t0 = time.perf_counter()
    stats = train_epoch(step_model, opt, batches, 0, parts, amp, **kw)
    warm_loss = float(stats["loss_sum"]) / stats["seen"]
    warm_s = time.perf_counter() - t0
    times = _timed_epochs(step_model, opt, batches, parts, amp, kw, args.epochs, device)
    epoch_s = statistics.median(times)
    return {"epoch_s": round(epoch_s, 4), "epoch_times_s": [round(t, 4) for t in times],
            "warmup_epoch_s": round(warm_s, 2), "compile_s": round(max(warm_s - epoch_s, 0.0), 2),
            "warmup_loss": round(warm_loss, 5),
            "step_ms": round(1000 * epoch_s / len(batches), 3),
            "peak_mem_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 3) if cuda else 0.0}


class _PlainSet(torch.utils.data.Dataset):
    def __init__(self, images, labels):
        import torchvision.transforms as TT

        self.images, self.labels = images, labels
        self.tf = TT.Compose([TT.RandomCrop(32, padding=4), TT.RandomHorizontalFlip()])

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.tf(self.images[i].float() / 255), self.labels[i]


def reference_epochs(images, labels, args, device) -> list[float]:
    """A plain fp32 DataLoader loop with the same model, CAMs and loss."""
    torch.manual_seed(0)
    model = build_network(args.arch, args.classes, 32).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    cam = _cam(device, args.arch, args.classes, False)
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    loader = torch.utils.data.DataLoader(_PlainSet(images, labels), batch_size=args.batch_size, shuffle=True,
                                         num_workers=args.reference_workers, pin_memory=device.type == "cuda",
                                         persistent_workers=args.reference_workers > 0)

    def epoch(max_steps=None):
        model.train()
        for step, (x, y) in enumerate(loader):
            if max_steps is not None and step >= max_steps:
                break
            x, y = x.to(device), y.to(device)
            cams = cam(x, y)
            t = sample_thresholds(len(y), ALPHA, BETA).to(device)
            xm = perturb(x, cam_mask(cams, t))
            logits = model((torch.cat([x, xm]) - mean.to(device)) / std.to(device))
            loss = smot_loss(logits[:len(y)], logits[len(y):], y, smoothing_eps(t, T), LAM)
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss.item()  # the usual per-step logging

    epoch(args.warmup_steps)
    times = []
    for _ in range(args.reference_epochs):
        t0 = time.perf_counter()
        epoch()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--images", type=int, default=50_000, help="synthetic training images (CIFAR-10: 50,000)")
    p.add_argument("--epochs", type=int, default=3, help="timed epochs per path (median reported)")
    p.add_argument("--batch-size", type=int, default=128, help="original images per step (+ as many masked)")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--reference-epochs", type=int, default=2, help="timed epochs of the reference loop")
    p.add_argument("--warmup-steps", type=int, default=20)
    p.add_argument("--reference-workers", type=int, default=4)
    p.add_argument("--skip-reference", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the trained and the CAM network (project path)")
    p.add_argument("--variants", default=None,
                   help=f"comma list of {','.join(VARIANTS)}: each gets a warm-up epoch and --epochs timed epochs "
                        "(a failing variant reports its error); one JSON line per variant, then the summary")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="--variants: start no further variant (nor the reference) after this many seconds")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, args.classes, (args.images,), generator=g)
    if args.variants is not None:
        return run_variants(images, labels, args, device)

    times, peak = project_epochs(images, labels, args, device)
    ref = [] if args.skip_reference else reference_epochs(images, labels, args, device)
    epoch_s = statistics.median(times)
    ref_s = statistics.median(ref) if ref else None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    result = {"epoch_s": round(epoch_s, 4), "reference_epoch_s": round(ref_s, 4) if ref_s else None,
              "speedup": round(ref_s / epoch_s, 2) if ref_s else None, "device": name,
              "peak_mem_gib": round(peak, 3), "images": args.images, "batch_size": args.batch_size,
              "arch": args.arch, "compile": args.compile, "epoch_times_s": [round(t, 4) for t in times],
              "reference_epoch_times_s": [round(t, 4) for t in ref]}
    print(f"project path: {epoch_s:.3f} s/epoch; reference: " + (f"{ref_s:.3f} s/epoch" if ref_s else "skipped"),
          file=sys.stderr)
    print(json.dumps(result))
    return result


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"


def run_variants(images, labels, args, device) -> dict:
    """Each variant of --variants, then the reference; a variant that fails reports its error."""
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in names if v not in VARIANTS]
    if bad:
        raise SystemExit(f"--variants: unknown {', '.join(bad)} (choose from {', '.join(VARIANTS)})")
    start = time.perf_counter()
    results = {}
    def over() -> bool:
        return args.max_seconds is not None and time.perf_counter() - start > args.max_seconds

    for name in names:
        if over():
            results[name] = {"skipped": f"--max-seconds {args.max_seconds:g} reached"}
            print(json.dumps({"variant": name, **results[name]}), flush=True)
            continue
        try:
            if name == "cuda-graph" and device.type != "cuda":
                raise RuntimeError("CUDA graphs need a CUDA device")
            results[name] = variant_epochs(images, labels, args, device, name)
        except Exception as e:  # report and go on: one run measures every variant it can
            results[name] = {"error": f"{type(e).__name__}: {str(e)[:500]}"}
        print(json.dumps({"variant": name, **results[name]}), flush=True)
    ref_s = None
    if not args.skip_reference and over():
        results["reference"] = {"skipped": f"--max-seconds {args.max_seconds:g} reached"}
    elif not args.skip_reference:
        try:
            ref = reference_epochs(images, labels, args, device)
            ref_s = statistics.median(ref)
        except Exception as e:
            results["reference"] = {"error": f"{type(e).__name__}: {str(e)[:500]}"}
    timed = {k: v["epoch_s"] for k, v in results.items() if "epoch_s" in v}
    best = min(timed, key=timed.get) if timed else None
    summary = {"variants": {k: {**v, **({"speedup": round(ref_s / v["epoch_s"], 2)} if ref_s and "epoch_s" in v
                                         else {})} for k, v in results.items()},
               "reference_epoch_s": round(ref_s, 4) if ref_s else None, "best": best,
               "best_epoch_s": timed.get(best), "device": _device_name(device), "images": args.images,
               "batch_size": args.batch_size, "arch": args.arch, "torch": torch.__version__,
               "total_s": round(time.perf_counter() - start, 1)}
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
