"""The functional encoders and the fit step against open_clip's own code paths (tiny CLIP, CPU)."""

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import (
    check_compiled_flex_on_gpu,
    flex_kernel_ran,
    open_clip_features_and_grad,
)

from clip_smot.clip.encoders import ImageEncoder, fast_image_encoder
from clip_smot.clip.model import load_clip
from clip_smot.common.errors import UserError
from clip_smot.clip.prompt import PromptLearner
from clip_smot.clip.step import make_fit_step
from clip_smot.smot import sample_thresholds

ROOT = Path(__file__).resolve().parents[2]
NAMES = ["goldfish", "great white shark", "tree frog"]


@pytest.fixture(scope="module")
def clip(tiny_clip_config, tiny_clip_checkpoint):
    return load_clip(tiny_clip_config, tiny_clip_checkpoint)


def images(n=3, size=32, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_image_encoder_equals_encode_image(clip):
    x = (images() - 0.5) / 0.25
    enc = fast_image_encoder(clip.model, "fp32")
    assert isinstance(enc, ImageEncoder) and not list(enc.parameters()) and not enc.state_dict()
    torch.testing.assert_close(enc(x), clip.model.encode_image(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("pool_type, final_ln_after_pool", [("avg", False), ("avg", True)])
def test_image_encoder_avg_pooling(clip, pool_type, final_ln_after_pool):
    model = copy.deepcopy(clip.model)
    model.visual.pool_type, model.visual.final_ln_after_pool = pool_type, final_ln_after_pool
    x = images()
    torch.testing.assert_close(ImageEncoder(model.visual)(x), model.encode_image(x), atol=1e-5, rtol=0)


def test_image_encoder_bf16_within_tolerance(clip):
    x = (images() - 0.5) / 0.25
    ref, fast = clip.model.encode_image(x), fast_image_encoder(clip.model, "bf16")(x)
    assert fast.dtype == torch.float32
    assert 1e-4 < ((fast - ref).norm() / ref.norm()).item() < 2e-2


@pytest.mark.cpp_compiler
@pytest.mark.parametrize("pool_type", ["tok", "avg"])
def test_compiled_image_layers_equal_encode_image(clip, pool_type):
    """ImageEncoder.compile_layers (one torch.compile region shared by the blocks) changes nothing."""
    model = copy.deepcopy(clip.model)
    model.visual.pool_type = pool_type
    enc = ImageEncoder(model.visual)
    enc.compile_layers()
    x = (images() - 0.5) / 0.25
    torch.testing.assert_close(enc(x), model.encode_image(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("attention", ["square", "flex"])
def test_compile_layers_compiles_the_layer_function_with_dynamic_false(clip, monkeypatch, attention):
    """compile_layers hands torch.compile the per-layer function of its attention (square: the
    square layer, flex: the flat one; the image tower: its layer), ``dynamic=False`` unless the
    caller says otherwise, the caller's options as given; the compiled function runs every layer
    but the text tower's last, and the features stay open_clip's."""
    from clip_smot.clip.encoders import TextEncoder

    seen, calls = [], []

    def fake_compile(fn, **options):
        seen.append((fn, options))

        def compiled(*a, **k):
            calls.append(fn.__func__.__name__)
            return fn(*a, **k)
        return compiled

    monkeypatch.setattr(torch, "compile", fake_compile)
    learner = PromptLearner(clip, NAMES, n_ctx=4, attention=attention)
    enc = learner.encoder
    enc.compile_layers()
    enc.compile_layers(mode="max-autotune", dynamic=True)
    name = "_square_layer" if attention == "square" else "_flat_layer"
    assert [(fn.__func__, fn.__self__, options) for fn, options in seen] == [
        (getattr(TextEncoder, name), enc, {"dynamic": False}),
        (getattr(TextEncoder, name), enc, {"mode": "max-autotune", "dynamic": True}),
    ]
    with torch.no_grad():
        ours = learner()
        full = learner.prompt_embeddings(full=True)
        expected = clip.model.transformer(full + clip.model.positional_embedding, attn_mask=clip.model.attn_mask)
        expected = clip.model.ln_final(expected)[torch.arange(len(NAMES)), learner.tokens.argmax(-1)]
    torch.testing.assert_close(ours, expected @ clip.model.text_projection, atol=1e-5, rtol=0)
    assert calls == [name] * (len(clip.model.transformer.resblocks) - 1)

    seen.clear()
    image = ImageEncoder(clip.model.visual)
    image.compile_layers()
    image.compile_layers(fullgraph=True)
    assert [(fn.__func__, fn.__self__, options) for fn, options in seen] == [
        (ImageEncoder._layer, image, {"dynamic": False}), (ImageEncoder._layer, image, {"fullgraph": True, "dynamic": False}),
    ]


def test_non_vit_towers_fall_back(clip):
    model = copy.deepcopy(clip.model)
    model.visual.attn_pool = torch.nn.Identity()  # not the plain ViT any more
    assert fast_image_encoder(model) is None


def _hand_tokens(g: torch.Generator) -> torch.Tensor:
    """Token ids [3, 77] by hand: SOT, 3, 9 and 20 random words, EOT (the largest id: open_clip
    pools at the argmax), padding."""
    tokens = torch.zeros(3, 77, dtype=torch.long)
    for k, n in enumerate((3, 9, 20)):
        tokens[k, 0], tokens[k, n + 1] = 49406, 49407
        tokens[k, 1:n + 1] = torch.randint(1, 49406, (n,), generator=g)
    return tokens


def _assert_towers_are_open_clips(model, attention: str, g: torch.Generator) -> torch.Tensor:
    """Both encoders of ``model`` against open_clip's own encode_image (3 random images) and
    encode_text (:func:`_hand_tokens` of ``g``), to 1e-5; returns open_clip's text features."""
    from clip_smot.clip.encoders import TextEncoder, packed_index

    x = (images() - 0.5) / 0.25
    torch.testing.assert_close(ImageEncoder(model.visual)(x), model.encode_image(x), atol=1e-5, rtol=0)
    tokens = _hand_tokens(g)
    eot = tokens.argmax(-1)
    with torch.no_grad():
        ours = TextEncoder(model, attention=attention)(model.token_embedding(tokens), eot, packed_index(eot, 77))
        expected = model.encode_text(tokens)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)
    return expected


@pytest.mark.parametrize("attention", ["causal", "flex"])
def test_encoders_apply_layer_scale_as_open_clip_does(tiny_clip_config, attention):
    """The tiny CLIP has no LayerScale; with ``ls_init_value`` open_clip puts one after attention
    (ls_1) and one after the MLP (ls_2) in every block. Random, different gammas for the two: both
    towers must still compute open_clip's own encode_image / encode_text."""
    from open_clip.model import CLIP

    cfg = json.loads(Path(tiny_clip_config).read_text())
    cfg["vision_cfg"]["ls_init_value"] = cfg["text_cfg"]["ls_init_value"] = 1e-5
    torch.manual_seed(0)
    model = CLIP(**cfg).eval()
    g = torch.Generator().manual_seed(1)
    blocks = [*model.visual.transformer.resblocks, *model.transformer.resblocks]
    assert all(hasattr(blk.ls_1, "gamma") and hasattr(blk.ls_2, "gamma") for blk in blocks)
    with torch.no_grad():
        for blk in blocks:  # (1e-5 would make every block nearly the identity)
            for ls in (blk.ls_1, blk.ls_2):
                ls.gamma.copy_(0.5 + torch.rand(ls.gamma.shape, generator=g))

    _assert_towers_are_open_clips(model, attention, g)


@pytest.mark.parametrize("attention", ["causal", "flex"])
def test_encoders_use_each_layernorm_and_a_biased_text_projection_as_open_clip_does(tiny_clip_config, attention):
    """open_clip initialises every LayerNorm to weight 1 and bias 0, so in the tiny CLIP one
    LayerNorm's parameters cannot be told from another's. Here each LayerNorm (ln_pre, ln_1, ln_2,
    ln_post, ln_final) gets random ones of its own, and the text projection is the nn.Linear with a
    bias that ``text_cfg.proj_bias`` builds (square here: width 32 = embed_dim 32, so a missing
    transpose is no shape error): both towers must still compute open_clip's own encodings."""
    from open_clip.model import CLIP

    cfg = json.loads(Path(tiny_clip_config).read_text())
    cfg["text_cfg"]["proj_bias"] = True
    torch.manual_seed(0)
    model = CLIP(**cfg).eval()
    assert isinstance(model.text_projection, torch.nn.Linear) and model.text_projection.bias is not None
    g = torch.Generator().manual_seed(2)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 2 * 2 + 2 + 2 * 2 + 1  # vision: 2 x (ln_1, ln_2), ln_pre, ln_post; text: 2 x 2, ln_final
    with torch.no_grad():
        for m in norms:
            m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
            m.bias.copy_(0.5 * torch.randn(m.bias.shape, generator=g))
        model.text_projection.bias.copy_(torch.randn(model.text_projection.bias.shape, generator=g))

    _assert_towers_are_open_clips(model, attention, g)


@pytest.mark.parametrize("attention", ["causal", "flex"])
def test_encoders_without_ln_pre_or_text_projection_are_open_clips(tiny_clip_config, attention):
    """``vision_cfg.no_ln_pre`` (open_clip's ln_pre an Identity) and ``text_cfg.proj_type`` "none"
    (no text projection: the pooled ln_final output is the feature) are configs the checks accept;
    both towers must compute open_clip's own encodings without them, not apply a LayerNorm or a
    projection that is not there (each other LayerNorm has random parameters of its own, so one
    applied in the wrong place would show)."""
    from open_clip.model import CLIP

    cfg = json.loads(Path(tiny_clip_config).read_text())
    cfg["vision_cfg"]["no_ln_pre"] = True
    cfg["text_cfg"]["proj_type"] = "none"
    torch.manual_seed(0)
    model = CLIP(**cfg).eval()
    assert isinstance(model.visual.ln_pre, torch.nn.Identity) and model.text_projection is None
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(0.5 * torch.randn(m.bias.shape, generator=g))

    assert _assert_towers_are_open_clips(model, attention, g).shape == (3, cfg["text_cfg"]["width"])


def test_encoders_take_no_gradient_from_a_model_that_is_not_frozen(tiny_clip_config):
    """The encoders' weights are detached copies or views: built from a model whose parameters
    still require grad (open_clip's CLIP as constructed, not frozen by load_clip), no buffer
    requires grad and no feature is part of a graph through the model's weights."""
    from open_clip.model import CLIP

    from clip_smot.clip.encoders import TextEncoder, packed_index

    torch.manual_seed(0)
    model = CLIP(**json.loads(Path(tiny_clip_config).read_text())).eval()
    assert all(p.requires_grad for p in model.parameters())
    text, image = TextEncoder(model), ImageEncoder(model.visual)
    assert not [name for name, b in [*text.named_buffers(), *image.named_buffers()] if b.requires_grad]
    tokens = _hand_tokens(torch.Generator().manual_seed(3))
    eot = tokens.argmax(-1)
    embeddings = model.token_embedding(tokens).detach()
    assert not text(embeddings, eot, packed_index(eot, 77)).requires_grad
    assert not image((images() - 0.5) / 0.25).requires_grad


@pytest.mark.parametrize("attention", ["causal", "mask", "square", "flex"])
@pytest.mark.parametrize("P, seed", [(1, 4), (3, 6)])
def test_a_shared_prefix_is_encoded_as_open_clip_does(clip, attention, P, seed):
    """TextEncoder takes any shared prefix, then each prompt's 77 - P positions, whose queries sit P
    keys to the right: the start token alone (P = 1), or the start token and two words shared by the
    three prompts (P = 3, as a prompt learner's SOT and context), causal within itself: its position
    1 sees positions 0 and 1, not 2, as in open_clip's [77, 77] mask. The features are open_clip's
    own encode_text of the whole prompts."""
    from clip_smot.clip.encoders import TextEncoder, packed_index

    m = clip.model
    tokens = _hand_tokens(torch.Generator().manual_seed(seed))
    tokens[:, 1:P] = tokens[0, 1:P]  # the words after SOT shared by every prompt (none for P = 1)
    eot = tokens.argmax(-1) - P  # [3] within the suffix
    with torch.no_grad():
        x = m.token_embedding(tokens)  # [3, 77, 32]
        ours = TextEncoder(m, attention=attention)(x[:, P:], eot, packed_index(eot, 77 - P), prefix=x[0, :P])
        expected = m.encode_text(tokens)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


def test_more_positions_than_the_context_length_are_refused(clip):
    """77 positions at most (the positional embedding's), prefix and prompt together."""
    from clip_smot.clip.encoders import TextEncoder, packed_index

    enc = TextEncoder(clip.model)
    eot = torch.tensor([5])
    with pytest.raises(ValueError, match="prompts of 78 tokens exceed the context length 77"):
        enc(torch.zeros(1, 78, 32), eot, packed_index(eot, 78))
    with pytest.raises(ValueError, match="prompts of 78 tokens exceed the context length 77"):
        enc(torch.zeros(1, 76, 32), eot, packed_index(eot, 76), prefix=torch.zeros(2, 32))
    assert enc(torch.zeros(1, 75, 32), eot, packed_index(eot, 75), prefix=torch.zeros(2, 32)).shape == (1, 32)


def test_text_encoder_holds_nothing_a_state_dict_saves(tiny_clip_config):
    """Its weights are non-persistent buffers: nothing in its state_dict (nor in that of a learner
    holding it), with the plain [width, e] projection and with a biased nn.Linear one."""
    from open_clip.model import CLIP

    from clip_smot.clip.encoders import TextEncoder

    cfg = json.loads(Path(tiny_clip_config).read_text())
    for proj_bias in (False, True):
        cfg["text_cfg"]["proj_bias"] = proj_bias
        enc = TextEncoder(CLIP(**cfg).eval())
        assert (enc.proj_b is not None) == proj_bias
        assert not list(enc.parameters()) and not enc.state_dict()


@pytest.mark.parametrize("part", ["attn", "ln_1", "ln_2", "mlp"])
def test_a_block_not_open_clips_standard_one_is_refused(clip, part):
    """The encoders run open_clip's ResidualAttentionBlock by its parts: a block whose attention is
    not nn.MultiheadAttention, whose ln_1 or ln_2 is no LayerNorm, or whose MLP has no c_fc, is
    refused in the text tower (one line) and left to open_clip in the image tower."""
    from clip_smot.clip.encoders import check_text_tower

    other = {"attn": torch.nn.Linear(32, 32), "ln_1": torch.nn.Identity(), "ln_2": torch.nn.Identity(),
             "mlp": torch.nn.Sequential(torch.nn.Linear(32, 128), torch.nn.GELU(), torch.nn.Linear(128, 32))}[part]
    model = copy.deepcopy(clip.model)
    setattr(model.transformer.resblocks[0], part, other)
    with pytest.raises(UserError, match="not open_clip's standard ResidualAttentionBlock"):
        check_text_tower(model, "tiny")
    if part == "attn":
        other = torch.nn.Linear(64, 64)
    elif part == "mlp":
        other = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 64))
    model = copy.deepcopy(clip.model)
    setattr(model.visual.transformer.resblocks[1], part, other)
    assert fast_image_encoder(model) is None


@pytest.mark.parametrize("attention", ["causal", "mask", "square", "flex"])
def test_encoders_of_three_blocks_equal_open_clip(tiny_clip_config, attention):
    """The tiny CLIP's towers have two blocks, so its second block is also its last: with three
    blocks a tower's last block is no other one, and both encoders (the text one in every
    attention) still compute open_clip's encode_image / encode_text."""
    from open_clip.model import CLIP

    from clip_smot.clip.encoders import TextEncoder, packed_index

    cfg = json.loads(Path(tiny_clip_config).read_text())
    cfg["vision_cfg"]["layers"] = cfg["text_cfg"]["layers"] = 3
    torch.manual_seed(0)
    model = CLIP(**cfg).eval()
    x = (images() - 0.5) / 0.25
    tokens = _hand_tokens(torch.Generator().manual_seed(5))
    eot = tokens.argmax(-1)
    with torch.no_grad():
        if attention == "causal":
            torch.testing.assert_close(ImageEncoder(model.visual)(x), model.encode_image(x), atol=1e-5, rtol=0)
        ours = TextEncoder(model, attention=attention)(model.token_embedding(tokens), eot, packed_index(eot, 77))
        torch.testing.assert_close(ours, model.encode_text(tokens), atol=1e-5, rtol=0)


@pytest.mark.parametrize("change", ["conv1", "class_embedding", "positional_embedding", "pool_type", "ln_post",
                                    "ln_pre"])
def test_an_image_tower_not_open_clips_plain_vit_is_left_to_open_clip(clip, change):
    """The fast image encoder needs a patch convolution, a class token, positional embeddings,
    'tok' or 'avg' pooling, a LayerNorm ln_post and a LayerNorm (or no) ln_pre: a tower without
    one of them (here changed in a copy of the tiny ViT) gets no fast encoder, open_clip's own
    encode_image runs instead."""
    model = copy.deepcopy(clip.model)
    visual = model.visual
    if change in ("class_embedding", "positional_embedding"):
        setattr(visual, change, None)
    else:
        setattr(visual, change, {"conv1": torch.nn.Identity(), "pool_type": "last", "ln_post": torch.nn.Identity(),
                                 "ln_pre": torch.nn.Linear(64, 64)}[change])
    assert fast_image_encoder(model) is None


def test_image_encoder_drops_the_pixels_past_the_last_patch_as_open_clip_does(clip):
    """A model config's image_size need not be a multiple of its patch size (open_clip's stride-p
    convolution ignores the remainder): 35-pixel images in the tiny CLIP's 8-pixel patches are
    4 x 4 patches, the last 3 rows and columns unused."""
    x = (images(size=35) - 0.5) / 0.25
    torch.testing.assert_close(fast_image_encoder(clip.model)(x), clip.model.encode_image(x), atol=1e-5, rtol=0)


def _open_clip_logits(clip, ctx, x):
    """CoOp's logits written with open_clip's modules: a unified context of 4 vectors, class at the end."""
    mean, std = torch.tensor(clip.mean).view(1, 3, 1, 1), torch.tensor(clip.std).view(1, 3, 1, 1)
    img = F.normalize(clip.model.encode_image((x - mean) / std), dim=-1)
    m, K = clip.model, len(NAMES)
    tokens = clip.tokenizer([f"X X X X {name}." for name in NAMES])  # CoOp's way
    e = m.token_embedding(tokens)  # [K, 77, d]
    emb = torch.cat([e[:, :1], ctx.expand(K, -1, -1), e[:, 5:]], dim=1)  # [SOS] [ctx] [name . EOT pad]
    z = m.ln_final(m.transformer(emb + m.positional_embedding, attn_mask=m.attn_mask))
    txt = F.normalize(z[torch.arange(K), tokens.argmax(-1)] @ m.text_projection, dim=-1)
    return m.logit_scale.exp() * img @ txt.t()


def test_fit_step_is_the_smot_step_on_open_clip(clip):
    """One fp32 step: its loss and its ctx update match a hand-written SMOT step on open_clip."""
    B = 4
    x = images(B)
    cams = torch.rand(B, 32, 32, generator=torch.Generator().manual_seed(1)) * 255
    y = torch.tensor([0, 2, 1, 2])
    learner = PromptLearner(clip, NAMES, n_ctx=4, generator=torch.Generator().manual_seed(2))
    ctx0 = learner.ctx.detach().clone()
    opt = torch.optim.SGD(learner.parameters(), lr=0.5)
    step = make_fit_step(clip, learner, opt, lam=0.3, T=50.0, precision="fp32", generator=torch.Generator().manual_seed(3))
    loss = step(x, cams, y)

    # by hand: the same thresholds, open_clip's encoders, Eqs. 5, 7, 8 and 9 written out (no smot.py)
    t = sample_thresholds(B, 50.0, 20.0, generator=torch.Generator().manual_seed(3))
    ctx = ctx0.clone().requires_grad_(True)
    expected = _hand_smot(clip, ctx, x, cams, y, t, lam=0.3, T=50.0)
    expected.backward()
    torch.testing.assert_close(loss, expected.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(learner.ctx.detach(), ctx0 - 0.5 * ctx.grad, atol=1e-6, rtol=1e-4)
    assert all(p.grad is None for p in clip.model.parameters())


@pytest.mark.parametrize("perturbation", ["one", "noise"])
def test_fit_step_white_mask_and_noise_on_open_clip(clip, perturbation):
    """--perturb one: the masked region is white (1) in the copy. --perturb noise, --sigma 0.3
    (default 0.1): Gaussian noise added where masked, clipped to [0, 1] (Table 9), drawn from
    noise_generator (a twin of it here). Same thresholds, lam, T as above."""
    B = 2
    x, y = images(B, seed=4), torch.tensor([1, 2])
    cams = torch.rand(B, 32, 32, generator=torch.Generator().manual_seed(5)) * 255
    learner = PromptLearner(clip, NAMES, n_ctx=4, generator=torch.Generator().manual_seed(2))
    ctx0 = learner.ctx.detach().clone()
    opt = torch.optim.SGD(learner.parameters(), lr=0.5)
    loss = make_fit_step(clip, learner, opt, lam=0.3, T=50.0, perturbation=perturbation, sigma=0.3, precision="fp32",
                         generator=torch.Generator().manual_seed(3),
                         noise_generator=torch.Generator().manual_seed(6))(x, cams, y)
    t = sample_thresholds(B, 50.0, 20.0, generator=torch.Generator().manual_seed(3))
    keep = (cams < t[:, None, None]).float()[:, None]  # [B, 1, S, S], Eq. 7: 0 where cam >= t
    if perturbation == "one":
        masked = x * keep + (1 - keep)
    else:
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(6))  # [B, 3, S, S]
        masked = (x + 0.3 * noise * (1 - keep)).clamp(0, 1)
    with torch.no_grad():
        logits = _open_clip_logits(clip, ctx0, torch.cat([x, masked]))
    eps = 1 - torch.exp((t - 255) / 50.0)  # Eq. 9
    target = (1 - eps)[:, None] * F.one_hot(y, len(NAMES)) + eps[:, None] / len(NAMES)  # Eq. 5
    soft = -(target * logits[B:].log_softmax(-1)).sum(-1).mean()
    torch.testing.assert_close(loss, 0.7 * F.cross_entropy(logits[:B], y) + 0.3 * soft, atol=1e-5, rtol=1e-5)


def test_fit_step_ce_is_coops_step_on_open_clip(clip):
    """--loss ce (plain CoOp), fp32: CE of the originals' logits, no masked copies, no thresholds drawn."""
    x, y = images(3), torch.tensor([2, 0, 1])
    learner = PromptLearner(clip, NAMES, n_ctx=4, generator=torch.Generator().manual_seed(2))
    ctx0 = learner.ctx.detach().clone()
    opt = torch.optim.SGD(learner.parameters(), lr=0.5)
    gen = torch.Generator().manual_seed(3)
    state = gen.get_state()
    loss = make_fit_step(clip, learner, opt, loss="ce", precision="fp32", generator=gen)(x, None, y)
    ctx = ctx0.clone().requires_grad_(True)
    expected = F.cross_entropy(_open_clip_logits(clip, ctx, x), y)
    expected.backward()
    torch.testing.assert_close(loss, expected.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(learner.ctx.detach(), ctx0 - 0.5 * ctx.grad, atol=1e-6, rtol=1e-4)
    assert torch.equal(gen.get_state(), state)


@pytest.mark.parametrize("loss", ["ls", "logitnorm"])
def test_fit_step_baselines_on_open_clip(clip, loss):
    """--loss ls / logitnorm, fp32: label smoothing 0.1 (torch's own label_smoothing, the same
    targets (1 - eps) onehot + eps / K) and LogitNorm at temperature 0.04 (Wei et al.: CE of
    logits / (0.04 ||logits||)) of the originals' logits; no masked copies, no thresholds drawn."""
    x, y = images(3, seed=11), torch.tensor([1, 2, 0])
    learner = PromptLearner(clip, NAMES, n_ctx=4, generator=torch.Generator().manual_seed(2))
    ctx0 = learner.ctx.detach().clone()
    opt = torch.optim.SGD(learner.parameters(), lr=0.5)
    gen = torch.Generator().manual_seed(3)
    state = gen.get_state()
    value = make_fit_step(clip, learner, opt, loss=loss, precision="fp32", generator=gen)(x, None, y)
    ctx = ctx0.clone().requires_grad_(True)
    logits = _open_clip_logits(clip, ctx, x)
    if loss == "ls":
        expected = F.cross_entropy(logits, y, label_smoothing=0.1)
    else:
        expected = F.cross_entropy(logits / (0.04 * logits.norm(dim=-1, keepdim=True)), y)
    expected.backward()
    torch.testing.assert_close(value, expected.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(learner.ctx.detach(), ctx0 - 0.5 * ctx.grad, atol=1e-6, rtol=1e-4)
    assert torch.equal(gen.get_state(), state)
    assert not torch.allclose(value, F.cross_entropy(logits.detach(), y))  # (not plain CE under another name)


def _hand_smot(clip, ctx, x, cams, y, t, lam, T):
    """Eq. 8 by hand on open_clip: zero-masked copies where cam >= t, eps = 1 - exp((t - 255) / T)."""
    K = len(NAMES)
    masked = x * (cams < t[:, None, None]).float()[:, None]
    logits = _open_clip_logits(clip, ctx, torch.cat([x, masked]))
    eps = 1 - torch.exp((t - 255) / T)
    soft = (1 - eps)[:, None] * F.one_hot(y, K) + eps[:, None] / K
    return (1 - lam) * F.cross_entropy(logits[:len(y)], y) - lam * (soft * logits[len(y):].log_softmax(-1)).sum(-1).mean()


def test_fit_step_defaults_and_two_steps_by_hand(clip):
    """The documented defaults (docs/method.md: alpha 50, beta 20, lam 0.1, T 200, zero masking),
    two SGD steps: the second step's update is its own gradient only (not added to the first's),
    and the loss that comes back is detached from the graph."""
    B, lr = 3, 0.5
    x, y = images(B, seed=7), torch.tensor([2, 0, 1])
    cams = torch.rand(B, 32, 32, generator=torch.Generator().manual_seed(8)) * 255
    learner = PromptLearner(clip, NAMES, n_ctx=4, generator=torch.Generator().manual_seed(2))
    ctx = learner.ctx.detach().clone()
    step = make_fit_step(clip, learner, torch.optim.SGD(learner.parameters(), lr=lr), precision="fp32",
                         generator=torch.Generator().manual_seed(3))
    twin = torch.Generator().manual_seed(3)
    for _ in range(2):
        loss = step(x, cams, y)
        assert not loss.requires_grad and loss.grad_fn is None
        t = sample_thresholds(B, 50.0, 20.0, generator=twin)
        leaf = ctx.clone().requires_grad_(True)
        expected = _hand_smot(clip, leaf, x, cams, y, t, lam=0.1, T=200.0)
        expected.backward()
        torch.testing.assert_close(loss, expected.detach(), atol=1e-5, rtol=1e-5)
        ctx = ctx - lr * leaf.grad
        torch.testing.assert_close(learner.ctx.detach(), ctx, atol=1e-6, rtol=1e-4)


def test_fit_step_of_a_tower_that_is_no_standard_vit_uses_encode_image(clip, monkeypatch):
    """An image tower ImageEncoder does not take (a ResNet CLIP, timm: fast_image_encoder gives
    None) is encoded by open_clip's own encode_image: the step is still Eq. 8 by hand."""
    import clip_smot.clip.step as step_module

    monkeypatch.setattr(step_module, "fast_image_encoder", lambda model, precision: None)
    B = 2
    x, y = images(B, seed=12), torch.tensor([2, 1])
    cams = torch.rand(B, 32, 32, generator=torch.Generator().manual_seed(13)) * 255
    learner = PromptLearner(clip, NAMES, n_ctx=4, generator=torch.Generator().manual_seed(2))
    ctx = learner.ctx.detach().clone().requires_grad_(True)
    loss = make_fit_step(clip, learner, torch.optim.SGD(learner.parameters(), lr=0.5), lam=0.3, T=50.0,
                         precision="fp32", generator=torch.Generator().manual_seed(3))(x, cams, y)
    t = sample_thresholds(B, 50.0, 20.0, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(loss, _hand_smot(clip, ctx, x, cams, y, t, lam=0.3, T=50.0).detach(), atol=1e-5,
                               rtol=1e-5)


def test_fit_step_compiles_the_image_blocks_only_when_asked(clip, monkeypatch):
    """compile_image=True compiles the image encoder's blocks once, when the step is made;
    compile_image=False leaves them eager (compile_layers itself: test_compiled_image_layers_*)."""
    compiled = []
    monkeypatch.setattr(ImageEncoder, "compile_layers", lambda self, **options: compiled.append(self))
    learner = PromptLearner(clip, NAMES, n_ctx=4, generator=torch.Generator().manual_seed(2))
    opt = torch.optim.SGD(learner.parameters(), lr=0.5)
    make_fit_step(clip, learner, opt, precision="fp32", compile_image=False)
    assert compiled == []
    make_fit_step(clip, learner, opt, precision="fp32", compile_image=True)
    assert len(compiled) == 1 and isinstance(compiled[0], ImageEncoder)


def test_fit_step_refusals_and_overlap_ignored_on_the_cpu(clip):
    learner = PromptLearner(clip, NAMES, n_ctx=4, generator=torch.Generator().manual_seed(2))
    opt = torch.optim.SGD(learner.parameters(), lr=0.5)
    with pytest.raises(ValueError, match=r"^loss must be one of \('smot', 'ce', 'ls', 'logitnorm'\), got 'focal'$"):
        make_fit_step(clip, learner, opt, loss="focal")
    with pytest.raises(ValueError, match="^cuda_graph needs the context on a CUDA device$"):
        make_fit_step(clip, learner, opt, cuda_graph=True)
    # overlap needs a second CUDA stream: on the CPU it is ignored, and the step is the eager one
    x, y = images(2, seed=9), torch.tensor([1, 0])
    cams = torch.rand(2, 32, 32, generator=torch.Generator().manual_seed(10)) * 255
    losses = []
    for overlap in (True, False):
        lrn = PromptLearner(clip, NAMES, n_ctx=4, generator=torch.Generator().manual_seed(2))
        losses.append(make_fit_step(clip, lrn, torch.optim.SGD(lrn.parameters(), lr=0.5), precision="fp32",
                                    generator=torch.Generator().manual_seed(3), overlap=overlap)(x, cams, y))
    torch.testing.assert_close(losses[0], losses[1], atol=0, rtol=0)


def test_fit_step_ce_and_bf16_run(clip):
    learner = PromptLearner(clip, NAMES, n_ctx=4, precision="bf16")
    opt = torch.optim.SGD(learner.parameters(), lr=0.1)
    before = learner.ctx.detach().clone()
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    ce = make_fit_step(clip, learner, opt, loss="ce", precision="bf16", generator=gen)
    value = ce(images(2), None, torch.tensor([0, 1]))  # plain CoOp: no CAMs, no thresholds drawn
    assert value.ndim == 0 and torch.isfinite(value) and torch.equal(gen.get_state(), state)
    smot = make_fit_step(clip, learner, opt, loss="smot", precision="bf16", generator=gen)
    value = smot(images(2), torch.rand(2, 32, 32) * 255, torch.tensor([0, 1]))
    assert value.ndim == 0 and torch.isfinite(value) and not torch.equal(gen.get_state(), state)
    assert not torch.equal(before, learner.ctx.detach())


def test_benchmark_runs_and_prints_json(tiny_clip_config):
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "fit_step.py"), "--model", tiny_clip_config, "--device", "cpu",
         "--classes", "5", "--batch-size", "2", "--steps", "1", "--warmup", "0"],
        capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PATH": ""},
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    for key in ("ms_per_step", "reference_ms_per_step", "speedup", "device", "peak_mem_gib", "tokens_encoded",
                "tokens_reference"):
        assert key in result
    assert result["tokens_reference"] == 5 * 77 and 0 < result["tokens_encoded"] < 5 * 77
    assert result["device"] == "cpu" and result["ms_per_step"] > 0
    # fit's CPU defaults: causal attention, nothing compiled, the plain step
    assert result["text_options"] == {"attention": "causal", "residual": "fp32", "compile_layers": False}
    assert result["fit_defaults_variant"] == "ours" and result["ms_per_step_fit_defaults"] == result["ms_per_step"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_encoders_match_open_clip(tiny_clip_config, tiny_clip_checkpoint, monkeypatch):
    """On CUDA (flash / memory-efficient kernels): fp32 equals open_clip's path, bf16 within bf16 tolerance."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # open_clip's patch conv: true fp32
    clip = load_clip(tiny_clip_config, tiny_clip_checkpoint, device="cuda")
    m = clip.model
    for precision, tol in (("fp32", 1e-4), ("bf16", 2e-2)):
        for csc in (False, True):
            learner = PromptLearner(clip, NAMES, n_ctx=8, csc=csc, precision=precision)
            with torch.no_grad():
                learner.ctx.normal_(0, 1)
                x = m.transformer(learner.prompt_embeddings(full=True) + m.positional_embedding, attn_mask=m.attn_mask)
                ref = m.ln_final(x)[torch.arange(len(NAMES)), learner.tokens.argmax(-1)] @ m.text_projection
                out = learner()
            assert ((out - ref).norm() / ref.norm()).item() < tol, (precision, csc)
        x = torch.rand(4, 3, 32, 32, device="cuda")
        with torch.no_grad():
            ref = m.encode_image(x)
            out = fast_image_encoder(m, precision)(x)
        assert ((out - ref).norm() / ref.norm()).item() < tol, precision


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_text_variants_match_open_clip(tiny_clip_config, tiny_clip_checkpoint):
    """On CUDA, against open_clip's fp32 encoding (features and gradient): attention="square",
    residual="precision" (bf16), and attention="flex" on FlexAttention's kernel (forward and
    backward), eager and with compiled layers."""
    clip = load_clip(tiny_clip_config, tiny_clip_checkpoint, device="cuda")
    for precision, residual, attention, compiled, tol in (
        ("fp32", "fp32", "square", False, 1e-4), ("bf16", "precision", "square", False, 3e-2),
        ("bf16", "precision", "causal", False, 3e-2),
        ("fp32", "fp32", "flex", False, 1e-4), ("fp32", "fp32", "flex", True, 1e-4),
        ("bf16", "fp32", "flex", False, 3e-2), ("bf16", "precision", "flex", True, 3e-2),
    ):
        case = (precision, residual, attention, compiled)
        learner = PromptLearner(clip, NAMES, n_ctx=8, precision=precision, residual=residual, attention=attention)
        if compiled:
            learner.encoder.compile_layers()
        with torch.no_grad():
            learner.ctx.normal_(0, 1)
        ref, ref_grad = open_clip_features_and_grad(clip, learner)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = learner()
        out.float().square().sum().backward()
        if attention == "flex":
            assert flex_kernel_ran(learner), case
        assert ((out - ref).norm() / ref.norm()).item() < tol, case
        assert ((learner.ctx.grad - ref_grad).norm() / ref_grad.norm()).item() < 10 * tol, case


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_compiled_flex_matches_open_clip_in_every_prompt_layout(tiny_clip_config, tiny_clip_checkpoint):
    """`clip-smot fit`'s CUDA text path (FlexAttention's kernel in compiled layers) with class-specific
    contexts, the class token in the middle or in front, a context from words: open_clip's fp32
    features and gradient (no shared prefix: tests/test_text_layouts.py)."""
    clip = load_clip(tiny_clip_config, tiny_clip_checkpoint, device="cuda")
    for case in ((True, "end", None), (False, "middle", None), (True, "front", None), (False, "end", "a photo of a")):
        csc, position, ctx_init = case
        learner = PromptLearner(clip, NAMES, n_ctx=8, ctx_init=ctx_init, csc=csc, class_position=position,
                                attention="flex")
        check_compiled_flex_on_gpu(clip, learner, case)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("loss", ["smot", "ce"])
def test_gpu_cuda_graph_and_overlapped_steps_equal_eager_step(tiny_clip_config, tiny_clip_checkpoint, loss):
    """Replayed as a CUDA graph, with the image encoder on its own stream, or both: the eager step's numbers."""
    clip = load_clip(tiny_clip_config, tiny_clip_checkpoint, device="cuda")
    runs = []
    for cuda_graph, overlap in ((False, False), (True, False), (False, True), (True, True)):
        learner = PromptLearner(clip, NAMES, n_ctx=4, generator=torch.Generator().manual_seed(0))
        opt = torch.optim.SGD(learner.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        step = make_fit_step(clip, learner, opt, loss=loss, precision="fp32",
                             generator=torch.Generator().manual_seed(1), cuda_graph=cuda_graph, overlap=overlap)
        losses = []
        for i in range(3):
            x = images(4, seed=i).cuda()
            cams = (torch.rand(4, 32, 32, generator=torch.Generator().manual_seed(10 + i)) * 255).cuda()
            losses.append(step(x, cams if loss == "smot" else None, torch.tensor([0, 1, 2, 0], device="cuda")))
        runs.append((torch.stack(losses), learner.ctx.detach().clone()))
    for i in (1, 2, 3):
        torch.testing.assert_close(runs[i][0], runs[0][0], atol=1e-5, rtol=1e-5, msg=f"variant {i}")
        torch.testing.assert_close(runs[i][1], runs[0][1], atol=1e-5, rtol=1e-5, msg=f"variant {i}")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_flex_compiled_cuda_graph_step_equals_default_step(tiny_clip_config, tiny_clip_checkpoint):
    """The fastest candidate (flex attention, compiled layers, CUDA graph) trains like the default step."""
    clip = load_clip(tiny_clip_config, tiny_clip_checkpoint, device="cuda")
    runs = []
    for fast in (False, True):
        learner = PromptLearner(clip, NAMES, n_ctx=4, generator=torch.Generator().manual_seed(0),
                                attention="flex" if fast else "causal")
        if fast:
            learner.encoder.compile_layers()
        opt = torch.optim.SGD(learner.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        step = make_fit_step(clip, learner, opt, precision="fp32", generator=torch.Generator().manual_seed(1),
                             cuda_graph=fast)
        losses = []
        for i in range(3):
            x = images(4, seed=i).cuda()
            cams = (torch.rand(4, 32, 32, generator=torch.Generator().manual_seed(10 + i)) * 255).cuda()
            losses.append(step(x, cams, torch.tensor([0, 1, 2, 0], device="cuda")))
        runs.append((torch.stack(losses), learner.ctx.detach().clone()))
    torch.testing.assert_close(runs[1][0], runs[0][0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(runs[1][1], runs[0][1], atol=1e-4, rtol=1e-4)


def test_benchmark_variants_and_profile_run_on_cpu(tiny_clip_config):
    """--variants times every text-encoder variant and the step with the fastest; --profile prints its table."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "fit_step.py"), "--model", tiny_clip_config, "--device", "cpu",
         "--classes", "5", "--batch-size", "2", "--steps", "1", "--warmup", "0", "--variants", "--profile",
         "--no-compile", "--no-cuda-graph"],
        capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PATH": ""},
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    v = result["variants"]
    assert not v["errors"], v["errors"]
    assert {"default_causal_packed", "square_packed", "residual_bf16_square_packed"} <= set(v["text_fwd_bwd_ms"])
    assert v["best_eager_text_variant"] in v["text_fwd_bwd_ms"]
    assert set(v["step_ms"]) == {"step_default", f"step_{v['best_eager_text_variant']}"}
    rows = result["profile_default_step"]
    assert 0 < len(rows) <= 15 and all(len(r) == 4 for r in rows)
    assert "top 15 ops" in out.stderr


def test_benchmark_counts_flops_and_the_floor_on_cpu(tiny_clip_config):
    """--count-flops: our step, its text part and the reference are counted; the floor is the larger
    of FLOPs over the matmul rate and weight bytes over the copy bandwidth."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "fit_step.py"), "--model", tiny_clip_config, "--device", "cpu",
         "--classes", "5", "--batch-size", "2", "--steps", "1", "--warmup", "0", "--count-flops", "--no-cuda-graph"],
        capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PATH": ""},
    )
    assert out.returncode == 0, out.stderr
    floor = json.loads(out.stdout.strip().splitlines()[-1])["floor"]
    assert 0 < floor["text_flop_fwd_bwd"] < floor["flop_per_step"]
    assert floor["reference_flop_per_step"] > 0 and floor["weight_bytes"] > 0
    flex = subprocess.run(  # FlexAttention's flat layout is counted with a dense mask: the same work
        [sys.executable, str(ROOT / "benchmarks" / "fit_step.py"), "--model", tiny_clip_config, "--device", "cpu",
         "--classes", "5", "--batch-size", "2", "--steps", "1", "--warmup", "0", "--count-flops", "--no-cuda-graph",
         "--attention", "flex"],
        capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PATH": ""},
    )
    assert flex.returncode == 0, flex.stderr
    flex_floor = json.loads(flex.stdout.strip().splitlines()[-1])["floor"]
    assert "floor_error" not in flex_floor and flex_floor["reference_flop_per_step"] == floor["reference_flop_per_step"]
    assert 0 < flex_floor["text_flop_fwd_bwd"] < flex_floor["flop_per_step"]
    compute_ms = floor["flop_per_step"] / floor["matmul_tflops"] / 1e9
    memory_ms = floor["weight_bytes"] / floor["copy_gbs"] / 1e6
    assert floor["floor_ms"] == pytest.approx(max(compute_ms, memory_ms), rel=1e-9)


def test_low_precision_residual_keeps_layernorm_inputs_and_weights_in_one_dtype(tiny_clip_config, tiny_clip_checkpoint):
    """CUDA's layer_norm refuses a bf16 input with float32 weights (seen on an H200), while the
    CPU kernel accepts it: so check the dtypes themselves, which the CPU run cannot reveal."""
    from clip_smot.clip.encoders import TextEncoder

    clip = load_clip(tiny_clip_config, tiny_clip_checkpoint)
    enc = TextEncoder(clip.model, precision="bf16", residual="precision")
    for blk in enc.blocks:
        assert {blk.ln1_w.dtype, blk.ln1_b.dtype, blk.ln2_w.dtype, blk.ln2_b.dtype} == {torch.bfloat16}
    enc32 = TextEncoder(clip.model, precision="bf16")
    assert enc32.blocks[0].ln1_w.dtype == torch.float32


def test_flex_available_takes_a_device_or_its_name():
    """docs/prompt.md lists ``flex_available(device)``; a device name like every other public
    function's ``device`` failed with AttributeError ('str' has no 'type')."""
    from clip_smot.clip.encoders import flex_available

    assert flex_available("cpu") is False
    assert flex_available(torch.device("cpu")) is False


def test_flex_and_compile_need_a_gpu_their_kernels_support(monkeypatch):
    """FlexAttention's Triton kernel from compute capability 8.0 (Ampere), Triton itself from 7.0
    and only where it starts (not without a C compiler); names and device objects alike; a CPU
    compiles (inductor's C++ backend) but has no FlexAttention kernel, and Triton is not asked."""
    from clip_smot.clip.encoders import compile_available, flex_available
    from clip_smot.common import device as common_device

    triton = {"why": None}  # (this machine has no GPU: Triton's own answer would be "no active driver")
    monkeypatch.setattr(common_device, "missing_triton", lambda: triton["why"])
    for sm, flex, compiles in (((9, 0), True, True), ((8, 0), True, True), ((7, 5), False, True),
                               ((7, 0), False, True), ((6, 1), False, False)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, sm=sm: sm)
        for device in ("cuda", torch.device("cuda", 0)):
            assert (flex_available(device), compile_available(device)) == (flex, compiles), (sm, device)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    triton["why"] = "Failed to find C compiler. Please specify via CC environment variable"
    assert not flex_available("cuda") and not compile_available(torch.device("cuda", 0))
    triton["why"] = None  # a torch without FlexAttention (before 2.5): no kernel however new the GPU
    monkeypatch.delattr(torch.nn.attention, "flex_attention", raising=False)
    monkeypatch.setitem(sys.modules, "torch.nn.attention.flex_attention", None)  # (its import fails)
    assert not flex_available("cuda") and compile_available("cuda")
    monkeypatch.setattr(common_device, "missing_triton", lambda: pytest.fail("asked Triton for the CPU"))
    assert compile_available("cpu") and not flex_available("cpu")


def test_flex_available_is_traced_without_starting_triton(monkeypatch):
    """The text encoder asks flex_available when it builds a layout, which a whole-encoder
    torch.compile traces: there Triton has started (it is compiling), and tracing the check
    (a cached function that imports Triton) would break a fullgraph compile."""
    from clip_smot.clip.encoders import flex_available
    from clip_smot.common import device as common_device

    asked = []
    monkeypatch.setattr(common_device, "missing_triton", lambda: asked.append(1) or None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    torch._dynamo.reset()
    compiled = torch.compile(lambda x: x * 2 if flex_available(torch.device("cuda")) else x, fullgraph=True,
                             backend="eager")
    assert compiled(torch.ones(2)).tolist() == [2.0, 2.0] and asked == []
    assert flex_available("cuda") and asked == [1]  # (outside a trace it asks)


def test_only_open_clips_plain_vit_gets_the_fast_image_encoder(clip):
    """The fast encoder computes the patch embedding as a matmul over disjoint patches, with no
    bias, and pools one token: a patch convolution with a bias, overlapping (stride 4 under a
    kernel of 8) or padded, a tower returning its tokens too (``output_tokens``), or a block that
    is not open_clip's standard one (cross-attention's ``ln_1_kv``) get open_clip's own path."""
    changes = {
        "bias": lambda v: setattr(v, "conv1", torch.nn.Conv2d(3, 64, 8, stride=8, bias=True)),
        "overlap": lambda v: setattr(v, "conv1", torch.nn.Conv2d(3, 64, 8, stride=4, bias=False)),
        "padded": lambda v: setattr(v, "conv1", torch.nn.Conv2d(3, 64, 8, stride=8, padding=1, bias=False)),
        "tokens": lambda v: setattr(v, "output_tokens", True),
        "block": lambda v: setattr(v.transformer.resblocks[0], "ln_1_kv", torch.nn.LayerNorm(64)),
    }
    assert fast_image_encoder(clip.model) is not None
    for name, change in changes.items():
        model = copy.deepcopy(clip.model)
        change(model.visual)
        assert fast_image_encoder(model) is None, name


def test_features_are_float32_or_a_callers_autocast_dtype_as_open_clips(clip):
    """The encoders' docstrings: float32 features, but under a caller's autocast the dtype it gives
    the final projection, the dtype open_clip's encode_text / encode_image return there."""
    from clip_smot.clip.encoders import TextEncoder, packed_index

    model = clip.model
    tokens = _hand_tokens(torch.Generator().manual_seed(5))
    eot = tokens.argmax(-1)
    x = (images() - 0.5) / 0.25
    text, image = TextEncoder(model), ImageEncoder(model.visual)
    with torch.no_grad():
        run = lambda: (text(model.token_embedding(tokens), eot, packed_index(eot, 77)), image(x),  # noqa: E731
                       model.encode_text(tokens), model.encode_image(x))
        assert [t.dtype for t in run()] == [torch.float32] * 4
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert [t.dtype for t in run()] == [torch.bfloat16] * 4


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_text_residual_precision_is_the_whole_tower_in_that_precision(clip, precision):
    """fit --help said --text-residual precision runs "the whole tower in bf16"; under --precision
    fp16 (on CUDA) it is in fp16: the help names the precision the tower takes."""
    import re

    from click.testing import CliRunner

    from clip_smot.cli import cli
    from clip_smot.clip.encoders import TextEncoder

    encoder = TextEncoder(clip.model, precision=precision, residual="precision")
    assert encoder.residual_dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    out = CliRunner().invoke(cli, ["fit", "--help"], terminal_width=500).output
    text = re.search(r"--text-residual \[fp32\|precision\]\s+(.*)", out).group(1)
    tower = re.search(r"the whole tower in ([^;)]*)", text).group(1)
    assert precision in tower, text


def test_a_cuda_graph_step_off_cuda_is_refused_when_made(clip):
    """make_fit_step(cuda_graph=True) with the context on the CPU: a ValueError at once (fit's
    --cuda-graph is refused off CUDA before), not a failure at the first capture."""
    learner = PromptLearner(clip, NAMES, n_ctx=4, generator=torch.Generator().manual_seed(2))
    opt = torch.optim.SGD(learner.parameters(), lr=0.5)
    with pytest.raises(ValueError, match=r"^cuda_graph needs the context on a CUDA device$"):
        make_fit_step(clip, learner, opt, precision="fp32", cuda_graph=True, noise_generator=None)


def test_an_encoder_of_an_unknown_precision_or_tower_is_refused(clip):
    """The library's encoders: a TextEncoder of a precision outside fp32/bf16/fp16 is one line
    naming --precision (the CLI's choices keep it out), one of an unknown attention a ValueError, an
    ImageEncoder of a tower that is not open_clip's standard ViT a ValueError (fast_image_encoder
    returns None for one)."""
    from clip_smot.clip.encoders import TextEncoder

    with pytest.raises(UserError, match=r"^--precision must be one of \('bf16', 'fp16', 'fp32'\), got 'fp64'$"):
        TextEncoder(clip.model, precision="fp64")
    with pytest.raises(ValueError, match=r"^attention must be one of \('causal', 'mask', 'square', 'flex'\), got "
                                         r"'dense'$"):
        TextEncoder(clip.model, attention="dense")
    with pytest.raises(ValueError, match=r"^ImageEncoder supports open_clip's standard ViT image tower only$"):
        ImageEncoder(torch.nn.Linear(2, 2))
    assert fast_image_encoder(torch.nn.Linear(2, 2)) is None
