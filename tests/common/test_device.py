"""clip_smot.common.device: the devices the commands accept."""

import pytest

from clip_smot.common.errors import UserError


def test_devices_other_than_cpu_and_an_existing_cuda_are_one_line(monkeypatch):
    """--device meta ran on tensors without data and failed deep inside, mps likewise; cuda:N is
    checked against the GPUs there are."""
    import torch

    from clip_smot.common.device import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    for name, expected in (("meta", "not supported"), ("mps", "not supported"), ("xla", "not supported"),
                           ("gpu", "not a device"), ("cuda:-1", "not a device")):
        with pytest.raises(UserError, match=rf"^--device {name}: {expected}"):
            resolve_device(name)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="^--device cuda:0: no CUDA device is available on this machine$"):
        resolve_device("cuda:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1) and resolve_device("cuda") == torch.device("cuda")
    with pytest.raises(UserError, match=r"^--device cuda:2: this machine has 2 CUDA devices \(cuda:0 to cuda:1\)$"):
        resolve_device("cuda:2")


def test_precision_auto_is_bf16_on_cuda_and_fp32_on_the_cpu():
    import torch

    from clip_smot.common.device import resolve_precision

    assert resolve_precision("auto", torch.device("cuda")) == "bf16"
    assert resolve_precision("auto", torch.device("cuda", 1)) == "bf16"
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert [resolve_precision(p, torch.device("cuda")) for p in ("fp32", "fp16", "bf16")] == ["fp32", "fp16", "bf16"]
    # the CPU's autocast runs fp16 as bf16: the resolved precision says so
    assert [resolve_precision(p, torch.device("cpu")) for p in ("fp32", "fp16", "bf16")] == ["fp32", "bf16", "bf16"]
    with pytest.raises(UserError, match="--precision must be auto or one of"):
        resolve_precision("fp8", torch.device("cpu"))
