"""Print the `clip-smot fit` options of the fastest exact fit step that gpu_check.sh timed.

    python benchmarks/choose_fast.py LOG_DIR

Reads ``fit_step_square.log`` and ``fit_step_fast.log`` (the last JSON line of each
``benchmarks/fit_step.py`` run) and ``pytest_flex.log`` from LOG_DIR. The FlexAttention and
compiled steps count only where the GPU tests of those options passed in the same place. Of the
timed variants (eager, encoders overlapped, CUDA graph, both), the one with the fewest ms per
step wins. Every speed option is spelled out (on a GPU fit's defaults turn them all on), so the
options printed run the variant that was timed. Without any usable timing it prints the fastest
options measured before (square attention, not compiled, a CUDA graph: 25.22 ms on an H200,
benchmarks/RESULTS.md run 2).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

FALLBACK = "--text-attention square --no-compile --cuda-graph --no-overlap-encoders"
VARIANTS = {  # fit_step.py's key suffix -> the fit options that run that variant
    "": " --no-cuda-graph --no-overlap-encoders",
    "_overlap": " --no-cuda-graph --overlap-encoders",
    "_cuda_graph": " --cuda-graph --no-overlap-encoders",
    "_overlap_cuda_graph": " --cuda-graph --overlap-encoders",
}


def last_json(path: Path) -> dict | None:
    """The last line of ``path`` that parses as a JSON object, or None."""
    if not path.is_file():
        return None
    for line in reversed(path.read_text(errors="replace").splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


def tests_passed(path: Path) -> bool:
    """True when the pytest log's summary says passed and nothing failed or errored."""
    if not path.is_file():
        return False
    tail = path.read_text(errors="replace").splitlines()[-1:]
    return bool(tail) and " passed" in tail[0] and "failed" not in tail[0] and "error" not in tail[0]


def timings(log_dir: Path) -> dict[str, float]:
    """Fit options -> ms per step, from every usable benchmark log in ``log_dir``."""
    runs = {"--text-attention square --no-compile": log_dir / "fit_step_square.log"}
    if tests_passed(log_dir / "pytest_flex.log"):
        runs["--text-attention flex --compile"] = log_dir / "fit_step_fast.log"
    found = {}
    for options, path in runs.items():
        result = last_json(path)
        if result is None or result.get("device") != "cuda":
            continue
        for suffix, extra in VARIANTS.items():
            ms = result.get(f"ms_per_step{suffix}")
            if isinstance(ms, (int, float)):
                found[options + extra] = float(ms)
    return found


def choose(log_dir: Path) -> str:
    found = timings(log_dir)
    return min(found, key=found.get) if found else FALLBACK


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python benchmarks/choose_fast.py LOG_DIR")
    print(choose(Path(sys.argv[1])))
