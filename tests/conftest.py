"""Shared fixtures. Tests never touch the network: hub lookups fail at once."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TORCH_HOME", os.path.join(os.path.dirname(__file__), ".torch_home_unused"))

import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))

import json  # noqa: E402

import pytest  # noqa: E402

# A tiny ViT CLIP: the same architecture family as ViT-B-16, small enough for CPU tests.
TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="session")
def tiny_clip_config(tmp_path_factory) -> str:
    """Path of a tiny open_clip model-config JSON (model name: its stem, 'clip-smot-tiny')."""
    path = tmp_path_factory.mktemp("clipcfg") / "clip-smot-tiny.json"
    path.write_text(json.dumps(TINY_CLIP_CONFIG))
    return str(path)


@pytest.fixture(scope="session")
def tiny_clip_checkpoint(tiny_clip_config, tmp_path_factory) -> str:
    """A .safetensors checkpoint of randomly initialised tiny CLIP weights (seeded)."""
    import open_clip
    from safetensors.torch import save_file

    open_clip.add_model_config(tiny_clip_config)
    torch.manual_seed(1234)
    model = open_clip.create_model("clip-smot-tiny", pretrained=None)
    path = tmp_path_factory.mktemp("clipckpt") / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return str(path)


def cpp_compiler_skip_reason() -> str | None:
    """Why a test marked ``cpp_compiler`` cannot run here: torch.compile on the CPU builds C++
    kernels, and inductor's own lookup (:func:`clip_smot.common.device.missing_cpp_compiler`)
    finds no compiler. None where it finds one: then every such test runs."""
    from clip_smot.common.device import missing_cpp_compiler

    missing = missing_cpp_compiler()
    return None if missing is None else f"needs a C++ compiler for torch.compile on the CPU (none found: {missing})"


def pytest_runtest_setup(item):
    if item.get_closest_marker("cpp_compiler") and (reason := cpp_compiler_skip_reason()):
        pytest.skip(reason)
