"""Whether a download host answers, so that offline runs fail fast."""

from __future__ import annotations

import os

__all__ = ["host_reachable"]


def host_reachable(host: tuple[str, int], timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``host`` (name, port) opens within ``timeout`` seconds.

    False at once when ``HF_HUB_OFFLINE`` is set: the project's offline switch, for every
    download (CLIP weights, the CAM network, torchvision data sets), so offline errors come
    within seconds.
    """
    import socket

    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False"):
        return False
    try:
        with socket.create_connection(host, timeout=timeout):
            return True
    except OSError:
        return False
