"""Whether a download host answers, so that offline runs fail fast."""

from __future__ import annotations

import os

__all__ = ["host_reachable", "no_download", "offline_switch"]


def host_reachable(host: tuple[str, int], timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``host`` (name, port) opens within ``timeout`` seconds.

    False at once when ``HF_HUB_OFFLINE`` is on: the project's offline switch, for every
    download (CLIP weights, the CAM network, torchvision data sets), so offline errors come
    within seconds. On is what huggingface_hub reads as on (1, ON, YES or TRUE, in any case):
    where it would download, the probe does not say offline.
    """
    import socket

    if offline_switch():
        return False
    try:
        with socket.create_connection(host, timeout=timeout):
            return True
    except OSError:
        return False


def offline_switch() -> bool:
    """Whether ``HF_HUB_OFFLINE`` is on, as huggingface_hub reads it (1, ON, YES or TRUE, in any case)."""
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def no_download(host: tuple[str, int] | None = None) -> str:
    """Why nothing is downloaded, for a message once :func:`host_reachable` said False: the offline
    switch where it is on (set by habit on a machine with internet, "offline?" sent its user
    looking for a network fault), else ``host`` that cannot be reached (None: no internet)."""
    if offline_switch():
        return "HF_HUB_OFFLINE is set, which stops every download (unset it to download)"
    return "there is no internet to download them" if host is None else f"{host[0]} cannot be reached (offline?)"
