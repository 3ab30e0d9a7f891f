"""Images per second of ``clip-smot score`` against an MCM-style reference, on synthetic JPEGs.

Writes ``--n`` synthetic JPEGs of ``--size`` (default 500x375, ImageNet's typical size; smooth
colour fields with noise, so that they compress and decode like photographs), builds the
``--model`` architecture with random weights (the same compute as pretrained ones, no
download) and a random prompt of ``--classes`` classes, then times, each as a fresh process
on the same files:

- **reference**: what MCM's evaluation does: a torch DataLoader (``--workers`` processes) over
  PIL + open_clip's own evaluation transform, ``encode_image`` in batches of ``--batch-size``,
  normalised features times the text features, the max softmax;
- **score**: ``python -m clip_smot score --no-cache --decode cpu`` (one process; PIL in the
  ``--workers`` DataLoader processes);
- **score_gpu_decode**: the same with ``--decode gpu`` (the JPEGs decoded by ``decode_jpeg`` on
  the CUDA device); on another device this run is skipped, and the JSON says so
  (``score_gpu_decode: "skipped: ..."``), with no figure;
- **score_gpu_decode_fp32**: the same with ``--precision fp32`` (the reference's arithmetic; the
  runs above use score's default, bf16 autocast on CUDA, fp32 on the CPU): what the precision
  alone is worth;
- **score_torchrun_N**: ``score`` under ``torchrun --nproc_per_node N`` for each N of
  ``--torchrun`` (``--workers`` decoding processes each; ``--decode gpu`` on CUDA, else ``cpu``).

Each figure is the wall time of the whole process (Python and torch start-up, model build,
decoding, encoding, the CSV) and ``images_per_s = n / seconds``. At thousands of images a second
the start-up (10 s or so) is no small part: ``--startup-n K`` also times every run on the first
K images and reports ``steady_images_per_s = (n - K) / (seconds - seconds on K)``, the rate once
running. The JPEGs are written first, in ``--jobs`` processes (not timed). Prints one JSON
object. Examples (tiny.json: a tiny open_clip model config, e.g. tests/conftest.py's TINY_CLIP_CONFIG
written to a file)::

    python benchmarks/score_throughput.py --device cpu --model tiny.json --n 256 --size 96x72
    python benchmarks/score_throughput.py --device cuda --n 20000 --workers 16 --torchrun 1 --startup-n 1000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_jpegs(folder: Path, n: int, size: tuple[int, int], seed: int = 0, start: int = 0) -> None:
    """``n`` JPEGs (quality 90) of ``size`` (width, height): a smooth colour field plus noise,
    named by their index from ``start`` (``0000012.jpg``)."""
    rng = np.random.default_rng(seed if start == 0 else (seed, start))
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + n):
        a, b, c = rng.uniform(0.005, 0.05, 3)
        base = np.stack([np.sin(a * xx + i), np.cos(b * yy), np.sin(c * (xx + yy))], -1)  # [h, w, 3]
        img = 127.5 * (base + 1) + rng.normal(0, 12, (h, w, 3))
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(folder / f"{i:07d}.jpg", quality=90)


def write_jpegs(folder: Path, n: int, size: tuple[int, int], jobs: int, seed: int = 0, chunk: int = 500) -> None:
    """:func:`make_jpegs` in ``jobs`` processes, ``chunk`` images each call (one JPEG takes 10 to
    20 ms: 20,000 of them in one process would take minutes)."""
    from concurrent.futures import ProcessPoolExecutor

    starts = range(0, n, chunk)
    if jobs <= 1 or len(starts) == 1:
        for s in starts:
            make_jpegs(folder, min(chunk, n - s), size, seed, s)
        return
    with ProcessPoolExecutor(jobs) as pool:
        list(pool.map(make_jpegs, *zip(*[(folder, min(chunk, n - s), size, seed, s) for s in starts])))


def make_prompt(path: Path, model: str, classes: int) -> None:
    """A prompt file of random context and text features for ``model`` with random weights."""
    from clip_smot.clip.model import load_clip
    from clip_smot.clip.prompt_file import save_prompt

    clip = load_clip(model, None)
    e, d = clip.config["embed_dim"], clip.config["text_cfg"]["width"]
    g = torch.Generator().manual_seed(0)
    save_prompt(path, torch.randn(4, d, generator=g), F.normalize(torch.randn(classes, e, generator=g), dim=-1),
                clip.identity(), 4, "end", False, [f"class {k}" for k in range(classes)], {"benchmark": True})


class _Files(torch.utils.data.Dataset):
    def __init__(self, paths, transform):
        self.paths, self.transform = paths, transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return self.transform(Image.open(self.paths[i]).convert("RGB"))


def reference(folder: str, model: str, classes: int, batch_size: int, workers: int, device: str) -> None:
    """MCM's loop (run in its own process by :func:`main`): DataLoader + PIL + open_clip."""
    import open_clip

    if model.endswith(".json"):
        open_clip.add_model_config(model)
        model = Path(model).stem
    net, _, preprocess = open_clip.create_model_and_transforms(model, pretrained=None, device=device)
    net.eval()
    text = F.normalize(torch.randn(classes, net.text_projection.shape[1], device=device), dim=-1)
    paths = sorted(str(p) for p in Path(folder).glob("*.jpg"))
    loader = torch.utils.data.DataLoader(_Files(paths, preprocess), batch_size=batch_size, num_workers=workers,
                                         pin_memory=device.startswith("cuda"))
    scores = []
    with torch.inference_mode():
        for x in loader:
            f = F.normalize(net.encode_image(x.to(device, non_blocking=True)).float(), dim=-1)
            scores.append((f @ text.T).softmax(-1).amax(-1).cpu())  # MCM, tau = 1
    assert sum(len(s) for s in scores) == len(paths)


def _timed(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:6])}... failed:\n{res.stderr[-3000:]}")
    return time.perf_counter() - start


def _commands(args, device: str, cuda: bool, prompt: Path, folder: Path, out: str) -> dict[str, list[str]]:
    """The timed runs' command lines over the JPEGs of ``folder``, their CSVs named ``out*.csv``."""
    common = ["--batch-size", str(args.batch_size), "--workers", str(args.workers), "--device", device]
    score = ["-m", "clip_smot", "score", "--prompt", str(prompt), "--no-cache", *common]
    runs = {"reference": [sys.executable, __file__, "--reference-only", str(folder), "--model", args.model,
                          "--classes", str(args.classes), *common],
            "score": [sys.executable, *score, "--decode", "cpu", "--out", f"{out}-s.csv", str(folder)]}
    if cuda:
        runs["score_gpu_decode"] = [sys.executable, *score, "--decode", "gpu", "--out", f"{out}-g.csv", str(folder)]
        runs["score_gpu_decode_fp32"] = [sys.executable, *score, "--decode", "gpu", "--precision", "fp32",
                                         "--out", f"{out}-g32.csv", str(folder)]
    for k in (int(v) for v in args.torchrun.split(",") if v.strip()):
        runs[f"score_torchrun_{k}"] = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                       "--nproc_per_node", str(k), *score, "--decode", "gpu" if cuda else "cpu",
                                       "--out", f"{out}-t{k}.csv", str(folder)]
    return runs


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=2048, help="number of JPEGs")
    p.add_argument("--size", default="500x375", help="WIDTHxHEIGHT of each JPEG")
    p.add_argument("--model", default="ViT-B-16", help="open_clip name or model-config JSON (random weights)")
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--device", default="auto")
    p.add_argument("--torchrun", default="2", help="comma-separated process counts for torchrun runs ('' = none)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes writing the JPEGs (not timed)")
    p.add_argument("--startup-n", type=int, default=0, metavar="K",
                   help="also time every run on the first K images and report the steady rate, (n - K) / "
                        "(seconds - seconds on K): the start-up (imports, model build, first batch) left out")
    p.add_argument("--reference-only", metavar="FOLDER", help=argparse.SUPPRESS)  # (the reference's own process)
    args = p.parse_args(argv)
    if not 0 <= args.startup_n < args.n:
        p.error(f"--startup-n {args.startup_n}: must be in [0, --n)")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if args.reference_only:
        reference(args.reference_only, args.model, args.classes, args.batch_size, args.workers, device)
        return {}
    size = tuple(int(v) for v in args.size.lower().split("x"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    cuda = torch.device(device).type == "cuda"
    with tempfile.TemporaryDirectory() as tmp:
        folder, prompt = Path(tmp) / "images", Path(tmp) / "p.safetensors"
        write_jpegs(folder, args.n, size, args.jobs)
        make_prompt(prompt, args.model, args.classes)
        runs = _commands(args, device, cuda, prompt, folder, f"{tmp}/full")
        seconds = {name: _timed(cmd, env) for name, cmd in runs.items()}
        startup = {}
        if args.startup_n:  # the same runs on the first images: their start-up, subtracted below
            small = Path(tmp) / "first"
            small.mkdir()
            for f in sorted(folder.glob("*.jpg"))[: args.startup_n]:
                os.link(f, small / f.name)
            startup = {name: _timed(cmd, env) for name, cmd in _commands(args, device, cuda, prompt, small,
                                                                          f"{tmp}/first").items()}
        for csv_file in Path(tmp).glob("full*.csv"):  # every run scored every image
            assert csv_file.read_text().count("\n") == args.n + 1, csv_file
    result = {"device": device, "model": args.model, "n": args.n, "size": args.size, "classes": args.classes,
              "batch_size": args.batch_size, "workers": args.workers, "cpu_count": os.cpu_count(),
              "torch": torch.__version__,
              **{f"{k}_seconds": round(s, 3) for k, s in seconds.items()},
              **{f"{k}_images_per_s": round(args.n / s, 3) for k, s in seconds.items()},
              **{f"{k}_speedup": round(seconds["reference"] / s, 3) for k, s in seconds.items() if k != "reference"}}
    if startup:
        # (None where the whole run took no longer than the start-up's: too few images to tell)
        steady = {k: (args.n - args.startup_n) / (seconds[k] - startup[k]) if seconds[k] > startup[k] else None
                  for k in seconds}
        result |= {"startup_n": args.startup_n, **{f"{k}_startup_seconds": round(s, 3) for k, s in startup.items()},
                   **{f"{k}_steady_images_per_s": r and round(r, 3) for k, r in steady.items()},
                   **{f"{k}_steady_speedup": r and steady["reference"] and round(r / steady["reference"], 3)
                      for k, r in steady.items() if k != "reference"}}
    if "score_gpu_decode_seconds" not in result:
        result["score_gpu_decode"] = f"skipped: --decode gpu needs a CUDA device (this run: {device})"
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
