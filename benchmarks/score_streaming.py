"""What ``clip-smot score`` holds and spends per image outside the model, on the CPU, for big PATHS.

- **listing**: peak Python memory (``tracemalloc``) of an image list of ``--list-n`` lines held as
  one list of paths (what score kept before it read PATHS one file at a time) against counting
  it, going through it in chunks of ``--chunk`` and finding a resume point in an
  ``OUT.partial`` of as many rows (what ``run_score`` does now);
- **workers**: seconds to decode ``--n`` synthetic JPEGs of ``--size`` with ``--workers``
  DataLoader processes in chunks of ``--chunk``, a new DataLoader a chunk (as before) against
  one kept by ``decoding.kept_workers`` (as now), and as one chunk; the batches compared bit
  for bit. The model is the tests' tiny CLIP (random weights): its encoder is not timed.

Prints one JSON object. Example::

    python benchmarks/score_streaming.py --list-n 100000 --n 4096 --chunk 512 --workers 2
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def _peak(work) -> tuple[object, int]:
    tracemalloc.start()
    try:
        return work(), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def listing(folder: Path, n: int, chunk: int) -> dict:
    from PIL import Image

    from clip_smot.clip import score as sc
    from clip_smot.common.image_sets import image_files, iter_image_files

    Image.new("RGB", (4, 4)).save(folder / "a.png")
    (folder / "list.txt").write_text("a.png\n" * n)
    header = ["path", "pred", "pred_index", "mcm"]
    partial = folder / "s.csv.partial"
    partial.write_text(",".join(header) + "\n" + f"{folder / 'a.png'},c,0,0.5\n" * n)
    paths = [str(folder / "list.txt")]
    _, whole = _peak(lambda: image_files(paths[0], "PATH"))
    _, counted = _peak(lambda: sum(1 for _ in iter_image_files(paths[0], "PATH")))
    _, chunked = _peak(lambda: sum(len(c) for c in sc._chunks(sc._groups(paths), chunk, 0)))
    _, resumed = _peak(lambda: sc._resume_point(partial, header, sc._files(paths), ["c"], False))
    mb = 1e6
    return {"list_n": n, "list_peak_mb": round(whole / mb, 2), "count_peak_mb": round(counted / mb, 2),
            "chunks_peak_mb": round(chunked / mb, 2), "resume_peak_mb": round(resumed / mb, 2)}


def workers(folder: Path, n: int, size: tuple[int, int], chunk: int, batch: int, procs: int, jobs: int) -> dict:
    import torch
    from score_throughput import write_jpegs

    from clip_smot.clip.decoding import image_batches, kept_workers
    from clip_smot.clip.model import load_clip

    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import TINY_CLIP_CONFIG

    (folder / "tiny.json").write_text(json.dumps(TINY_CLIP_CONFIG))
    clip = load_clip(str(folder / "tiny.json"), None)
    write_jpegs(folder / "images", n, size, jobs)
    paths = sorted(str(p) for p in (folder / "images").glob("*.jpg"))

    def run(step: int) -> list:
        return [x for i in range(0, n, step) for x, _ in image_batches(clip, paths[i : i + step], batch, procs, "pil")]

    timed = {}
    runs = (("new_loader_a_chunk", chunk, False), ("kept_workers", chunk, True), ("one_chunk", n, False))
    for name, step, keep in runs:
        start = time.perf_counter()
        if keep:
            with kept_workers():
                out = run(step)
        else:
            out = run(step)
        timed[name] = (time.perf_counter() - start, out)
    same = all(torch.equal(a, b) for a, b in zip(timed["new_loader_a_chunk"][1], timed["kept_workers"][1]))
    return {"n": n, "size": f"{size[0]}x{size[1]}", "chunk": chunk, "batch_size": batch, "workers": procs,
            "chunks": -(-n // chunk), "bit_identical": same,
            **{f"{k}_seconds": round(t, 3) for k, (t, _) in timed.items()}}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--list-n", type=int, default=100_000)
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--size", default="64x48")
    p.add_argument("--chunk", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--jobs", type=int, default=2, help="processes writing the JPEGs (not timed)")
    args = p.parse_args(argv)
    size = tuple(int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "list").mkdir()
        result = {"listing": listing(Path(tmp) / "list", args.list_n, args.chunk),
                  "workers": workers(Path(tmp), args.n, size, args.chunk, args.batch_size, args.workers, args.jobs)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
