"""benchmarks/text_layouts.py: the learner without a shared prefix or without packing, against open_clip (tiny CLIP)."""

import sys
from pathlib import Path

import pytest
import torch
from helpers import (
    check_compiled_flex_on_gpu,
    check_features_and_gradient_equal_open_clip,
    check_features_equal_open_clip,
    check_flex_kernel_forward,
)

from clip_smot.clip.model import load_clip

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from text_layouts import LayoutLearner  # noqa: E402

NAMES = ["goldfish", "great white shark", "tree frog", "Sealyham Terrier", "cat"]  # 1, 3 and 5 tokens


@pytest.fixture(scope="module")
def clip(tiny_clip_config, tiny_clip_checkpoint):
    return load_clip(tiny_clip_config, tiny_clip_checkpoint)


@pytest.mark.parametrize("csc", [False, True])
@pytest.mark.parametrize("class_position", ["end", "middle", "front"])
@pytest.mark.parametrize(
    "attention, share_prefix, pack",
    [("causal", True, True), ("mask", False, False), ("mask", True, False), ("causal", False, True)],
)
def test_features_equal_open_clip_full_77_tokens(clip, csc, class_position, attention, share_prefix, pack):
    learner = LayoutLearner(
        clip, NAMES, n_ctx=5, csc=csc, class_position=class_position, attention=attention, share_prefix=share_prefix,
        pack=pack,
    )
    check_features_equal_open_clip(clip, learner, csc, class_position, share_prefix, pack)


@pytest.mark.parametrize("attention", ["square", "flex"])
@pytest.mark.parametrize("csc, class_position", [(False, "end"), (True, "middle"), (False, "front")])
@pytest.mark.parametrize("pack, share_prefix", [(False, True), (True, False)])
def test_attention_layouts_equal_open_clip_with_gradient(clip, attention, csc, class_position, pack, share_prefix):
    """attention="square" and "flex" without packing or without a shared prefix: features and
    gradient exact."""
    learner = LayoutLearner(clip, NAMES, n_ctx=5, csc=csc, class_position=class_position, attention=attention,
                            pack=pack, share_prefix=share_prefix)
    check_features_and_gradient_equal_open_clip(clip, learner)


@pytest.mark.cpp_compiler
@pytest.mark.parametrize("compiled, csc, class_position, ctx_init, share_prefix", [
    (False, False, "middle", None, False), (False, False, "end", None, False),
])
def test_flex_kernel_forward_equals_open_clip(clip, compiled, csc, class_position, ctx_init, share_prefix):
    """FlexAttention's own kernel (forward, CPU) without a shared prefix: open_clip's features."""
    pytest.importorskip("torch.nn.attention.flex_attention")
    flex = LayoutLearner(clip, NAMES, n_ctx=5, ctx_init=ctx_init, csc=csc, class_position=class_position,
                         attention="flex", share_prefix=share_prefix)
    check_flex_kernel_forward(clip, flex, compiled, csc, class_position, share_prefix)


def test_unpacked_learner_encodes_every_position_and_the_default_is_the_library_layout(clip):
    """pack=False: all K x (max(EOT)+1 - P) positions after the prefix, in order; both switches
    on: PromptLearner's own buffers."""
    from clip_smot.clip.prompt import PromptLearner

    unpacked = LayoutLearner(clip, NAMES, n_ctx=5, pack=False)
    S = unpacked.seq_len - unpacked.prefix_len
    assert unpacked.packed_index.tolist() == list(range(len(NAMES) * S))
    default, library = LayoutLearner(clip, NAMES, n_ctx=5), PromptLearner(clip, NAMES, n_ctx=5)
    assert default.prefix_len == library.prefix_len == 6 and default.tokens_encoded == library.tokens_encoded
    assert torch.equal(default.packed_index, library.packed_index)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_compiled_flex_matches_open_clip_without_a_shared_prefix(tiny_clip_config, tiny_clip_checkpoint):
    """FlexAttention's kernel in compiled layers, a unified context at the end not shared: open_clip's
    fp32 features and gradient."""
    clip = load_clip(tiny_clip_config, tiny_clip_checkpoint, device="cuda")
    learner = LayoutLearner(clip, NAMES[:3], n_ctx=8, attention="flex", share_prefix=False)
    check_compiled_flex_on_gpu(clip, learner, (False, "end", None, False))
