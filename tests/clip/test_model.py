import json
import time

import pytest
import torch

from clip_smot.clip.model import IMAGENET_CLASSNAMES, load_clip
from clip_smot.common.errors import UserError


def test_local_checkpoint_loads_frozen(tiny_clip_config, tiny_clip_checkpoint):
    from safetensors.torch import load_file

    clip = load_clip(tiny_clip_config, tiny_clip_checkpoint)
    assert clip.name == "clip-smot-tiny" and clip.pretrained == "tiny.safetensors"
    assert len(clip.checkpoint_sha256) == 64
    assert not clip.model.training
    assert all(not p.requires_grad for p in clip.model.parameters())
    ref = load_file(tiny_clip_checkpoint)
    torch.testing.assert_close(clip.model.token_embedding.weight, ref["token_embedding.weight"])
    assert clip.image_size == 32 and len(clip.mean) == 3
    assert clip.identity()["model"] == "clip-smot-tiny"
    assert len(IMAGENET_CLASSNAMES) == 1000


def test_offline_tag_fails_fast_with_a_clear_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(UserError, match=r"ViT-B-16.*openai.*local checkpoint"):
        load_clip("ViT-B-16", "openai")
    assert time.monotonic() - start < 5


@pytest.mark.parametrize(
    "model, pretrained, match",
    [
        ("ViT-B-16", "not-a-tag", "not a pretrained tag"),
        ("ViT-B-16", "missing/weights.pt", "no such checkpoint file"),
        ("No-Such-Model", None, "unknown open_clip model"),
        ("missing/config.json", None, "no such model-config JSON"),
    ],
)
def test_bad_model_or_weights(model, pretrained, match):
    with pytest.raises(UserError, match=match):
        load_clip(model, pretrained)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_damaged_checkpoint_file_is_one_line(tiny_clip_config, tmp_path, suffix):
    bad = tmp_path / f"weights{suffix}"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(UserError, match=rf"--pretrained {bad}: could not load the weights") as info:
        load_clip(tiny_clip_config, str(bad))
    assert "\n" not in str(info.value)


def test_checkpoint_of_another_architecture_is_one_line(tiny_clip_config, tiny_clip_checkpoint, tmp_path):
    from safetensors.torch import load_file, save_file

    state = load_file(tiny_clip_checkpoint)
    state["token_embedding.weight"] = state["token_embedding.weight"][:, :8].contiguous()  # wrong width
    save_file(state, str(tmp_path / "other.safetensors"))
    with pytest.raises(UserError, match="could not load the weights"):
        load_clip(tiny_clip_config, str(tmp_path / "other.safetensors"))


def test_an_architecture_too_big_for_memory_is_refused_before_allocating(tmp_path):
    """A config JSON (or one a prompt stores) may declare any width: open_clip would allocate it
    all. It is built on the meta device and refused in one line when its fp32 weights would take
    more than half of the machine's memory; an image size out of range is refused too."""
    import time

    from conftest import TINY_CLIP_CONFIG

    from clip_smot.common.device import physical_memory
    from clip_smot.common.errors import UserError

    huge = {**TINY_CLIP_CONFIG, "text_cfg": {**TINY_CLIP_CONFIG["text_cfg"], "width": 2**16, "heads": 2}}
    path = tmp_path / "huge-clip.json"
    path.write_text(json.dumps(huge))
    t0 = time.perf_counter()
    # the token embedding alone: 49408 x 65536 fp32 = 12 GiB, and the blocks 12 x 65536^2 x 4 bytes each
    assert physical_memory() < 2 * 49408 * 2**16 * 4 + 2 * 12 * 2**32 * 4
    with pytest.raises(UserError, match=rf"^--model {path}: its weights would take \d+\.\d GiB in fp32, more than half"):
        load_clip(str(path), None)
    assert time.perf_counter() - t0 < 20
    for size in (4, 100000, "224"):
        cfg = {**TINY_CLIP_CONFIG, "vision_cfg": {**TINY_CLIP_CONFIG["vision_cfg"], "image_size": size}}
        bad = tmp_path / f"size-{size}.json"
        bad.write_text(json.dumps(cfg))
        with pytest.raises(UserError, match=rf"^--model {bad}: vision_cfg.image_size .* is not in \[8, 2048\]$"):
            load_clip(str(bad), None)
