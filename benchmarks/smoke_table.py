"""The README's digits table, made from `smoke_digits.sh`'s JSON line (never typed by hand).

Usage:
    bash benchmarks/smoke_digits.sh OUT | tail -n 1 > smoke.json
    python benchmarks/smoke_table.py smoke.json                      # print the block
    python benchmarks/smoke_table.py smoke.json --write README.md    # replace the README's block

The block names what the numbers depend on: the versions of the libraries that train and
evaluate, and the CPU. The run is deterministic on one machine with one set of versions; another
CPU or other versions give other numbers (float reductions in another order, other kernels).
"""

from __future__ import annotations

import argparse
import json
import platform
import re
from importlib.metadata import version
from pathlib import Path

BEGIN, END = "<!-- smoke_digits:begin -->", "<!-- smoke_digits:end -->"
SCORES = ("msp", "energy", "knn")


def cpu_name() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what platform knows, with the kernels
    torch chose for it and its thread count: two VMs that both said "AMD EPYC" gave other
    numbers (benchmarks/RESULTS.md, 2026-12-03 and 2026-12-04), and torch's vectorised
    kernels and reductions follow the instruction set and the threads."""
    import torch

    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name} (torch's {torch.backends.cpu.get_cpu_capability()} kernels, {torch.get_num_threads()} threads)"


def versions() -> str:
    names = ("torch", "numpy", "scikit-learn", "scikit-image", "Pillow")
    return ", ".join(f"{n} {version(n)}" for n in names)


def block(result: dict, machine: str, libs: str) -> str:
    """The markdown block (markers included) for one smoke run's result."""
    rows = []
    for model, label in (("base", "base (CE)"), ("smot", "SMOT")):
        cells = [f"{result[f'{model}_{s}_avg_fpr95_auroc'][0]:.2f} / {result[f'{model}_{s}_avg_fpr95_auroc'][1]:.2f}"
                 for s in SCORES]
        rows.append(f"| {label} | {result[f'{model}_id_accuracy']:.2f}% | " + " | ".join(cells) + " |")
    return "\n".join([
        BEGIN,
        "| model | ID accuracy | MSP FPR95 / AUROC | Energy FPR95 / AUROC | KNN FPR95 / AUROC |",
        "|---|---|---|---|---|",
        *rows,
        "",
        f"Made by `benchmarks/smoke_digits.sh` (total {result['total_s']:.1f} s) on {machine}, with {libs}.",
        END,
    ])


def replace_block(text: str, new: str) -> str:
    """``text`` with its one marked block replaced by ``new``; ValueError without exactly one."""
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    if len(pattern.findall(text)) != 1:
        raise ValueError(f"expected exactly one {BEGIN} ... {END} block")
    return pattern.sub(lambda _: new, text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("result", help="the JSON line smoke_digits.sh printed last, in a file")
    ap.add_argument("--write", metavar="README", help="replace the marked block of this file")
    args = ap.parse_args()
    result = json.loads(Path(args.result).read_text().strip().splitlines()[-1])
    new = block(result, cpu_name(), versions())
    if args.write:
        path = Path(args.write)
        path.write_text(replace_block(path.read_text(), new))
    print(new)


if __name__ == "__main__":
    main()
