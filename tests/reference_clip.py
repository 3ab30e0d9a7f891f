"""OpenAI's reference CLIP (the ``clip-anytorch`` package's copy of openai/CLIP), for parity tests.

``import clip`` fails with setuptools >= 81 (its ``clip.py`` imports ``pkg_resources``); its
``model.py`` and ``simple_tokenizer.py`` need only torch, numpy, ftfy and regex, so they are
loaded by path. The reference side of every comparison runs no open_clip or clip_smot code
(open_clip only draws the random weights): it is code that nobody on this project wrote.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision.transforms as T

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def _load(name: str):
    spec = importlib.util.find_spec("clip")  # (finding a package does not run its __init__)
    path = Path(spec.submodule_search_locations[0]) / f"{name}.py"
    module_spec = importlib.util.spec_from_file_location(f"openai_clip_{name}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


@lru_cache(maxsize=None)
def openai_model_module():
    """OpenAI's ``clip/model.py``."""
    return _load("model")


@lru_cache(maxsize=None)
def openai_tokenizer():
    """OpenAI's ``SimpleTokenizer`` with its BPE vocabulary."""
    return _load("simple_tokenizer").SimpleTokenizer()


def build_reference(state_dict: dict[str, torch.Tensor]) -> torch.nn.Module:
    """OpenAI's ``build_model`` (architecture read off the weights, QuickGELU), in fp32.

    ``build_model`` casts the weights to fp16; the tests give it fp16-representable weights,
    so casting back to fp32 loses nothing.
    """
    model = openai_model_module().build_model({k: v.clone() for k, v in state_dict.items()})
    return model.float().eval()


def tokenize(texts: list[str], context_length: int = 77) -> torch.Tensor:
    """OpenAI's ``clip.tokenize``: [SOT] BPE tokens [EOT], zero-padded to ``context_length``."""
    tok = openai_tokenizer()
    sot, eot = tok.encoder["<|startoftext|>"], tok.encoder["<|endoftext|>"]
    out = torch.zeros(len(texts), context_length, dtype=torch.long)
    for i, text in enumerate(texts):
        ids = [sot, *tok.encode(text), eot]
        out[i, : len(ids)] = torch.tensor(ids)
    return out


@torch.no_grad()
def coop_text_features(model: torch.nn.Module, ctx: torch.Tensor, classnames: list[str]) -> torch.Tensor:
    """CoOp's text features (Zhou et al., 2022; its PromptLearner and TextEncoder, unified context,
    class token at the end) on OpenAI's model: normalised [K, e]."""
    n_ctx = ctx.shape[-2]
    tokens = tokenize([" ".join(["X"] * n_ctx) + " " + name + "." for name in classnames])  # [K, 77]
    x = model.token_embedding(tokens)  # [K, 77, w]
    x = torch.cat([x[:, :1], ctx.expand(len(classnames), -1, -1), x[:, 1 + n_ctx:]], dim=1)  # [K, 77, w]
    x = x + model.positional_embedding
    x = model.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)  # LND in OpenAI's transformer
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ model.text_projection  # pool at EOT
    return F.normalize(x, dim=-1)


def openai_preprocess(size: int) -> T.Compose:
    """OpenAI's ``clip._transform``: bicubic resize of the short side, centre crop, RGB, mean/std."""
    return T.Compose([
        T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(size),
        lambda im: im.convert("RGB"),
        T.ToTensor(),
        T.Normalize(OPENAI_MEAN, OPENAI_STD),
    ])


@torch.no_grad()
def image_features(model: torch.nn.Module, paths, size: int) -> torch.Tensor:
    """Normalised image features [N, e] of image files, preprocessed as OpenAI's ``clip.load`` does."""
    from PIL import Image

    transform = openai_preprocess(size)
    images = torch.stack([transform(Image.open(p)) for p in paths])  # [N, 3, S, S]
    return F.normalize(model.encode_image(images), dim=-1)


def mcm_and_msp(image_feats: torch.Tensor, text_feats: torch.Tensor, logit_scale: float) -> tuple:
    """MCM (max softmax of the cosines, tau = 1; Ming et al., 2022) and MSP (max softmax of the
    logits, ``logit_scale.exp() * cosine``) by hand."""
    cosine = image_feats @ text_feats.T  # [N, K]
    return cosine.softmax(-1).amax(-1), (logit_scale * cosine).softmax(-1).amax(-1)


@torch.no_grad()
def gl_mcm_features(model: torch.nn.Module, paths, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised global [N, e] and local [N, P, e] image features as the GL-MCM authors' code
    computes them on OpenAI's model (Miyai et al., 2023; their modified ``clip/model.py``, after
    MaskCLIP): the last block's ``in_proj`` gives queries, keys and values, each put through
    ``out_proj``; the values, plus the block's input, then through the block's MLP, are the
    tokens; ``ln_post`` and ``proj`` of each patch token is its local feature. Written here on
    OpenAI's modules from the recipe, step by step as that code takes it."""
    from PIL import Image

    transform = openai_preprocess(size)
    images = torch.stack([transform(Image.open(p)) for p in paths])  # [N, 3, S, S]
    visual = model.visual
    x = visual.conv1(images)  # [N, w, g, g]
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # [N, g*g, w]
    cls = visual.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1])
    x = visual.ln_pre(torch.cat([cls, x], dim=1) + visual.positional_embedding).permute(1, 0, 2)  # [L, N, w]
    *blocks, last = visual.transformer.resblocks
    for block in blocks:
        x = block(x)
    out = last(x)  # [L, N, w], OpenAI's own forward
    y = F.linear(last.ln_1(x).permute(1, 0, 2), last.attn.in_proj_weight, last.attn.in_proj_bias)  # [N, L, 3w]
    n, length, c = y.shape
    y = y.view(n, length, 3, c // 3).permute(2, 0, 1, 3).reshape(3 * n, length, c // 3)  # q, k, v stacked
    y = F.linear(y, last.attn.out_proj.weight, last.attn.out_proj.bias)
    v = y.tensor_split(3, dim=0)[2].permute(1, 0, 2) + x  # [L, N, w]
    v = v + last.mlp(last.ln_2(v))
    glob = visual.ln_post(out.permute(1, 0, 2)[:, 0]) @ visual.proj  # [N, e]
    local = visual.ln_post(v.permute(1, 0, 2)[:, 1:]) @ visual.proj  # [N, P, e]
    return F.normalize(glob, dim=-1), F.normalize(local, dim=-1)


def gl_mcm(glob: torch.Tensor, local: torch.Tensor, text_feats: torch.Tensor, T: float = 1.0,
           lambda_local: float = 1.0) -> torch.Tensor:
    """GL-MCM as the authors' ``get_ood_scores_clip`` takes it, with its sign turned (higher = more
    ID): the max softmax of the global cosines over the classes plus ``lambda_local`` times the
    max, over patches and classes, of each patch's softmax over the classes."""
    g = (glob @ text_feats.T / T).softmax(dim=1).amax(dim=1)  # [N]
    p = (local @ text_feats.T / T).softmax(dim=-1).amax(dim=(1, 2))  # [N]
    return g + lambda_local * p


def random_openai_weights(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random CLIP weights of an open_clip model config, in fp16 (as OpenAI's files hold them).

    open_clip's initialisation, with the MLP input weights scaled up (x4) so that GELU and
    QuickGELU give clearly different features (random weights keep the pre-activations small).
    """
    import open_clip

    torch.manual_seed(seed)
    model = open_clip.model.CLIP(**config)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for k in state:
        if k.endswith("mlp.c_fc.weight"):
            state[k] *= 4
    return {k: v.half() for k, v in state.items()}
