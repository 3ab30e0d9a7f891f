"""clip_smot.common.network: whether a download host answers (offline runs fail fast)."""

import socket

import pytest

from clip_smot.common.network import host_reachable


@pytest.fixture
def listening():
    """A TCP server on this machine's loopback: a host that answers, with no network involved."""
    server = socket.create_server(("127.0.0.1", 0))
    yield server.getsockname()
    server.close()


def test_a_host_that_answers_is_reachable_unless_hf_hub_offline_is_set(listening, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert host_reachable(listening) is True
    for off in ("", "0", "false", "False"):  # (huggingface_hub's spellings of "not set")
        monkeypatch.setenv("HF_HUB_OFFLINE", off)
        assert host_reachable(listening) is True, off
    for on in ("1", "true", "yes"):
        monkeypatch.setenv("HF_HUB_OFFLINE", on)
        assert host_reachable(listening) is False, on


def test_hf_hub_offline_is_read_as_huggingface_hub_reads_it(listening, monkeypatch):
    """huggingface_hub (constants.py) is offline for 1, ON, YES or TRUE in any case, and online for
    every other value: HF_HUB_OFFLINE=no or off let it download, while the probe said offline and
    the weights' download was refused as if there were no network."""
    for off in ("no", "off", "FALSE", "n", "2"):
        monkeypatch.setenv("HF_HUB_OFFLINE", off)
        assert host_reachable(listening) is True, off
    for on in ("ON", "On", "TRUE", "Yes"):
        monkeypatch.setenv("HF_HUB_OFFLINE", on)
        assert host_reachable(listening) is False, on


def test_a_host_that_fails_in_any_way_is_unreachable_within_the_timeout(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    asked = []

    def fails(host, timeout=None, **kwargs):
        asked.append((host, timeout))
        raise error

    monkeypatch.setattr(socket, "create_connection", fails)
    for error in (ConnectionRefusedError(), TimeoutError(), socket.gaierror(-2, "Name or service not known"),
                  OSError(113, "No route to host")):
        assert host_reachable(("example.invalid", 443), timeout=0.25) is False, error
    assert asked == [(("example.invalid", 443), 0.25)] * 4
    assert host_reachable(("example.invalid", 443)) is False
    assert asked[-1] == (("example.invalid", 443), 3.0)  # (docs/resnet.md: a 3 s timeout unless told)


def test_no_download_names_the_offline_switch_where_it_is_on(monkeypatch):
    """HF_HUB_OFFLINE set by habit on a machine with internet: "www.cs.toronto.edu cannot be reached
    (offline?)" sent its user looking for a network fault, the host never probed. The switch is
    named where it is on; else the host, or that there is no internet."""
    from clip_smot.common.network import no_download

    monkeypatch.setenv("HF_HUB_OFFLINE", "yes")
    assert no_download(("www.cs.toronto.edu", 443)) == no_download() == \
        "HF_HUB_OFFLINE is set, which stops every download (unset it to download)"
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert no_download(("www.cs.toronto.edu", 443)) == "www.cs.toronto.edu cannot be reached (offline?)"
    assert no_download() == "there is no internet to download them"
