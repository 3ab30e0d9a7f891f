"""Seconds for ``clip-smot score`` to list a tar shard holding one crafted pax header, by its size.

Python's ``tarfile`` before 3.10.15, 3.11.10 and 3.12.6 searches a pax header with a regular
expression that backtracks on every start position of a header of digits (CVE-2024-6232): the
time grows with the square of the header's size. The shard reader bounds a member's headers to
``MAX_HEADER_BYTES`` (memory), not this time. Each size here is one shard: a pax header of that
many ASCII digits, then a PNG member; the time is that of ``clip_smot.common.shards.list_members``
(score's listing of PATHS), which reads the headers alone. A Python with the fix lists each in
milliseconds.

Prints one JSON object. Example::

    python benchmarks/tar_pax_header.py --kib 16,32,64
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clip_smot.common.shards import list_members  # noqa: E402


def crafted_shard(path: Path, header_bytes: int) -> None:
    """A tar whose first member's pax header is ``header_bytes`` ASCII digits, then ``k.png``."""
    data = b"1" * header_bytes
    pax = tarfile.TarInfo("././@PaxHeader")
    pax.type, pax.size = tarfile.XHDTYPE, len(data)
    png = io.BytesIO()
    from PIL import Image

    Image.new("RGB", (4, 4)).save(png, format="PNG")
    member = tarfile.TarInfo("k.png")
    member.size = len(png.getvalue())
    with open(path, "wb") as f:
        f.write(pax.tobuf(format=tarfile.USTAR_FORMAT) + data + b"\0" * (-len(data) % 512))
        f.write(member.tobuf(format=tarfile.USTAR_FORMAT) + png.getvalue() + b"\0" * (-member.size % 512))
        f.write(b"\0" * 1024)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kib", default="16,32,64", help="comma-separated header sizes in KiB")
    args = ap.parse_args()
    sizes = [int(k) for k in args.kib.split(",")]
    seconds = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kib in sizes:
            shard = Path(tmp) / f"pax{kib}.tar"
            crafted_shard(shard, kib * 1024)
            t = time.perf_counter()
            try:
                listed = list_members(shard)
            except Exception as e:  # noqa: BLE001 - a refusal is a result too: its time is what counts
                listed = f"refused: {e}"
            seconds[kib] = round(time.perf_counter() - t, 3)
            print(f"{kib} KiB: {seconds[kib]} s ({listed})", file=sys.stderr)
    print(json.dumps({"python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
                      "seconds_by_kib": seconds}))


if __name__ == "__main__":
    main()
