"""Whether a download host answers, so that offline runs fail fast."""

from __future__ import annotations

import os

__all__ = ["host_reachable"]


def host_reachable(host: tuple[str, int], timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``host`` (name, port) opens within ``timeout`` seconds.

    False at once when ``HF_HUB_OFFLINE`` is on: the project's offline switch, for every
    download (CLIP weights, the CAM network, torchvision data sets), so offline errors come
    within seconds. On is what huggingface_hub reads as on (1, ON, YES or TRUE, in any case):
    where it would download, the probe does not say offline.
    """
    import socket

    if os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        return False
    try:
        with socket.create_connection(host, timeout=timeout):
            return True
    except OSError:
        return False
