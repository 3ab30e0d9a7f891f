"""The checks of an open_clip model-config JSON (clip_smot/clip/config_checks.py): a --model file's
or a prompt's stored model_config refused in one line naming the key before open_clip builds
anything (BAD_CONFIGS), each key by the type the installed open_clip declares, the limits at
their edges (open_clip's own configs all pass), check_config_file's timm names, a pretrained
config's preprocess_cfg, and the size estimate worked out by hand. Loading (weights files, tags,
QuickGELU, the memory refusal of _check_size) is tests/clip/test_model.py's."""

import json
import math

import pytest
import torch

from clip_smot.clip.model import load_clip
from clip_smot.common.errors import UserError

BAD_CONFIGS = [  # (what replaces the tiny config, the error after "--model FILE: ")
    # each was an AttributeError ('list' object has no attribute 'get', 'str' object ...)
    ([1, 2], r"the model config must be a JSON object \(an open_clip model config\), not list$"),
    # (not open_clip's pretrained layout, which is an object holding a model_cfg)
    (["model_cfg"], r"the model config must be a JSON object \(an open_clip model config\), not list$"),
    ({"vision_cfg": "x"}, r"vision_cfg must be a JSON object, not 'x'$"),
    ({"text_cfg": [1]}, r"text_cfg must be a JSON object, not \[1\]$"),
    ({"embed_dim": None}, r"embed_dim must be a positive integer, not None$"),
    # the temperature's start, which random weights keep: inf was refused as the fault of "--pretrained (none:
    # random weights)"; null and a string stopped open_clip's build ("unsupported operand type(s) for *")
    *(({"init_logit_scale": v}, r"init_logit_scale must be a number from -87.34 to 88.72 \(exp\(init_logit_scale\), the "
                                rf"temperature, a normal float32; CLIP's is ln\(1 / 0.07\) = 2.659\), not {shown}$")
      for v, shown in ((float("inf"), "inf"), (-88.0, "-88.0"), (89.0, "89.0"), (None, "None"), ("2.6", "'2.6'"),
                       (True, "True"))),
    ({"init_logit_bias": "x"}, r"init_logit_bias must be a finite number or null, not 'x'$"),
    ({"init_logit_bias": float("nan")}, r"init_logit_bias must be a finite number or null, not nan$"),
    ({"text_cfg": {"width": "32"}}, r"text_cfg.width must be a positive integer, not '32'$"),
    ({"vision_cfg": {"patch_size": "8"}}, r"vision_cfg.patch_size must be a positive integer, not '8'$"),
    # no tokens, or a vocabulary of none: refused here (the size checks below would read a 0 as the default)
    ({"text_cfg": {"context_length": 0}}, r"text_cfg.context_length must be a positive integer, not 0$"),
    ({"text_cfg": {"vocab_size": 0}}, r"text_cfg.vocab_size must be a positive integer, not 0$"),
    ({"text_cfg": {"layers": 0}}, r"text_cfg.layers must be a positive integer, not 0$"),
    ({"vision_cfg": {"layers": [3, "4"]}}, r"vision_cfg.layers must be a positive integer \(a ResNet: a list of them\)"),
    ({"vision_cfg": {"mlp_ratio": float("inf")}}, r"vision_cfg.mlp_ratio must be a positive number, not inf$"),
    # JSON's true is a Python int too: not a size of 1, nor a ratio of 1
    ({"text_cfg": {"heads": True}}, r"text_cfg.heads must be a positive integer, not True$"),
    ({"vision_cfg": {"mlp_ratio": True}}, r"vision_cfg.mlp_ratio must be a positive number, not True$"),
    # a string is true to open_clip: "false" built QuickGELU, silently, and the prompt recorded it so
    ({"quick_gelu": "false"}, r"quick_gelu must be true or false, not 'false'$"),
    # built on the meta device block by block: 20000 took minutes and gigabytes, 10**6 an hour
    ({"vision_cfg": {"layers": 20000}}, r"vision_cfg.layers: 20000 blocks, more than 1024 "),
    ({"vision_cfg": {"layers": 1025}}, r"vision_cfg.layers: 1025 blocks, more than 1024 "),
    ({"vision_cfg": {"layers": [10**6, 1, 1, 1]}}, r"vision_cfg.layers: 1000003 blocks, more than 1024 "),
    ({"text_cfg": {"layers": 10**6}}, r"text_cfg.layers: 1000000 blocks, more than 1024 "),
    # within the block limit, but far beyond any memory: estimated from the numbers, nothing built
    ({"vision_cfg": {"layers": 1000, "width": 2**14}}, r"its weights would take at least \d+\.\d GiB in fp32, more than half"),
    ({"text_cfg": {"context_length": 10**7}}, r"its weights would take at least \d+\.\d GiB in fp32, more than half"),
    # an MLP ratio that passes its own check (finite), but whose block size is past float64 in the
    # estimate: an OverflowError ("cannot convert float infinity to integer"), a traceback
    *((change, r"its weights would take at least 4503599627370496.0 GiB in fp32, more than half")
      for change in ({"vision_cfg": {"mlp_ratio": 1e308}}, {"text_cfg": {"mlp_ratio": 1e308}})),
    # sizes whose estimate is past float64 (10^400 numbers): an OverflowError as the error shows it in GiB
    # ("integer division result too large for a float"), or, for a transformer's width, already in the estimate
    *((change, r"its weights would take at least 4503599627370496.0 GiB in fp32, more than half")
      for change in ({"text_cfg": {"context_length": 10**200}},
                     {"vision_cfg": {"layers": [1, 1, 1, 1], "width": 10**200}},
                     {"vision_cfg": {"width": 32 * 10**200}}, {"text_cfg": {"width": 2 * 10**200}})),
    # a million patch tokens: small weights, but one image took minutes (or all memory, a traceback)
    ({"vision_cfg": {"image_size": 1024, "patch_size": 1}},
     r"vision_cfg: image_size 1024 in patches of 1 is 1048576 patch tokens, more than 4096 "),
    ({"vision_cfg": {"image_size": [40, 2048], "patch_size": 4}}, r"vision_cfg: .* is 5120 patch tokens, more than 4096 "),
    ({"vision_cfg": {"image_size": [136, 1928], "patch_size": 8}}, r"vision_cfg: .* is 4097 patch tokens, more than 4096 "),
    # RuntimeError "Kernel size can't be greater than actual input size" at the first image
    ({"vision_cfg": {"image_size": 32, "patch_size": 64}}, r"vision_cfg.patch_size 64 is larger than the image \(32\)$"),
    # token ids past the embedding: IndexError at the prompt's first encoding
    ({"text_cfg": {"vocab_size": 5}}, r"text_cfg.vocab_size 5 is less than the 49408 tokens of open_clip's tokenizer$"),
    ({"text_cfg": {"vocab_size": 49407}}, r"text_cfg.vocab_size 49407 is less than the 49408 tokens of open_clip's "),
    # passed to LayerNorm and GELU as they are: TypeError tracebacks at the first image or prompt
    ({"vision_cfg": {"norm_kwargs": {"eps": "x"}}}, r"vision_cfg.norm_kwargs may set only eps, a positive number, "
                                                    r"not \{'eps': 'x'\}$"),
    ({"text_cfg": {"norm_kwargs": {"eps": 1e-6, "device": "cuda"}}}, r"text_cfg.norm_kwargs may set only eps"),
    ({"text_cfg": {"norm_kwargs": [1]}}, r"text_cfg.norm_kwargs may set only eps"),
    # lists of the allowed keys' names: no objects (AttributeError: 'list' object has no attribute 'get')
    ({"text_cfg": {"norm_kwargs": ["eps"]}}, r"text_cfg.norm_kwargs may set only eps, a positive number, not \['eps'\]$"),
    ({"vision_cfg": {"act_kwargs": ["approximate"]}},
     r"vision_cfg.act_kwargs may set only approximate, 'none' or 'tanh' \(GELU's\), not \['approximate'\]$"),
    ({"vision_cfg": {"act_kwargs": {"approximate": "x"}}}, r"vision_cfg.act_kwargs may set only approximate, "),
    ({"vision_cfg": {"act_kwargs": {"approximate": "none", "inplace": True}}},
     r"vision_cfg.act_kwargs may set only approximate, 'none' or 'tanh' \(GELU's\), not \{'approximate': 'none', "),
    ({"text_cfg": {"act_kwargs": {"approximate": "tanh"}}}, r"text_cfg.act_kwargs sets GELU's approximate, but "
                                                            "quick_gelu builds QuickGELU"),
    # open_clip's PatchDropout asserts 0 <= p < 1 (and compares p with 0 first): each was "open_clip
    # cannot build this architecture (AssertionError)" or a TypeError's words, naming no key
    ({"vision_cfg": {"patch_dropout": 1.0}}, r"vision_cfg.patch_dropout must be a number in \[0, 1\), not 1.0$"),
    ({"vision_cfg": {"patch_dropout": 10**400}}, r"vision_cfg.patch_dropout must be a number in \[0, 1\), not 1000"),
    ({"vision_cfg": {"patch_dropout": True}}, r"vision_cfg.patch_dropout must be a number in \[0, 1\), not True$"),
    ({"vision_cfg": {"patch_dropout": "0.5"}}, r"vision_cfg.patch_dropout must be a number in \[0, 1\), not '0.5'$"),
    ({"vision_cfg": {"patch_dropout": None}}, r"vision_cfg.patch_dropout must be a number in \[0, 1\), not None$"),
    ({"vision_cfg": {"patch_dropout": -0.1}}, r"vision_cfg.patch_dropout must be a number in \[0, 1\), not -0.1$"),
    # open_clip's own tokenizer would read the file that bpe_path names
    ({"text_cfg": {"tokenizer_kwargs": {"bpe_path": "/etc/passwd"}}}, r"text_cfg.tokenizer_kwargs .*: open_clip's own "
                                                                      "tokenizer takes none"),
    # outside CoCa, encoders that give no one feature per image or text: a tuple, every token, or 77
    # tokens against 78 positions (AttributeError, ValueError, RuntimeError at the first image or prompt)
    ({"vision_cfg": {"output_tokens": True}}, r"vision_cfg.output_tokens True: open_clip's CLIP would not give one "
                                              r"feature per image and per text with it \(only CoCa"),
    ({"text_cfg": {"output_tokens": True}}, r"text_cfg.output_tokens True: open_clip's CLIP would not give one"),
    ({"vision_cfg": {"pool_type": "none"}}, r"vision_cfg.pool_type 'none': open_clip's CLIP would not give one"),
    ({"text_cfg": {"pool_type": "none"}}, r"text_cfg.pool_type 'none': open_clip's CLIP would not give one"),
    ({"vision_cfg": {"attentional_pool": "parallel"}}, r"vision_cfg.attentional_pool 'parallel': open_clip's CLIP"),
    ({"text_cfg": {"embed_cls": True}}, r"text_cfg.embed_cls True: open_clip's CLIP would not give one"),
    # a 0, [] or null given is what open_clip builds with, not its default (the checks took it so):
    # ValueError "height and width must be > 0" at the first image, an IndexError for no blocks,
    # TypeErrors building (named by the build's line, once built) or making the tokenizer
    ({"vision_cfg": {"image_size": 0}}, r"vision_cfg.image_size 0 is not in \[8, \d+\]$"),
    ({"vision_cfg": {"image_size": None}}, r"vision_cfg.image_size None is not in \[8, \d+\]$"),
    ({"vision_cfg": {"layers": 0}}, r"vision_cfg.layers must be a positive integer \(a ResNet: a list of them\), not 0$"),
    ({"vision_cfg": {"layers": []}}, r"vision_cfg.layers must be a positive integer \(a ResNet: .*\), not \[\]$"),
    ({"vision_cfg": {"layers": None}}, r"vision_cfg.layers must be a positive integer \(a ResNet: .*\), not None$"),
    ({"vision_cfg": {"mlp_ratio": 0}}, r"vision_cfg.mlp_ratio must be a positive number, not 0$"),  # (MLPs of width 0)
    ({"text_cfg": {"mlp_ratio": None}}, r"text_cfg.mlp_ratio must be a positive number, not None$"),
    # a positive ratio of MLPs of width 0 all the same (open_clip's int(width * mlp_ratio): 64 x 0.001,
    # 32 x 0.01): built, with torch's "Initializing zero-element tensors is a no-op" warning on stderr
    ({"vision_cfg": {"mlp_ratio": 0.001}}, r"vision_cfg.mlp_ratio 0.001 gives MLPs of width int\(64 x 0.001\) = 0; "),
    ({"text_cfg": {"mlp_ratio": 0.01}}, r"text_cfg.mlp_ratio 0.01 gives MLPs of width int\(32 x 0.01\) = 0; "),
    ({"vision_cfg": {"act_kwargs": []}}, r"vision_cfg.act_kwargs may set only approximate, .*, not \[\]$"),
    # (a null size too, where the tower reads it: "unsupported operand type(s) for //", "empty() takes 1
    # positional argument", ... in "open_clip cannot build this architecture", naming no key)
    ({"vision_cfg": {"width": None}}, r"vision_cfg.width must be a positive integer, not None$"),
    ({"vision_cfg": {"head_width": None}}, r"vision_cfg.head_width must be a positive integer, not None$"),
    ({"vision_cfg": {"patch_size": None}}, r"vision_cfg.patch_size must be a positive integer, not None$"),
    ({"text_cfg": {"context_length": None}}, r"text_cfg.context_length must be a positive integer, not None$"),
    ({"text_cfg": {"vocab_size": None}}, r"text_cfg.vocab_size must be a positive integer, not None$"),
    ({"text_cfg": {"width": None}}, r"text_cfg.width must be a positive integer, not None$"),
    ({"text_cfg": {"heads": None}}, r"text_cfg.heads must be a positive integer, not None$"),
    ({"text_cfg": {"layers": None}}, r"text_cfg.layers must be a positive integer, not None$"),
    ({"text_cfg": {"tokenizer_kwargs": None}}, r"text_cfg.tokenizer_kwargs must be a JSON object, not None$"),
    ({"text_cfg": {"tokenizer_kwargs": []}}, r"text_cfg.tokenizer_kwargs must be a JSON object, not \[\]$"),
    # a ResNet's last feature map empty: RuntimeError "Output size is too small" at the first image
    ({"vision_cfg": {"image_size": 16, "layers": [1, 1, 1, 1]}},
     r"vision_cfg.image_size 16: a ResNet tower needs at least 32 pixels a side"),
    # by the type open_clip's dataclass declares: a string is true to open_clip (another architecture,
    # silently, for these), a string number a TypeError's words naming no key
    ({"vision_cfg": {"no_ln_pre": "x"}}, r"vision_cfg.no_ln_pre must be true or false, not 'x'$"),
    ({"vision_cfg": {"final_ln_after_pool": "x"}}, r"vision_cfg.final_ln_after_pool must be true or false, not 'x'$"),
    ({"text_cfg": {"proj_bias": 1}}, r"text_cfg.proj_bias must be true or false, not 1$"),
    ({"vision_cfg": {"ls_init_value": "x"}}, r"vision_cfg.ls_init_value must be a finite number or null, not 'x'$"),
    ({"text_cfg": {"ls_init_value": "1e-5"}}, r"text_cfg.ls_init_value must be a finite number or null, not '1e-5'$"),
    ({"vision_cfg": {"pos_embed_type": 3}}, r"vision_cfg.pos_embed_type must be a string, not 3$"),
    ({"vision_cfg": {"attn_pooler_heads": 1.5}}, r"vision_cfg.attn_pooler_heads must be an integer, not 1.5$"),
    ({"text_cfg": {"pad_id": True}}, r"text_cfg.pad_id must be an integer, not True$"),
    ({"vision_cfg": {"timm_drop": float("nan")}}, r"vision_cfg.timm_drop must be a finite number, not nan$"),
    ({"vision_cfg": {"attentional_pool": 1}}, r"vision_cfg.attentional_pool must be true, false or the name of "
                                              r"CoCa's pooler \('parallel', 'cascade'\), not 1$"),
    # a LayerScale that starts each block at 0, negated or at inf (NaN features): built silently; past
    # float64 "open_clip cannot build this architecture (int too big to convert)"
    ({"vision_cfg": {"ls_init_value": 0}}, r"vision_cfg.ls_init_value must be a positive number or null "
                                           r"\(LayerScale's initial value, a float32\), not 0$"),
    ({"text_cfg": {"ls_init_value": -1e-5}}, r"text_cfg.ls_init_value must be a positive number .*, not -1e-05$"),
    ({"text_cfg": {"ls_init_value": 1e39}}, r"text_cfg.ls_init_value must be a positive number .*, not 1e\+39$"),
    ({"vision_cfg": {"ls_init_value": 10**400}}, r"vision_cfg.ls_init_value must be a positive number or null "),
    # a position embedding open_clip's ViT does not build: "open_clip cannot build this architecture
    # (ValueError)", or its sine-cosine one's asserts (a square grid, a width of sines and cosines)
    ({"vision_cfg": {"pos_embed_type": "x"}}, r"vision_cfg.pos_embed_type must be 'learnable' or 'sin_cos_2d', "
                                              r"not 'x'$"),
    ({"vision_cfg": {"pos_embed_type": None}}, r"vision_cfg.pos_embed_type must be 'learnable' or 'sin_cos_2d', "),
    ({"vision_cfg": {"pos_embed_type": "sin_cos_2d", "image_size": [32, 64]}},
     r"vision_cfg.pos_embed_type 'sin_cos_2d' needs a square grid of patches, not 4 x 8 \(image_size \[32, 64\] in "),
    ({"vision_cfg": {"pos_embed_type": "sin_cos_2d", "width": 66, "head_width": 2}},
     r"vision_cfg.pos_embed_type 'sin_cos_2d' needs a width divisible by 4 \(sines and cosines .*\), not 66$"),
    # other kinds of pooling or projection than open_clip builds: "open_clip cannot build this
    # architecture (AssertionError)", or (proj_type) a linear projection, silently
    ({"vision_cfg": {"pool_type": "x"}}, r"vision_cfg.pool_type must be 'tok', 'avg' or 'none', not 'x'$"),
    ({"text_cfg": {"pool_type": "mean"}}, r"text_cfg.pool_type must be 'first', 'last', 'argmax'.* or 'none', not 'mean'$"),
    ({"text_cfg": {"proj_type": "x"}}, r"text_cfg.proj_type must be 'linear' or 'none', not 'x'$"),
    ({"text_cfg": {"proj_type": None}}, r"text_cfg.proj_type must be 'linear' or 'none', not None$"),
    # an attentional pooler of no queries (an IndexError traceback at the first image), or heads that do
    # not divide embed_dim ("open_clip cannot build this architecture (embed_dim must be divisible ...)")
    ({"vision_cfg": {"attentional_pool": True, "attn_pooler_queries": 0}},
     r"vision_cfg.attn_pooler_queries must be a positive integer beside an attentional_pool, not 0$"),
    ({"vision_cfg": {"attentional_pool": True, "attn_pooler_heads": None}},
     r"vision_cfg.attn_pooler_heads must be a positive integer beside an attentional_pool, not None$"),
    ({"vision_cfg": {"attentional_pool": True, "attn_pooler_heads": 3}},
     r"embed_dim 32 is not a multiple of vision_cfg.attn_pooler_heads 3 \(the attentional pooler's heads split it\)$"),
    # heads that do not divide the width: one head of 64 for head_width 48, silently; a text tower
    # stopped in "open_clip cannot build this architecture (embed_dim must be divisible by num_heads)"
    ({"vision_cfg": {"head_width": 48}}, r"vision_cfg.width 64 is not a multiple of vision_cfg.head_width 48 "
                                         r"\(open_clip builds width // head_width heads, each width / heads wide\)$"),
    ({"vision_cfg": {"head_width": 128}}, r"vision_cfg.width 64 is not a multiple of vision_cfg.head_width 128 "),
    ({"text_cfg": {"heads": 3}}, r"text_cfg.width 32 is not a multiple of text_cfg.heads 3 \(each head takes an "
                                 r"equal part of it\)$"),
    ({"vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "head_width": 48}},
     r"vision_cfg.head_width 48 does not divide the 2048 features \(32 x width 64\) of a ResNet tower's attention "),
]


@pytest.mark.parametrize("change,error", BAD_CONFIGS)
def test_a_malformed_or_huge_config_is_one_line_before_anything_is_built(tmp_path, monkeypatch, change, error):
    from conftest import TINY_CLIP_CONFIG

    import clip_smot.clip.model as cm

    if isinstance(change, dict):
        cfg = {**TINY_CLIP_CONFIG, **{k: {**TINY_CLIP_CONFIG[k], **v} if isinstance(v, dict) else v
                                      for k, v in change.items()}}
    else:
        cfg = change
    path = tmp_path / "bad-clip.json"
    path.write_text(json.dumps(cfg))
    monkeypatch.setattr(cm, "physical_memory", lambda: 64 * 2**30)  # (the same answer on any machine)
    monkeypatch.setattr("open_clip.create_model", lambda *a, **k: pytest.fail("built before it was refused"))
    with pytest.raises(UserError, match=rf"^--model {path}: {error}"):
        load_clip(str(path), None)


def test_each_key_is_checked_by_the_type_the_installed_open_clip_declares():
    """The type of each key comes from open_clip's CLIPVisionCfg / CLIPTextCfg as installed, not a
    list kept here: every key declared bool, int, float or str (or Optional of one) refuses a value
    of another type, naming it (those checked on their own before say more: a size must be a
    positive integer, a string output_tokens is CoCa's; the keys a config file may not name
    anything with are check_config_file's). What the types allow passes: an integer where a
    number is declared, a null (open_clip's ResNet and timm configs give one for keys declared
    without Optional), a string or false for attentional_pool."""
    import copy
    import dataclasses
    import typing

    from conftest import TINY_CLIP_CONFIG
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    import clip_smot.clip.config_checks as mc

    wrong = {bool: "x", int: "1", float: "1.0", str: 1}
    naming = ("timm_model_name", "timm_model_pretrained", "hf_model_name", "hf_tokenizer_name")  # (check_config_file's)
    checked = 0
    for tower, cls in (("vision_cfg", CLIPVisionCfg), ("text_cfg", CLIPTextCfg)):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            kinds = [a for a in (typing.get_args(hints[f.name]) or (hints[f.name],)) if a is not type(None)]
            if len(kinds) != 1 or kinds[0] not in wrong or f.name in naming:
                continue
            cfg = copy.deepcopy(TINY_CLIP_CONFIG)
            cfg[tower][f.name] = wrong[kinds[0]]
            with pytest.raises(UserError, match=rf"^--model m.json: {tower}\.{f.name} "):  # (naming the key)
                mc.check_model_config(cfg, "--model m.json")
            checked += 1
    assert checked >= 30  # (open_clip 3.3 declares 53 such keys, 2.32 37)
    for tower, values in (("vision_cfg", {"no_ln_pre": None, "timm_proj": None, "attentional_pool": False,
                                          "ls_init_value": 1, "timm_drop": 0, "pos_embed_type": "learnable"}),
                          ("text_cfg", {"no_causal_mask": False, "ls_init_value": 0.1, "pad_id": 0,
                                        "proj_type": "linear"})):
        cfg = copy.deepcopy(TINY_CLIP_CONFIG)
        cfg[tower].update(values)
        mc.check_model_config(cfg, "--model m.json")


def test_the_kinds_of_block_and_pooling_of_open_clip_3_are_checked_where_it_declares_them(tmp_path):
    """open_clip 3 added ``block_type`` (anything but "custom" built the default blocks, silently)
    and pooling at ``eos_id``: with open_clip's own tokenizer, whose end token is 49407, any other id
    matched no token and pooled every text at its first, one feature for all. Each is refused naming
    the key; "custom" blocks and eos pooling at 49407 (a text's own feature) pass. Under open_clip
    2.32 the keys are not its: refused building, as before."""
    import copy
    import dataclasses

    from conftest import TINY_CLIP_CONFIG
    from open_clip.model import CLIPTextCfg

    import clip_smot.clip.config_checks as mc

    def changed(tower, **values):
        cfg = copy.deepcopy(TINY_CLIP_CONFIG)
        cfg[tower].update(values)
        return cfg

    if "eos_id" not in {f.name for f in dataclasses.fields(CLIPTextCfg)}:  # open_clip 2.x: neither key is its
        with pytest.raises(UserError, match=r"^--model m.json: text_cfg.pool_type must be 'first', 'last', 'argmax' "
                                            r"or 'none', not 'eos'$"):
            mc.check_model_config(changed("text_cfg", pool_type="eos"), "--model m.json")
        path = tmp_path / "clip-smot-tiny-block.json"
        path.write_text(json.dumps(changed("vision_cfg", block_type="custom")))
        with pytest.raises(UserError, match="block_type"):  # (open_clip's unexpected keyword, named)
            load_clip(str(path), None)
        return
    assert open_clip_tokenizer_end() == 49407

    for cfg, error in ((changed("vision_cfg", block_type="x"), r"vision_cfg.block_type must be null, 'default' or "
                                                                r"'custom', not 'x'$"),
                       (changed("text_cfg", block_type=""), r"text_cfg.block_type must be null, 'default' or 'custom'"),
                       (changed("text_cfg", pool_type="eos"), r"text_cfg.pool_type 'eos' pools at text_cfg.eos_id 2, "
                                                              r"a token open_clip's tokenizer does not end a text with "
                                                              r"\(its end token is 49407\)$")):
        with pytest.raises(UserError, match=rf"^--model m.json: {error}"):
            mc.check_model_config(cfg, "--model m.json")
    mc.check_model_config(changed("vision_cfg", block_type="custom"), "--model m.json")
    path = tmp_path / "clip-smot-tiny-eos.json"
    path.write_text(json.dumps(changed("text_cfg", pool_type="eos", eos_id=49407)))
    clip = load_clip(str(path), None)
    features = clip.model.encode_text(clip.tokenizer(["a photo of a dog", "red"]))
    assert not torch.allclose(features[0], features[1])


def open_clip_tokenizer_end() -> int:
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer().eot_token_id


def test_a_patch_as_large_as_the_image_is_accepted(tmp_path):
    """The checks' edge: a ViT of one patch (patch_size = image_size) is refused by none of them;
    open_clip builds it and encodes images with it."""
    from conftest import TINY_CLIP_CONFIG

    cfg = {**TINY_CLIP_CONFIG, "vision_cfg": {**TINY_CLIP_CONFIG["vision_cfg"], "patch_size": 32}}
    path = tmp_path / "clip-smot-tiny-one-patch.json"
    path.write_text(json.dumps(cfg))
    clip = load_clip(str(path), None)
    assert clip.model.visual.positional_embedding.shape == (1 + 1, 64)
    assert clip.model.encode_image(torch.zeros(2, 3, 32, 32)).shape == (2, 32)


def test_a_patch_dropout_in_its_range_is_accepted(tmp_path):
    """The check's edge: 0 and 0.5 are open_clip's PatchDropout's to build; it drops patches only
    in training mode, so a frozen tower encodes as without it."""
    from conftest import TINY_CLIP_CONFIG

    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    features = []
    for p in (0, 0.5):
        cfg = {**TINY_CLIP_CONFIG, "vision_cfg": {**TINY_CLIP_CONFIG["vision_cfg"], "patch_dropout": p}}
        path = tmp_path / f"clip-smot-tiny-dropout-{p}.json"
        path.write_text(json.dumps(cfg))
        torch.manual_seed(0)  # (the same random weights)
        features.append(load_clip(str(path), None).model.encode_image(images))
    assert torch.equal(features[0], features[1])


def test_every_config_open_clip_ships_passes_the_checks():
    """The checks refuse what open_clip's own architectures never hold: each of its configs
    (ViTs, ResNets, timm and Hugging Face towers) passes them."""
    import open_clip

    import clip_smot.clip.model as cm
    import clip_smot.clip.config_checks as mc

    # (open_clip's own files: not the configs other tests registered in this process)
    names = [name for name in open_clip.list_models() if cm._builtin_config_file(name).is_file()]
    assert len(names) > 100 and {"ViT-B-16", "RN50", "ViT-H-14-378", "ViT-bigG-14"} <= set(names)
    for name in names:
        mc.check_model_config(open_clip.get_model_config(name), name)
    patches = [(cfg["vision_cfg"]["image_size"] // cfg["vision_cfg"]["patch_size"]) ** 2
               for cfg in map(open_clip.get_model_config, names) if cfg["vision_cfg"].get("patch_size")]
    assert max(patches) == 729 < mc.MAX_PATCHES  # ViT-H-14-378 (the limit's comment says so)
    assert open_clip.tokenizer.SimpleTokenizer().vocab_size == mc.SIMPLE_TOKENIZER_VOCAB


def test_the_config_checks_accept_their_edges_and_refuse_zero_sizes():
    """Each limit is inclusive, as its message says: an image of 8 pixels (one patch of 8) or of
    2048 (in patches of 32: 64 x 64 = 4096 tokens, MAX_PATCHES), a ResNet fed 32 pixels (its
    stride), 1024 blocks (MAX_LAYERS) all pass. A size of 0, an eps of 0 and a config without a
    tower are refused in one line (0 heads was a ZeroDivisionError in open_clip, a config without
    text_cfg a KeyError)."""
    import copy

    from conftest import TINY_CLIP_CONFIG

    import clip_smot.clip.config_checks as mc

    def changed(**towers):
        cfg = copy.deepcopy(TINY_CLIP_CONFIG)
        for tower, values in towers.items():
            cfg[tower].update(values)
        return cfg

    for cfg in (changed(vision_cfg={"image_size": 8, "patch_size": 8}),
                changed(vision_cfg={"image_size": 2048, "patch_size": 32}),
                changed(vision_cfg={"image_size": 32, "layers": [1, 1, 1, 1]}),
                changed(vision_cfg={"layers": 1024}), changed(text_cfg={"layers": 1024}),
                changed(vision_cfg={"attentional_pool": ""}),  # (no pool: open_clip reads it as false)
                changed(vision_cfg={"head_width": 64}), changed(text_cfg={"heads": 32}),  # (one head; 32 of 1)
                changed(vision_cfg={"ls_init_value": 1e-5}), changed(text_cfg={"ls_init_value": 3.4e38}),
                # (a grid square once the pixels past the last patch are dropped, as open_clip does)
                changed(vision_cfg={"pos_embed_type": "sin_cos_2d", "image_size": [32, 39]}),
                changed(vision_cfg={"pos_embed_type": "sin_cos_2d", "image_size": [39, 32]}),
                # (learned positions: any grid, any width; the sine-cosine conditions are theirs only)
                changed(vision_cfg={"image_size": [32, 64], "width": 66, "head_width": 2}),
                changed(vision_cfg={"pool_type": "avg"}), changed(text_cfg={"pool_type": "last", "proj_type": "none"}),
                # (no pooler, no pooler sizes read)
                changed(vision_cfg={"attn_pooler_queries": 0, "attn_pooler_heads": 3}),
                changed(vision_cfg={"attentional_pool": True, "attn_pooler_queries": 1, "attn_pooler_heads": 32}),
                # (a null size a tower does not read: a ResNet's patch_size, as open_clip's ResNet configs give it)
                changed(vision_cfg={"image_size": 32, "layers": [1, 1, 1, 1], "patch_size": None}),
                # (a ResNet's head_width divides its pool's 32 x width features: RN50x4's 64 of 80 x 32)
                changed(vision_cfg={"image_size": 32, "layers": [1, 1, 1, 1], "width": 80, "head_width": 64}),
                {**changed(text_cfg={"embed_cls": True}), "custom_text": True},  # (CustomTextCLIP adds it)
                # CLIP's temperature start ln(1 / 0.07) and SigLIP's bias; exp of either end a normal float32
                {**changed(), "init_logit_scale": math.log(1 / 0.07), "init_logit_bias": -10.0},
                {**changed(), "init_logit_scale": math.log(torch.finfo(torch.float32).tiny)},
                {**changed(), "init_logit_scale": math.log(torch.finfo(torch.float32).max)}):
        mc.check_model_config(cfg, "--model m.json")
    for cfg, error in ((changed(vision_cfg={"head_width": 0}), r"vision_cfg.head_width must be a positive integer, not 0$"),
                       (changed(text_cfg={"heads": 0}), r"text_cfg.heads must be a positive integer, not 0$"),
                       # (one past each end of [8, MAX_IMAGE_SIZE], a side of a pair too)
                       (changed(vision_cfg={"image_size": 7, "patch_size": 7}), r"vision_cfg.image_size 7 is not in \[8, 2048\]$"),
                       (changed(vision_cfg={"image_size": [2048, 2049], "patch_size": 32}),
                        r"vision_cfg.image_size \[2048, 2049\] is not in \[8, 2048\]$"),
                       ({**TINY_CLIP_CONFIG, "embed_dim": 0}, r"embed_dim must be a positive integer, not 0$"),
                       (changed(vision_cfg={"norm_kwargs": {"eps": 0}}),
                        r"vision_cfg.norm_kwargs may set only eps, a positive number, not \{'eps': 0\}$"),
                       ({k: v for k, v in TINY_CLIP_CONFIG.items() if k != "text_cfg"},
                        r"the model config: an open_clip model config needs embed_dim, vision_cfg and text_cfg$")):
        with pytest.raises(UserError, match=rf"^--model m.json: {error}"):
            mc.check_model_config(cfg, "--model m.json")
    # a prompt's stored config is named by its field (the prefix), not as "the model config"
    with pytest.raises(UserError, match=r"^prompt p: model_config must be a JSON object \(an open_clip model config\), "
                                        r"not list$"):
        mc.check_model_config([1], "prompt p", "model_config.")


def test_a_config_file_may_name_a_timm_architecture_but_nothing_to_fetch():
    """timm reads a name with a colon as a hub or folder source (``hf-hub:org/x``, or a bare
    ``hf-hub:x``), and one with a slash or a backslash as a path; a name that is no string at all
    was a TypeError. Each is refused naming the key at fault: ``timm_model_pretrained`` when it is
    the weights that would be fetched. A plain architecture name passes."""
    from clip_smot.clip.config_checks import check_config_file

    for timm, error in (({"timm_model_name": "hf-hub:evil"}, r"vision_cfg.timm_model_name 'hf-hub:evil': "),
                        ({"timm_model_name": "..\\evil"}, r"vision_cfg.timm_model_name '..\\\\evil': "),
                        ({"timm_model_name": "../evil"}, r"vision_cfg.timm_model_name '../evil': "),
                        ({"timm_model_name": 5}, r"vision_cfg.timm_model_name 5: "),
                        ({"timm_model_name": "vit_base_patch16_224", "timm_model_pretrained": True},
                         r"vision_cfg.timm_model_pretrained True: ")):
        cfg = {"embed_dim": 32, "vision_cfg": timm, "text_cfg": {}}
        with pytest.raises(UserError, match=rf"^--model m.json: {error}a config file may name a timm architecture"):
            check_config_file(cfg, "--model m.json")
    check_config_file({"embed_dim": 32, "vision_cfg": {"timm_model_name": "vit_base_patch16_224"}, "text_cfg": {}},
                      "--model m.json")


def test_a_wide_mlp_is_counted_in_the_estimate_before_anything_is_built(tmp_path, monkeypatch):
    """The estimate counts each ViT block's (4 + 2 mlp_ratio) width^2 weights: 12 blocks of width
    1024 with mlp_ratio 1000 hold 12 x 2004 x 1024^2 = 2.5e10 numbers, 94 GiB in fp32, refused
    on a machine of 64 GiB before open_clip builds anything (at mlp_ratio 4 they would be 0.6 GiB)."""
    from conftest import TINY_CLIP_CONFIG

    import clip_smot.clip.model as cm

    cfg = {**TINY_CLIP_CONFIG, "vision_cfg": {**TINY_CLIP_CONFIG["vision_cfg"], "layers": 12, "width": 1024,
                                              "head_width": 64, "mlp_ratio": 1000}}
    path = tmp_path / "wide-mlp.json"
    path.write_text(json.dumps(cfg))
    monkeypatch.setattr(cm, "physical_memory", lambda: 64 * 2**30)
    monkeypatch.setattr("open_clip.create_model", lambda *a, **k: pytest.fail("built before it was refused"))
    with pytest.raises(UserError, match=rf"^--model {path}: its weights would take at least 9[34]\.\d GiB in fp32"):
        load_clip(str(path), None)


@pytest.mark.parametrize("preprocess, refused", [
    # laion/CLIP-ViT-B-32-laion2B-s34B-b79K's: OpenAI's mean and std, as a local checkpoint gets them
    ({"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711],
      "interpolation": "bicubic", "resize_mode": "shortest"}, None),
    # OpenAI's mean within 1e-6 (written to fewer digits) is OpenAI's; 2e-6 off is another
    ({"mean": [0.4814538, 0.4578283, 0.4082100]}, None),
    ({"mean": [0.48145466, 0.4578295, 0.40821073]}, r"preprocess_cfg.mean \[0.48145466, 0.4578295, 0.40821073\] is not"),
    # the size is the model's own (32 here, not the default 224); a null, or a key open_clip drops, is no request
    ({"size": 32, "interpolation": None, "not_a_setting": [1, 2]}, None),
    # laion/CLIP-ViT-L-14-laion2B-s32B-b82K's mean, and apple/DFN5B-CLIP-ViT-H-14's resize
    ({"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}, r"preprocess_cfg.mean \[0.5, 0.5, 0.5\] is not"),
    ({"resize_mode": "squash"}, r"preprocess_cfg.resize_mode 'squash' is not"),
    # two values for three channels, or one number: not OpenAI's three (the shorter list compared in full)
    ({"mean": [0.48145466, 0.4578275]}, r"preprocess_cfg.mean \[0.48145466, 0.4578275\] is not"),
    ({"std": 0.26862954}, r"preprocess_cfg.std 0.26862954 is not"),
    ({"mean": ["0.48145466", 0.4578275, 0.40821073]}, r"preprocess_cfg.mean \['0.48145466', 0.4578275, 0.40821073\] is not"),
])
def test_a_pretrained_configs_preprocessing_is_not_dropped_silently(tmp_path, preprocess, refused):
    """The preprocess_cfg beside a pretrained config's model_cfg was dropped: a local checkpoint
    gets open_clip's default preprocessing (OpenAI's mean and std, bicubic, shortest side), so the
    laion2b_s32b_b82k ViT-L-14, trained with a mean of 0.5, saw every image normalised otherwise,
    silently. A preprocess_cfg that asks for other values is refused in one line."""
    from conftest import TINY_CLIP_CONFIG

    path = tmp_path / "clip-smot-tiny-hub.json"
    path.write_text(json.dumps({"model_cfg": TINY_CLIP_CONFIG, "preprocess_cfg": preprocess}))
    if refused is None:
        clip = load_clip(str(path), None)
        assert clip.mean == (0.48145466, 0.4578275, 0.40821073) and clip.std == (0.26862954, 0.26130258, 0.27577711)
        return
    with pytest.raises(UserError, match=rf"^--model {path}: {refused} the preprocessing a local checkpoint gets "):
        load_clip(str(path), None)


@pytest.mark.parametrize("preprocess, shown", [([0.5, 0.5, 0.5], r"\[0.5, 0.5, 0.5\]"), ("squash", "'squash'")])
def test_a_preprocess_cfg_that_is_no_object_is_one_line(preprocess, shown):
    """A pretrained config's preprocess_cfg that is a list or a string (a hand-edited file), read
    with .items() would stop in an AttributeError traceback: it is refused naming the key."""
    from clip_smot.clip.config_checks import check_preprocess_cfg

    with pytest.raises(UserError, match=rf"^--model m.json: preprocess_cfg must be a JSON object, not {shown}$"):
        check_preprocess_cfg(preprocess, "--model m.json")


def test_a_null_or_empty_preprocess_cfg_asks_for_nothing():
    """A pretrained config without a preprocess_cfg (None), or with null or {}, asks for nothing: it passes."""
    from clip_smot.clip.config_checks import check_preprocess_cfg

    for preprocess in (None, {}):
        check_preprocess_cfg(preprocess, "--model m.json")


# A tower pair for the size estimate, its counts worked out by hand (no default taken but the text's
# mlp_ratio): a 40 x 70 image in 16-pixel patches is 2 x 4 = 8 patch tokens (the pixels past the last
# patch dropped), each block (4 + 2 x 2.5) x 8^2 = 576 weights.
_VISION_8 = {"image_size": [40, 70], "patch_size": 16, "width": 8, "layers": 3, "mlp_ratio": 2.5}


_VISION_8_COUNT = 3 * 16**2 * 8 + (8 + 1) * 8 + 8 * 4 + 3 * 576  # patch conv, positions, projection, blocks: 7976


_TEXT_8 = {"width": 8, "context_length": 10, "vocab_size": 50000, "layers": 1, "mlp_ratio": 0.5}


# tokens, positions, projection; the causal mask; one block of (4 + 2 x 0.5) x 8^2 = 320
_TEXT_8_COUNT = (50000 + 10 + 4) * 8 + 10**2 + 320  # 400532


@pytest.mark.parametrize("cfg, count", [
    # the tiny ViT: patch conv 3 x 8^2 x 64, 16 + 1 positions of 64, projection 64 x 32, 2 blocks of
    # 12 x 64^2; text: (49408 tokens + 77 positions + 32) x 32, the mask 77^2, 2 blocks of 12 x 32^2
    ("tiny", 3 * 8**2 * 64 + 17 * 64 + 64 * 32 + 2 * 12 * 64**2 + (49408 + 77 + 32) * 32 + 77**2 + 2 * 12 * 32**2),
    # every size left to its default: ViT-B-16's (width 768, 12 layers, 224 in patches of 16: 196
    # tokens; text of width 512, 12 layers, 77 tokens of a vocabulary of 49408), embedded in 512
    ({"embed_dim": 512, "vision_cfg": {}, "text_cfg": {}},
     3 * 16**2 * 768 + 197 * 768 + 768 * 512 + 12 * 12 * 768**2 + (49408 + 77 + 512) * 512 + 77**2 + 12 * 12 * 512**2),
    ({"embed_dim": 4, "vision_cfg": _VISION_8, "text_cfg": _TEXT_8}, _VISION_8_COUNT + _TEXT_8_COUNT),
    # the default image, 224, in patches of 15: 14 x 14 tokens (225 would give 15 x 15); one block of 12 x 8^2
    ({"embed_dim": 4, "vision_cfg": {"width": 8, "layers": 1, "patch_size": 15}, "text_cfg": _TEXT_8},
     3 * 15**2 * 8 + (14 * 14 + 1) * 8 + 8 * 4 + 12 * 8**2 + _TEXT_8_COUNT),
    # a ResNet of stages of 1 and 2 bottlenecks, 2 and 4 planes: 14 x (1 x 2^2 + 2 x 4^2); its attention
    # pool of width 32 x 2 = 64: q, k, v, c (4 x 64^2) and the projection 64 x 4
    ({"embed_dim": 4, "vision_cfg": {"layers": [1, 2], "width": 2, "image_size": 64}, "text_cfg": _TEXT_8},
     14 * (1 * 2**2 + 2 * 4**2) + 4 * 64**2 + 64 * 4 + _TEXT_8_COUNT),
    # a timm image tower and a Hugging Face text tower count nothing (built and counted exactly after)
    ({"embed_dim": 4, "vision_cfg": {"timm_model_name": "vit_base_patch16_224"}, "text_cfg": _TEXT_8}, _TEXT_8_COUNT),
    ({"embed_dim": 4, "vision_cfg": _VISION_8, "text_cfg": {**_TEXT_8, "hf_model_name": "bert-base-uncased"}},
     _VISION_8_COUNT),
])
def test_the_size_estimate_counts_each_part_as_its_docstring_says(cfg, count):
    """estimated_size, worked out by hand from each config's numbers (the docstring's parts:
    (4 + 2 mlp_ratio) width^2 a transformer block, the embeddings, the projections, 14 planes^2 a
    bottleneck and the attention pool, the causal mask)."""
    from conftest import TINY_CLIP_CONFIG

    import clip_smot.clip.config_checks as mc

    assert mc.estimated_size(TINY_CLIP_CONFIG if cfg == "tiny" else cfg) == count


@pytest.mark.parametrize("name", ["ViT-B-16", "RN50"])
def test_the_size_estimate_is_within_10_percent_under_open_clips_count(name):
    """The docstring's promise, against open_clip's own count: the estimate of ViT-B-16 and RN50
    stays under the parameters (and causal mask) of the model open_clip builds, by less than 10%."""
    import warnings

    import open_clip

    import clip_smot.clip.config_checks as mc

    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        model = open_clip.create_model(name, pretrained=None, device="meta")
    exact = sum(p.numel() for p in model.parameters()) + model.attn_mask.numel()
    estimate = mc.estimated_size(open_clip.get_model_config(name))
    assert 0.9 * exact < estimate <= exact


def test_the_config_checks_take_open_clips_default_image_and_patch_sizes():
    """A ViT config may leave image_size and patch_size to open_clip (224 and 16): the checks
    compare the given one with that default (the message names it), one past it refused."""
    import copy

    from conftest import TINY_CLIP_CONFIG

    import clip_smot.clip.config_checks as mc

    def vision(**values):
        cfg = copy.deepcopy(TINY_CLIP_CONFIG)
        del cfg["vision_cfg"]["image_size"], cfg["vision_cfg"]["patch_size"]
        cfg["vision_cfg"].update(values)
        return cfg

    mc.check_model_config(vision(patch_size=224), "--model m.json")
    mc.check_model_config(vision(image_size=16), "--model m.json")
    # (a square grid in open_clip's patches of 16: 2 x 2 of [32, 47]; in patches of 17, 1 x 2)
    mc.check_model_config(vision(image_size=[32, 47], pos_embed_type="sin_cos_2d"), "--model m.json")
    for cfg, error in ((vision(patch_size=225), r"vision_cfg.patch_size 225 is larger than the image \(224\)$"),
                       (vision(image_size=15), r"vision_cfg.patch_size 16 is larger than the image \(15\)$")):
        with pytest.raises(UserError, match=rf"^--model m.json: {error}"):
            mc.check_model_config(cfg, "--model m.json")


def test_a_resnet_tower_needs_its_stride_on_each_side_of_the_image():
    """A ResNet's image given as [height, width] needs 32 pixels on its shorter side as well."""
    from conftest import TINY_CLIP_CONFIG

    import clip_smot.clip.config_checks as mc

    for size in ([31, 64], [64, 31]):
        cfg = {**TINY_CLIP_CONFIG, "vision_cfg": {**TINY_CLIP_CONFIG["vision_cfg"], "image_size": size, "layers": [1, 1]}}
        with pytest.raises(UserError, match=r"^--model m.json: vision_cfg.image_size \[\d+, \d+\]: a ResNet tower needs "
                                            r"at least 32 pixels a side"):
            mc.check_model_config(cfg, "--model m.json")
    mc.check_model_config({**TINY_CLIP_CONFIG, "vision_cfg": {"image_size": [32, 64], "layers": [1, 1]}}, "--model m.json")


def test_a_value_shown_in_an_error_is_cut_past_40_characters():
    """_shown: a repr of 40 characters whole; of 41, its first 37 and "..." (40 in all)."""
    import clip_smot.clip.config_checks as mc

    assert mc._shown("x" * 38) == repr("x" * 38) and len(repr("x" * 38)) == 40
    assert mc._shown("x" * 39) == "'" + "x" * 36 + "..."


def test_a_vit_patch_must_fit_the_shorter_side_of_the_image():
    """A ViT's image given as [height, width]: a patch larger than either side is refused."""
    from conftest import TINY_CLIP_CONFIG

    import clip_smot.clip.config_checks as mc

    for size in ([8, 64], [64, 8]):
        cfg = {**TINY_CLIP_CONFIG, "vision_cfg": {**TINY_CLIP_CONFIG["vision_cfg"], "image_size": size, "patch_size": 16}}
        with pytest.raises(UserError, match=rf"^--model m.json: vision_cfg.patch_size 16 is larger than the image "
                                            rf"\(\[{size[0]}, {size[1]}\]\)$"):
            mc.check_model_config(cfg, "--model m.json")


def test_an_image_size_of_one_side_is_one_line(tmp_path):
    """image_size as a list of one side passes the range check; open_clip cannot build it (it
    unpacks two sides), which is one line, not an IndexError of the size estimate before."""
    from conftest import TINY_CLIP_CONFIG

    path = tmp_path / "one-side.json"
    path.write_text(json.dumps({**TINY_CLIP_CONFIG, "vision_cfg": {**TINY_CLIP_CONFIG["vision_cfg"], "image_size": [32]}}))
    with pytest.raises(UserError, match=rf"^--model {path}: open_clip cannot build this architecture \("):
        load_clip(str(path), None)


def test_a_tower_open_clip_does_not_build_itself_may_leave_its_sizes_null():
    """A timm vision tower and a Hugging Face text tower read none of open_clip's sizes: a null
    width, patch size or head count there is what open_clip's own configs may give, and passes
    (the same nulls in open_clip's own towers are refused: BAD_CONFIGS)."""
    import clip_smot.clip.config_checks as mc

    mc.check_model_config({"embed_dim": 32,
                           "vision_cfg": {"timm_model_name": "vit_base_patch16_224", "width": None, "patch_size": None},
                           "text_cfg": {"hf_model_name": "bert-base-uncased", "width": None, "heads": None}},
                          "--model m.json")
    # (nor do their widths and heads split attention: 48 does not divide 64, nor 3 heads 32, and they pass)
    mc.check_model_config({"embed_dim": 32, "vision_cfg": {"timm_model_name": "vit_base_patch16_224", "width": 64,
                                                           "head_width": 48},
                           "text_cfg": {"hf_model_name": "bert-base-uncased", "width": 32, "heads": 3}}, "--model m.json")
