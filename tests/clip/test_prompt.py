"""The CoOp prompt module against open_clip's own text encoding (tiny CLIP, CPU)."""

import copy
import dataclasses
import json
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import (
    check_features_and_gradient_equal_open_clip,
    check_features_equal_open_clip,
    check_flex_kernel_forward,
    open_clip_encoding,
    random_ctx_,
)

from clip_smot.clip import encoders
from clip_smot.clip.model import load_clip
from clip_smot.clip.prompt import (
    PromptLearner,
    ctx_init_length,
    text_features_from_prompt,
    zero_shot_text_features,
)
from clip_smot.clip.prompt_file import load_prompt, save_prompt
from clip_smot.common.bundled import bundled_file
from clip_smot.common.errors import UserError

# Names of different token lengths (1, 3 and 5 tokens), so that EOT positions differ.
NAMES = ["goldfish", "great white shark", "tree frog", "Sealyham Terrier", "cat"]


@pytest.fixture(scope="module")
def clip(tiny_clip_config, tiny_clip_checkpoint):
    return load_clip(tiny_clip_config, tiny_clip_checkpoint)


@pytest.mark.parametrize("csc", [False, True])
@pytest.mark.parametrize("class_position", ["end", "middle", "front"])
@pytest.mark.parametrize("attention", ["causal", "mask"])
def test_features_equal_open_clip_full_77_tokens(clip, csc, class_position, attention):
    """fit's layout (the prefix shared, each prompt packed up to its own EOT); benchmarks'
    layouts without them: tests/test_text_layouts.py."""
    learner = PromptLearner(clip, NAMES, n_ctx=5, csc=csc, class_position=class_position, attention=attention)
    check_features_equal_open_clip(clip, learner, csc, class_position, share_prefix=True, pack=True)


@pytest.mark.parametrize("csc", [False, True])
@pytest.mark.parametrize("class_position", ["end", "middle", "front"])
def test_layouts_of_the_imagenet_names_are_coops_on_openais_tokens(clip, class_position, csc):
    """The 1000 bundled ImageNet names, 15 context vectors: the prompts' tokens, EOT positions and
    embeddings are CoOp's PromptLearner (Zhou et al., 2022, trainers/coop.py) written out here on
    OpenAI's own tokenizer (tests/reference_clip.py), not open_clip's, nor this package's
    permutation: "X X ... X {name}." tokenized, name_len = len(encode(name)); end: [SOS] ctx
    [name . EOT]; middle: [SOS] ctx[:7] name ctx[7:] [. EOT]; front: [SOS] name ctx [. EOT]; pooled
    at the argmax of the tokens. For middle and front the sentence is "X X ... X {name} ."
    (docs/prompt.md): six of the names end in ")", which CoOp's "{name}." merges with the period
    into one token ")." and moves to the front with the name."""
    import reference_clip as ref_clip

    from clip_smot.common.bundled import imagenet_classnames

    names, n, h = imagenet_classnames(), 15, 7  # (odd: CoOp's first half is n_ctx // 2, the smaller)
    learner = PromptLearner(clip, names, n_ctx=n, csc=csc, class_position=class_position)
    random_ctx_(learner)
    tok = ref_clip.openai_tokenizer()
    period = "." if class_position == "end" else " ."
    rows = ref_clip.tokenize([" ".join(["X"] * n) + f" {name}{period}" for name in names])  # [K, 77]
    assert sum(name.endswith(")") for name in names) == 6
    emb = clip.model.token_embedding.weight.detach()[rows]  # [K, 77, d]
    ctx = learner.ctx.detach() if csc else learner.ctx.detach().expand(len(names), -1, -1)  # [K, n, d]
    want_tokens, want_embeds = [], []
    for k, name in enumerate(names):
        m = len(tok.encode(name))
        r, e = rows[k], emb[k]
        sos, X, cls, rest = (slice(0, 1), slice(1, 1 + n), slice(1 + n, 1 + n + m), slice(1 + n + m, None))
        if class_position == "end":
            parts = [(r[sos], e[sos]), (r[X], ctx[k]), (r[cls], e[cls]), (r[rest], e[rest])]
        elif class_position == "middle":
            parts = [(r[sos], e[sos]), (r[1:1 + h], ctx[k, :h]), (r[cls], e[cls]), (r[1 + h:1 + n], ctx[k, h:]),
                     (r[rest], e[rest])]
        else:
            parts = [(r[sos], e[sos]), (r[cls], e[cls]), (r[X], ctx[k]), (r[rest], e[rest])]
        want_tokens.append(torch.cat([p[0] for p in parts]))
        want_embeds.append(torch.cat([p[1] for p in parts]))
    assert torch.equal(learner.tokens.cpu(), torch.stack(want_tokens))
    assert torch.equal(learner.eot.cpu(), rows.argmax(dim=-1))
    with torch.no_grad():
        torch.testing.assert_close(learner.prompt_embeddings(full=True), torch.stack(want_embeds), rtol=0, atol=0)


@pytest.mark.parametrize(
    "class_position, text, ctx_init",
    [("end", "a photo of a {}.", "a photo of a"), ("front", "{} a photo of a.", "a photo of a"),
     ("middle", "a photo {} of a.", "a photo of a"),
     ("middle", "a {} photo of.", "a photo of")],  # (an odd n_ctx: CoOp's half is n_ctx // 2, the smaller)
)
@pytest.mark.parametrize("csc", [False, True])
def test_ctx_init_gives_encode_text_of_the_sentence(clip, class_position, text, ctx_init, csc):
    """With ctx = the embeddings of the words, the layout is checked against the tokenizer."""
    learner = PromptLearner(clip, NAMES, n_ctx=16, ctx_init=ctx_init, csc=csc, class_position=class_position)
    n = len(ctx_init.split())
    assert learner.n_ctx == n and learner.ctx.shape == ((len(NAMES), n, 32) if csc else (n, 32))
    expected = clip.model.encode_text(clip.tokenizer([text.format(n) for n in NAMES]))
    torch.testing.assert_close(learner(), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "class_position, text",
    [("end", "a photo of a {}."), ("front", "{} a photo of a."), ("middle", "a photo {} of a.")],
)
def test_names_ending_in_punctuation_keep_their_layout(clip, class_position, text):
    """A name ending in punctuation ("dog!" + "." tokenises as "dog", "!.") keeps the final "." in
    its place at the front and in the middle; unicode names are laid out like any other."""
    names = ["U.S.", "dog!", "(x)", "St. Bernard's", "café crème", "猫", "🐶 dog", "goldfish"]
    for csc in (False, True):
        learner = PromptLearner(clip, names, ctx_init="a photo of a", csc=csc, class_position=class_position)
        expected = clip.model.encode_text(clip.tokenizer([text.format(n) for n in names]))
        torch.testing.assert_close(learner(), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("csc", [False, True])
def test_a_context_of_one_word_is_that_words_sentence(clip, csc):
    """--ctx-init "photo": one token, n_ctx 1 (the smallest context), "photo {name}." as open_clip encodes it."""
    learner = PromptLearner(clip, NAMES, ctx_init="photo", csc=csc)
    assert learner.n_ctx == 1 and learner.ctx.shape == ((len(NAMES), 1, 32) if csc else (1, 32))
    expected = clip.model.encode_text(clip.tokenizer([f"photo {n}." for n in NAMES]))
    torch.testing.assert_close(learner(), expected, atol=1e-5, rtol=0)


def test_ctx_init_length_is_the_count_of_the_words_tokens(clip):
    """fit records n_ctx from ctx_init_length before any learner is built: one-token words, counted
    by hand (start and end tokens left out), up to 74 of them (start + 74 + end = 76 positions)."""
    assert ctx_init_length(clip.tokenizer, "photo") == 1
    assert ctx_init_length(clip.tokenizer, "a photo of a") == 4
    assert ctx_init_length(clip.tokenizer, " ".join(["a"] * 74)) == 74


def test_words_of_74_tokens_are_whole_and_meet_the_class_names_limit(clip):
    """74 one-token words: start + 74 + end is 76 of the 77 positions, so the tokenizer cut nothing;
    what is refused is the class beside them: 1 + 74 + 1 ('cat') + 2 = 78 tokens, 73 words fit."""
    with pytest.raises(UserError, match=r"^--ctx-init 'a a .*\(74 tokens\): the prompt of class 'cat' \(a name of "
                                        r"1 token\) needs 78 of the text encoder's 77 tokens; use words of at most 73 tokens$"):
        PromptLearner(clip, ["cat"], ctx_init=" ".join(["a"] * 74))


def test_beside_a_name_of_73_tokens_one_context_vector_fits(clip):
    """77 less 1 + 73 + 2 is 1: the hint is that one vector (or one word) fits, not that none does."""
    with pytest.raises(UserError, match=r"\(a name of 73 tokens\) needs 78 of the text encoder's 77 tokens; use at most "
                                        r"--n-ctx 1$"):
        PromptLearner(clip, ["1" * 73], n_ctx=2)
    with pytest.raises(UserError, match=r"needs 78 of the text encoder's 77 tokens; use words of at most 1 token$"):
        PromptLearner(clip, ["1" * 73], ctx_init="a photo")
    assert PromptLearner(clip, ["1" * 73], n_ctx=1).seq_len == 77


def test_full_prompt_embeddings_are_the_tokens_embeddings_beside_the_context(clip):
    """prompt_embeddings(full=True), all 77 positions: CoOp's "X X X X {name}." tokens embedded by
    the model's own token embedding everywhere but at the 4 context slots (padding included)."""
    learner = PromptLearner(clip, NAMES, n_ctx=4)
    random_ctx_(learner)
    full = learner.prompt_embeddings(full=True)  # [K, 77, d]
    expected = clip.model.token_embedding(clip.tokenizer([f"X X X X {name}." for name in NAMES]))  # [K, 77, d]
    assert full.shape == expected.shape == (len(NAMES), 77, 32)
    torch.testing.assert_close(full[:, 0], expected[:, 0], atol=0, rtol=0)
    torch.testing.assert_close(full[:, 1:5], learner.ctx.expand(len(NAMES), -1, -1), atol=0, rtol=0)
    torch.testing.assert_close(full[:, 5:], expected[:, 5:], atol=0, rtol=0)


def test_zero_shot_features_are_normalised_encode_text(clip):
    feats = zero_shot_text_features(clip, NAMES, batch_size=2)  # several batches
    expected = clip.model.encode_text(clip.tokenizer([f"a photo of a {n}" for n in NAMES]))
    torch.testing.assert_close(feats, expected / expected.norm(dim=-1, keepdim=True), atol=1e-6, rtol=0)
    with pytest.raises(UserError, match="template"):
        zero_shot_text_features(clip, NAMES, template="a photo")


def test_zero_shot_names_that_repeat_get_the_same_features_bit_for_bit(clip, monkeypatch):
    """Folders 'sea lion' and 'sea_lion' (ImageNet's two 'crane' or 'missile' wnids) give one text
    twice. Encoded as two rows of a batch, the two features differed in their last bits where the
    CPU's GEMM rounds by row (1 ulp with MKL's SSE4.2 kernels; an AMD CPU may run those): their
    images' predictions were then a matter of rounding, not the first class's as documented. Each
    distinct text is encoded once. (Here the encoder itself adds what depends on the row.)"""
    real = clip.model.encode_text
    rows = []

    def by_row(tokens):  # a kernel whose rounding depends on the row of the batch
        rows.append(len(tokens))
        out = real(tokens)
        return out + 1e-3 * torch.arange(len(tokens), dtype=out.dtype)[:, None]

    monkeypatch.setattr(clip.model, "encode_text", by_row)
    names = ["sea lion", "goldfish", "sea lion", "cat", "goldfish"]
    feats = zero_shot_text_features(clip, names, batch_size=2)
    assert rows == [2, 1]  # 3 distinct texts, in batches of 2
    assert torch.equal(feats[0], feats[2]) and torch.equal(feats[1], feats[4])
    assert feats.shape == (5, 32) and not torch.equal(feats[0], feats[1])
    assert torch.equal(feats[3], zero_shot_text_features(clip, ["cat"])[0])  # (alone in its batch both times)


@pytest.mark.parametrize("csc, class_position", [(False, "end"), (True, "middle")])
def test_only_the_context_gets_gradient(clip, csc, class_position):
    learner = PromptLearner(clip, NAMES, n_ctx=4, csc=csc, class_position=class_position)
    assert [n for n, _ in learner.named_parameters()] == ["ctx"]
    assert list(learner.state_dict()) == ["ctx"]
    learner().pow(2).sum().backward()
    assert learner.ctx.grad is not None and learner.ctx.grad.abs().sum() > 0
    if csc:  # every class's own context gets gradient
        assert (learner.ctx.grad.flatten(1).abs().sum(1) > 0).all()
    for name, p in clip.model.named_parameters():
        assert not p.requires_grad and p.grad is None, name


@pytest.mark.parametrize("csc", [False, True])
def test_gradient_equals_open_clip_gradient(clip, csc):
    """The shared-prefix, packed encoder back-propagates exactly what open_clip's full path does."""
    learner = PromptLearner(clip, NAMES, n_ctx=4, csc=csc)
    random_ctx_(learner, seed=3)
    target = torch.randn(len(NAMES), 32, generator=torch.Generator().manual_seed(4))
    (learner() * target).sum().backward()
    ours = learner.ctx.grad.clone()
    learner.ctx.grad = None
    (open_clip_encoding(clip, learner.prompt_embeddings(full=True), learner.tokens) * target).sum().backward()
    torch.testing.assert_close(ours, learner.ctx.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("csc, class_position, attention", [(False, "end", "causal"), (True, "front", "causal"),
                                                          (False, "end", "flex")])
def test_bf16_weights_within_bf16_tolerance(clip, csc, class_position, attention):
    ref = PromptLearner(clip, NAMES, n_ctx=4, csc=csc, class_position=class_position)
    fast = PromptLearner(clip, NAMES, n_ctx=4, csc=csc, class_position=class_position, precision="bf16",
                         attention=attention)
    random_ctx_(ref), random_ctx_(fast)
    assert fast.ctx.dtype == torch.float32
    assert fast.encoder.blocks[0].fc_w.dtype == torch.bfloat16
    assert clip.model.transformer.resblocks[0].mlp.c_fc.weight.dtype == torch.float32  # model untouched
    a, b = fast(), ref()
    assert a.dtype == torch.float32
    rel = (a - b).norm() / b.norm()
    assert 1e-4 < rel < 2e-2  # really computed in bf16, and close
    assert F.cosine_similarity(a, b, dim=-1).min() > 0.999


def test_text_features_from_prompt_round_trip(clip, tmp_path):
    learner = PromptLearner(clip, NAMES, n_ctx=3, csc=True, class_position="middle")
    random_ctx_(learner)
    with torch.no_grad():
        feats = F.normalize(learner(), dim=-1)
    path = tmp_path / "prompt.safetensors"
    save_prompt(path, learner.ctx, feats, clip.identity(), 3, "middle", True, NAMES, {"seed": 0})
    prompt = load_prompt(path)
    torch.testing.assert_close(text_features_from_prompt(clip, prompt), feats, atol=1e-6, rtol=0)
    torch.testing.assert_close(prompt.text_features, feats)
    # the file's path does as well (as for PromptScorer.from_file; a path was an AttributeError)
    torch.testing.assert_close(text_features_from_prompt(clip, str(path)), feats, atol=1e-6, rtol=0)


def test_text_features_from_prompt_rejects_a_wrong_ctx(clip, tmp_path):
    path = tmp_path / "bad.safetensors"
    feats = torch.full((len(NAMES), 32), 32**-0.5)  # (normalised, as load_prompt checks)
    save_prompt(path, torch.zeros(4, 32), feats, clip.identity(), 3, "end", False, NAMES, {})
    with pytest.raises(UserError, match=r"bad.safetensors: ctx \(4, 32\) does not match \[3, 32\]"):
        load_prompt(path)  # 4 context vectors, metadata says 3
    save_prompt(path, torch.zeros(3, 32), feats, clip.identity(), 3, "end", False, NAMES, {})
    prompt = dataclasses.replace(load_prompt(path), ctx=torch.zeros(4, 32))  # a PromptFile made in Python
    with pytest.raises(UserError, match="bad.safetensors: ctx has shape"):
        text_features_from_prompt(clip, prompt)


def test_random_init_is_seeded_normal_002(clip):
    a = PromptLearner(clip, NAMES, n_ctx=16, generator=torch.Generator().manual_seed(7))
    b = PromptLearner(clip, NAMES, n_ctx=16, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a.ctx, b.ctx)
    assert a.ctx.shape == (16, 32) and a.ctx.dtype == torch.float32
    assert abs(a.ctx.std().item() - 0.02) < 0.003 and abs(a.ctx.mean().item()) < 0.003


def test_bad_arguments(clip):
    with pytest.raises(UserError, match="--class-position"):
        PromptLearner(clip, NAMES, class_position="left")
    with pytest.raises(UserError, match="--n-ctx"):
        PromptLearner(clip, NAMES, n_ctx=0)
    with pytest.raises(UserError, match="--n-ctx 74: .* of the text encoder.s 77 tokens"):
        PromptLearner(clip, NAMES, n_ctx=74)
    with pytest.raises(UserError, match="--precision"):
        PromptLearner(clip, NAMES, precision="int8")


def test_custom_text_towers_are_refused(clip):
    class CustomTextCLIP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.text = torch.nn.Linear(2, 2)

    fake = type(clip)(**{**clip.__dict__, "model": CustomTextCLIP()})
    with pytest.raises(UserError, match="standard CLIP text tower"):
        PromptLearner(fake, NAMES)


@pytest.mark.parametrize("missing", ["ln_final", "text_projection", "attn_mask"])
def test_a_model_without_a_part_of_the_text_tower_is_refused(clip, missing):
    """A model with no ``text`` tower of its own but without one part of CLIP's (here deleted
    from a copy of the tiny CLIP) is refused in one line, before anything reads that part."""
    broken = copy.deepcopy(clip.model)
    delattr(broken, missing)
    assert not hasattr(broken, "text") and not hasattr(broken, missing)
    with pytest.raises(UserError, match="standard CLIP text tower"):
        encoders.check_text_tower(broken, "tiny")


def test_a_text_tower_without_a_causal_mask_is_refused(tiny_clip_config, tmp_path):
    """open_clip's ``text_cfg.no_causal_mask`` builds a text transformer whose tokens see the whole
    prompt, padding included: encoding up to each EOT only, and packing, would give other features
    than its encode_text."""
    cfg = json.loads(Path(tiny_clip_config).read_text())
    cfg["text_cfg"]["no_causal_mask"] = True
    path = tmp_path / "clip-smot-tiny-bidirectional.json"
    path.write_text(json.dumps(cfg))
    bidirectional = load_clip(str(path), None)
    assert bidirectional.model.attn_mask is None
    with pytest.raises(UserError, match="causal text transformer .* without a causal mask"):
        PromptLearner(bidirectional, NAMES)


def test_a_text_tower_pooled_elsewhere_or_with_cross_attention_is_refused(clip):
    """A CoOp prompt is pooled at its EOT token by open_clip's standard blocks: a text tower
    pooled at its first or last token (``text_pool_type``), or whose blocks cross-attend
    (``ln_1_kv``), would give other features than the encoder computes, and is refused."""
    pooled = copy.deepcopy(clip.model)
    pooled.text_pool_type = "last"
    with pytest.raises(UserError, match=r"pooled at the EOT token \(text_pool_type 'argmax'\), got 'last'$"):
        PromptLearner(dataclasses.replace(clip, model=pooled), NAMES)
    crossed = copy.deepcopy(clip.model)
    crossed.transformer.resblocks[1].ln_1_kv = torch.nn.LayerNorm(32)
    with pytest.raises(UserError, match="not open_clip's standard ResidualAttentionBlock"):
        PromptLearner(dataclasses.replace(clip, model=crossed), NAMES)


def test_a_prompt_of_all_77_tokens_is_encoded_as_open_clip_does(clip):
    """n_ctx 73 beside a one-token name fills the context exactly: 1 + 73 + 1 + "." + EOT = 77
    tokens, which the encoder takes (no more would fit) and encodes as open_clip does."""
    learner = PromptLearner(clip, ["goldfish", "cat"], n_ctx=73)
    random_ctx_(learner)
    assert learner.seq_len == 77 and learner.prefix_len == 74
    with torch.no_grad():
        expected = open_clip_encoding(clip, learner.prompt_embeddings(full=True), learner.tokens)
        torch.testing.assert_close(learner(), expected, atol=1e-5, rtol=0)


def test_a_prompt_too_long_for_the_text_encoder_names_the_flag_and_what_fits(clip):
    """The error names what set n_ctx (--n-ctx, or the --ctx-init words and their token count),
    the longest class name wherever it stands, and the n_ctx that fits beside it: 77 less its
    1 + 72 + 2 tokens is 2 for a name of 72 digits (one token each); beside a name of 74 none."""
    long_name = "1" * 72
    with pytest.raises(UserError, match=rf"^--n-ctx 16: the prompt of class '{long_name}' \(a name of 72 tokens\) needs 91 "
                                        r"of the text encoder's 77 tokens; use at most --n-ctx 2$"):
        PromptLearner(clip, ["goldfish", long_name, "cat"], n_ctx=16)
    with pytest.raises(UserError, match=r"^--ctx-init 'a photo of a' \(4 tokens\): the prompt of class .* needs 79 of "
                                        r"the text encoder's 77 tokens; use words of at most 2 tokens$"):
        PromptLearner(clip, ["goldfish", long_name], ctx_init="a photo of a")
    with pytest.raises(UserError, match=r"\(a name of 74 tokens\) needs 78 of the text encoder's 77 tokens; "
                                        r"no context fits beside that name$"):
        PromptLearner(clip, ["1" * 74], n_ctx=1)
    with pytest.raises(UserError, match=r"^--ctx-init '  ': has no tokens$"):
        PromptLearner(clip, NAMES, ctx_init="  ")
    # 80 words of one token each: the tokenizer cut them at 75 without a word, and --n-ctx (which the
    # words set) was the hint; now one line naming --ctx-init, the words shown cut to their first 80
    # characters (100 KB of words were echoed whole)
    for words, shown in ((" ".join(["a"] * 75), "'" + "a " * 40 + "'... (149 characters)"),
                         (" ".join(["a"] * 80), "'" + "a " * 40 + "'... (159 characters)")):
        with pytest.raises(UserError) as e:
            PromptLearner(clip, NAMES, ctx_init=words)
        assert str(e.value) == (f"--ctx-init {shown}: its words take 75 or more of the text encoder's 77 tokens, "
                                "leaving none for a class name; use words of at most 73 tokens")
    PromptLearner(clip, ["cat"], ctx_init=" ".join(["a"] * 73))  # start, 73, 'cat', '.', end: 77 tokens


@pytest.mark.parametrize("attention", ["square", "flex"])
@pytest.mark.parametrize("csc, class_position", [(False, "end"), (True, "middle"), (False, "front")])
def test_attention_layouts_equal_open_clip_with_gradient(clip, attention, csc, class_position):
    """attention="square" (prefix broadcast, one is_causal SDPA) and "flex" (flat token list,
    prefix + own-prompt mask; a dense mask on the CPU): features and gradient exact."""
    learner = PromptLearner(clip, NAMES, n_ctx=5, csc=csc, class_position=class_position, attention=attention)
    check_features_and_gradient_equal_open_clip(clip, learner)


@pytest.mark.parametrize("attention", ["causal", "square", "flex"])
def test_bf16_residual_within_bf16_tolerance_of_a_bf16_open_clip(clip, attention):
    """residual="bf16": the whole tower in bf16, as open_clip's model cast to bf16 computes it."""
    fast = PromptLearner(clip, NAMES, n_ctx=4, precision="bf16", residual="bf16", attention=attention)
    random_ctx_(fast)
    assert fast.encoder.residual_dtype == torch.bfloat16
    model16 = copy.deepcopy(clip.model).to(torch.bfloat16)  # the issue author's whole-model cast
    full = fast.prompt_embeddings(full=True).detach()
    ref32 = open_clip_encoding(clip, full, fast.tokens)
    x = model16.transformer((full + clip.model.positional_embedding).bfloat16(), attn_mask=model16.attn_mask.bfloat16())
    x = model16.ln_final(x)[torch.arange(len(NAMES)), fast.tokens.argmax(-1)] @ model16.text_projection
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast outside is switched off inside
        a = fast()
    assert a.dtype == torch.float32
    rel_ours = ((a - ref32).norm() / ref32.norm()).item()
    rel_cast = ((x.float() - ref32).norm() / ref32.norm()).item()
    assert 1e-4 < rel_ours < 3e-2 and rel_ours < 2 * rel_cast + 1e-3  # bf16 error, no worse than the cast model's
    assert F.cosine_similarity(a, ref32, dim=-1).min() > 0.999
    a.square().sum().backward()
    assert fast.ctx.grad is not None and torch.isfinite(fast.ctx.grad).all()


def test_residual_must_match_precision(clip):
    with pytest.raises(UserError, match="text-residual"):
        PromptLearner(clip, NAMES, n_ctx=4, precision="bf16", residual="fp16")


@pytest.mark.cpp_compiler
@pytest.mark.parametrize("attention", ["square", "flex"])
def test_compiled_layers_equal_eager(clip, attention):
    """TextEncoder.compile_layers (regional torch.compile of the layers): same features and gradient."""
    eager = PromptLearner(clip, NAMES, n_ctx=4, attention=attention)
    compiled = PromptLearner(clip, NAMES, n_ctx=4, attention=attention)
    random_ctx_(eager), random_ctx_(compiled)
    compiled.encoder.compile_layers()
    a, b = eager(), compiled()
    torch.testing.assert_close(b, a, atol=1e-5, rtol=0)
    a.sum().backward(), b.sum().backward()
    torch.testing.assert_close(compiled.ctx.grad, eager.ctx.grad, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="square"):
        PromptLearner(clip, NAMES, n_ctx=4).encoder.compile_layers()


def test_flex_masks_by_hand(clip):
    """The flat masks for 2 prompts after a shared prefix, checked entry by entry, and built once."""
    enc = PromptLearner(clip, NAMES[:1], attention="flex").encoder
    P, S = 2, 3
    eot = torch.tensor([1, 0])  # prompt 0: 2 tokens, prompt 1: 1 token
    index = torch.tensor([0, 1, 3])  # packed positions of the [2, 3] layout
    layout = enc._layout(eot, index, 2, S, P)
    # token positions: prefix 0, 1; prompt 0: 2, 3 (its EOT); prompt 1: 4 (its EOT)
    assert layout["eot_token"].tolist() == [1, 2]  # after the prefix
    tokens, eots = layout["masks"]
    expected = torch.tensor([
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [1, 1, 1, 1, 0],
        [1, 1, 0, 0, 1],
    ], dtype=torch.bool)
    assert torch.equal(tokens, expected)
    assert torch.equal(eots, torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 1]], dtype=torch.bool))
    assert enc._layout(eot, index, 2, S, P)["masks"][0] is tokens  # cached
    eot.add_(0)  # an in-place change (even a no-op) rebuilds them
    assert enc._layout(eot, index, 2, S, P)["masks"][0] is not tokens
    for _ in range(40):  # callers passing fresh tensors: the cache stays bounded
        enc._layout(eot.clone(), index, 2, S, P)
    assert len(enc._layouts) == encoders._LAYOUTS_KEPT


@pytest.mark.cpp_compiler
@pytest.mark.parametrize("compiled, csc, class_position, ctx_init", [
    (False, False, "end", None), (True, False, "end", None),
    (False, True, "middle", None), (False, False, "front", None), (False, True, "end", None),
    (False, False, "end", "a photo of a"),
])
def test_flex_kernel_forward_equals_open_clip(clip, monkeypatch, compiled, csc, class_position, ctx_init):
    """FlexAttention's own kernel with the BlockMasks (forward only on the CPU: torch has no CPU
    backward for it), in every prompt layout (shared prefix or none), also inside compiled
    layers: open_clip's features. Compiled layers call the plain FlexAttention, which their
    compiler fuses: the process's separately compiled one serves the eager last layer alone
    (its EOT queries, one per prompt)."""
    pytest.importorskip("torch.nn.attention.flex_attention")
    from torch.nn.attention.flex_attention import flex_attention

    queries = []

    def separately_compiled(q, k, v, block_mask):  # (the uncompiled function: the same values)
        queries.append(q.shape[-2])
        return flex_attention(q, k, v, block_mask=block_mask)

    monkeypatch.setattr(encoders, "_COMPILED_FLEX", separately_compiled)
    flex = PromptLearner(clip, NAMES, n_ctx=5, ctx_init=ctx_init, csc=csc, class_position=class_position,
                         attention="flex")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "flex_attention called without torch.compile", UserWarning)
        check_flex_kernel_forward(clip, flex, compiled, csc, class_position, share_prefix=True)
    n_layers = len(clip.model.transformer.resblocks)
    assert queries == ([len(NAMES)] if compiled else [flex.prefix_len + flex.packed_index.numel()] * (n_layers - 1)
                       + [len(NAMES)])


def test_flex_block_mask_is_sparse_for_the_imagenet_prompts(clip):
    """For the 1000 ImageNet names and 16 context tokens (4,182 tokens, docs/prompt.md), the
    token BlockMask visits 1 to 3 blocks of 128 keys per query block: under 10% of the blocks."""
    pytest.importorskip("torch.nn.attention.flex_attention")
    names = bundled_file("prompts", "imagenet1k_classnames.txt").read_text().splitlines()
    learner = PromptLearner(clip, names, n_ctx=16, attention="flex")
    learner.encoder.flex_kernel = True  # BlockMasks, also on the CPU
    P = learner.prefix_len
    layout = learner.encoder._layout(learner.suffix_eot, learner.packed_index, len(names), learner.seq_len - P, P)
    tokens, eots = layout["masks"]
    assert learner.tokens_encoded == 4182 and tokens.shape[-2:] == (4182, 4182) and eots.shape[-2:] == (1000, 4182)
    per_block = tokens.kv_num_blocks[0, 0]  # [33]: key blocks each query block visits
    assert len(per_block) == 33 and 1 <= per_block.min() and per_block.max() <= 3
    assert per_block.sum() < 0.1 * 33 * 33
    assert eots.kv_num_blocks[0, 0].sum() < 0.25 * 8 * 33


def test_flex_masks_may_be_read_past_the_end_as_torch_2_5_reads_them(clip, monkeypatch):
    """torch 2.5's create_block_mask called the mask functions on every position up to the
    lengths rounded up to its 128-token blocks: the masks indexed past the token list (an
    IndexError, the flex path unusable on that torch). Emulated here by calling them so first:
    they answer there, and the masks within the lengths are the exact ones (checked against the
    dense masks the same layout gives without the kernel)."""
    flex = pytest.importorskip("torch.nn.attention.flex_attention")
    real = flex.create_block_mask

    def as_torch_2_5(mask_mod, B, H, Q_LEN, KV_LEN, device="cpu", **kwargs):
        q = torch.arange(-(-Q_LEN // 128) * 128, device=device)
        kv = torch.arange(-(-KV_LEN // 128) * 128, device=device)
        mask_mod(None, None, q[:, None], kv[None, :])  # [Q rounded up, KV rounded up]
        return real(mask_mod, B, H, Q_LEN, KV_LEN, device=device, **kwargs)

    monkeypatch.setattr(flex, "create_block_mask", as_torch_2_5)
    learner = PromptLearner(clip, NAMES, n_ctx=4, attention="flex")
    P = learner.prefix_len
    args = (learner.suffix_eot, learner.packed_index, len(NAMES), learner.seq_len - P, P)
    learner.encoder.flex_kernel = True
    tokens, eots = learner.encoder._layout(*args)["masks"]
    learner.encoder.flex_kernel, learner.encoder._layouts = False, {}
    dense_tokens, dense_eots = learner.encoder._layout(*args)["masks"]
    assert torch.equal(tokens.to_dense()[0, 0], _blocks(dense_tokens))
    assert torch.equal(eots.to_dense()[0, 0], _blocks(dense_eots))


def _blocks(mask: torch.Tensor) -> torch.Tensor:
    """Which 128 x 128 blocks of a dense boolean mask hold any True (as a BlockMask's to_dense())."""
    rows, cols = -(-mask.shape[0] // 128) * 128, -(-mask.shape[1] // 128) * 128
    padded = torch.zeros(rows, cols, dtype=torch.bool)
    padded[: mask.shape[0], : mask.shape[1]] = mask
    return padded.view(rows // 128, 128, cols // 128, 128).any(dim=3).any(dim=1).to(torch.int32)


def test_too_many_context_vectors_name_the_flag_and_the_limit(clip):
    import re

    with pytest.raises(UserError, match=r"--n-ctx 100: the prompt of class .* use at most --n-ctx \d+") as e:
        PromptLearner(clip, NAMES, n_ctx=100)
    limit = int(re.search(r"at most --n-ctx (\d+)", str(e.value)).group(1))
    PromptLearner(clip, NAMES, n_ctx=limit)  # the limit itself fits: EOT at the last position
    with pytest.raises(UserError, match=f"--n-ctx {limit + 1}:"):
        PromptLearner(clip, NAMES, n_ctx=limit + 1)


def test_a_prompt_learner_of_no_class_names_is_one_line(clip):
    """No class names, no prompts: refused at once, not an empty batch for the text encoder."""
    with pytest.raises(UserError, match=r"^classnames: no class names given$"):
        PromptLearner(clip, [])


@pytest.mark.parametrize("entry", ["PromptLearner", "zero_shot_text_features", "PromptScorer.zero_shot"])
def test_one_class_name_given_as_a_string_is_not_read_letter_by_letter(clip, entry, tiny_clip_config,
                                                                        tiny_clip_checkpoint):
    """classnames="cat" (a str is a Sequence[str] too) gave three classes, 'c', 'a' and 't', each with its
    text features, and no word: a prompt learned or a scorer built for the wrong classes. Either refused,
    naming classnames, or read as the one class "cat"."""
    from clip_smot.clip.scorer import PromptScorer

    build = {"PromptLearner": lambda: PromptLearner(clip, "cat", n_ctx=4)().shape[0],
             "zero_shot_text_features": lambda: zero_shot_text_features(clip, "cat").shape[0],
             "PromptScorer.zero_shot": lambda: len(PromptScorer.zero_shot("cat", tiny_clip_config, tiny_clip_checkpoint,
                                                                         device="cpu").classnames)}[entry]
    with pytest.raises(TypeError, match=r"^classnames must be a list of class names, not one string \('cat'\): "
                                        r"give \['cat'\] for one class$"):
        build()


def test_class_names_are_a_list_of_strings_for_the_scorer_itself_and_before_a_model_loads(clip):
    """PromptScorer refuses one str (two letters for two rows of text features were two classes), one
    bytes (not as names of no string: 97 and 98), and names that are no strings, naming the first one's
    type; zero_shot refuses one str before it loads its model (an unknown one here)."""
    from clip_smot.clip.scorer import PromptScorer

    text = F.normalize(torch.ones(2, 32), dim=-1)
    with pytest.raises(TypeError, match=r"^classnames must be a list of class names, not one string \('ab'\)"):
        PromptScorer(clip, text, "ab")
    with pytest.raises(TypeError, match=r"^classnames must be a list of class names, not one string \(b'ab'\): "
                                        r"give \[b'ab'\] for one class$"):
        PromptScorer(clip, text, b"ab")
    with pytest.raises(TypeError, match=r"^classnames must be strings, got <class 'int'>$"):
        PromptScorer(clip, text, ["cat", 3])
    with pytest.raises(TypeError, match=r"^classnames must be a list of class names, not one string \('cat'\)"):
        PromptScorer.zero_shot("cat", "no-such-model", None, device="cpu")
