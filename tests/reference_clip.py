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
