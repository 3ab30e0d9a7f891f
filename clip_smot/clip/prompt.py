"""The CoOp context: learnable prompt vectors and a fast, exact encoder of the K class prompts.

A prompt is built in embedding space from the tokens of ``"X X ... X {name}."``:
``[SOS] [ctx x n_ctx] [name tokens] [.] [EOT]`` (class position ``end``; ``middle`` puts half of
the context after the name, ``front`` puts the name first), pooled at the EOT position after
``ln_final`` and projected by ``text_projection`` (docs/method.md §2).

The encoder (:class:`~clip_smot.clip.encoders.TextEncoder`) computes exactly what open_clip's
``encode_text`` computes on the same embeddings, with exact shortcuts (docs/prompt.md explains
why each is exact):

* only the first ``max(EOT) + 1`` positions are encoded (the mask is causal, pooling is at EOT);
* with a unified context at the end, positions ``0 .. n_ctx`` (SOS and the context) are the
  same for every class, so they are encoded once and shared by the K prompts as attention keys
  and values;
* the per-token work runs for each prompt's positions up to its own EOT only (packing);
* the last layer runs attention, the MLP and ``ln_final`` for the K EOT tokens only.

Speed knobs, all exact: ``precision`` ("bf16"/"fp16" casts the frozen text weights once; the
context, the residual stream and the output stay float32), ``residual`` and ``attention``
("causal" uses the causal kernels of ``scaled_dot_product_attention``, "mask" an additive float
mask like open_clip, "square" and "flex" the layouts of docs/prompt.md).
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from clip_smot.clip.encoders import (
    ATTENTION,
    TextEncoder,
    check_text_tower,
    packed_index,
)
from clip_smot.clip.model import ClipModel
from clip_smot.clip.prompt_file import CLASS_POSITIONS, PromptFile, load_prompt, prompt_tokens, tokens
from clip_smot.common.errors import UserError

__all__ = [
    "ATTENTION",
    "CLASS_POSITIONS",
    "PromptLearner",
    "class_names",
    "ctx_init_length",
    "quote_words",
    "TextEncoder",
    "check_text_tower",
    "text_features_from_prompt",
    "ZERO_SHOT_TEMPLATE",
    "zero_shot_text_features",
]


def _eot_index(tokens: torch.Tensor) -> torch.Tensor:
    """Position of the EOT token (the largest id) in each row of [N, L] tokens."""
    return tokens.argmax(dim=-1)


def quote_words(ctx_init: str, limit: int = 80) -> str:
    """``ctx_init`` quoted for a message, cut after ``limit`` characters: a line stays a line."""
    return repr(ctx_init) if len(ctx_init) <= limit else f"{ctx_init[:limit]!r}... ({len(ctx_init)} characters)"


def _words_tokens(tokenize, ctx_init: str) -> tuple[torch.Tensor, int]:
    """The tokens [1, 77] of the words ``ctx_init`` and their count (between the start and end
    tokens). Raises a UserError for words with no tokens, and for words that fill all positions
    (the tokenizer cuts them there without a word): no class name would fit beside them."""
    tokens = tokenize([ctx_init])  # [1, 77]
    n_ctx, L_max = int(_eot_index(tokens)[0]) - 1, tokens.shape[-1]
    if n_ctx < 1:
        raise UserError(f"--ctx-init {quote_words(ctx_init)}: has no tokens")
    if n_ctx >= L_max - 2:  # start + words + end fill every position: the words may have been cut, too
        raise UserError(f"--ctx-init {quote_words(ctx_init)}: its words take {n_ctx} or more of the text encoder's "
                        f"{L_max} tokens, leaving none for a class name; use words of at most "
                        f"{L_max - prompt_tokens(0, 1)} tokens")
    return tokens, n_ctx


def ctx_init_length(tokenize: Callable[[list[str]], torch.Tensor], ctx_init: str) -> int:
    """n_ctx of a context initialised from the words ``ctx_init``: their token count.

    Raises:
        UserError: words with no tokens, or with so many that no class name fits beside them.
    """
    return _words_tokens(tokenize, ctx_init)[1]


def _ctx_from_words(tokenize, emb_weight: torch.Tensor, ctx_init: str) -> torch.Tensor:
    """The token embeddings [n_ctx, d] (float32) of the words ``ctx_init``, e.g. "a photo of a"."""
    tokens, n_ctx = _words_tokens(tokenize, ctx_init)
    return emb_weight[tokens[0, 1 : 1 + n_ctx].to(emb_weight.device)].float().clone()  # [n_ctx, d]


def _name_lengths(tokenize, classnames: list[str], n_ctx: int, ctx_init: str | None, L_max: int) -> list[int]:
    """Tokens of each class name (CoOp: ``len(encode(name))``), once it is checked that the
    longest prompt fits the text encoder's ``L_max`` positions."""
    name_lens = (_eot_index(tokenize(list(classnames))) - 1).tolist()
    n_name, name = max(zip(name_lens, classnames))  # the longest class name decides
    if prompt_tokens(n_ctx, n_name) > L_max:
        flag = f"--ctx-init {quote_words(ctx_init)} ({tokens(n_ctx)})" if ctx_init else f"--n-ctx {n_ctx}"
        fits = L_max - prompt_tokens(0, n_name)
        hint = ("no context fits beside that name" if fits < 1 else  # words set n_ctx: fewer words, then
                f"use words of at most {tokens(fits)}" if ctx_init else f"use at most --n-ctx {fits}")
        raise UserError(f"{flag}: the prompt of class {name!r} (a name of {tokens(n_name)}) needs "
                        f"{prompt_tokens(n_ctx, n_name)} of the text encoder's {L_max} tokens; {hint}")
    return name_lens


def _position_order(name_lens: list[int], n_ctx: int, class_position: str, L_max: int) -> torch.Tensor:
    """perm [K, L_max]: which position of the "end" layout goes to position p of the chosen layout."""
    perm = torch.arange(L_max).repeat(len(name_lens), 1)  # [K, 77]
    h = n_ctx // 2
    for k, m in enumerate(name_lens):
        ctx_pos = list(range(1, 1 + n_ctx))
        name_pos = list(range(1 + n_ctx, 1 + n_ctx + m))
        if class_position == "front":
            order = name_pos + ctx_pos
        elif class_position == "middle":
            order = ctx_pos[:h] + name_pos + ctx_pos[h:]
        else:
            order = ctx_pos + name_pos
        perm[k, 1 : 1 + n_ctx + m] = torch.tensor(order)
    return perm


class PromptLearner(nn.Module):
    """CoOp's learnable context for K classes, and the encoding of the K class prompts.

    Only ``ctx`` is a parameter; the token embeddings of the fixed parts are non-persistent
    buffers, and the text encoder holds frozen buffers only. ``state_dict()`` is ``{"ctx"}``.

    Args:
        clip: the loaded model (its text tower must be open_clip's standard one).
        classnames: the K class names, in label order.
        n_ctx: number of context vectors (ignored when ``ctx_init`` is given: then it is the
            number of tokens of ``ctx_init``).
        ctx_init: optional words whose token embeddings initialise the context, e.g.
            "a photo of a"; otherwise N(0, 0.02) from ``generator``.
        csc: class-specific contexts ([K, n_ctx, d]) instead of one unified context ([n_ctx, d]).
        class_position: "end", "middle" or "front".
        generator: random generator for the N(0, 0.02) initialisation.
        precision: dtype of the frozen text weights, cast once: "fp32" (default), "bf16", "fp16".
        attention: "causal" (default, causal SDPA kernels), "mask" (additive float mask),
            "square" (the shared prefix broadcast to every prompt, one ``is_causal=True`` SDPA)
            or "flex" (the flat token list with a block-sparse mask).
        residual: "fp32" (default) or "precision" (or its name, e.g. "bf16"): the text tower's residual
            stream in bf16/fp16 too (the whole tower in low precision, autocast off inside).

    Attributes:
        seq_len: max(EOT) + 1, the positions encoded per prompt.
        prefix_len: 1 + n_ctx when the prefix is shared (a unified context at class position
            end), else 0.
        tokens_encoded: token positions through the text transformer per forward pass.
    """

    def __init__(
        self,
        clip: ClipModel,
        classnames: list[str],
        n_ctx: int = 16,
        ctx_init: str | None = None,
        csc: bool = False,
        class_position: str = "end",
        generator: torch.Generator | None = None,
        *,
        precision: str = "fp32",
        attention: str = "causal",
        residual: str = "fp32",
    ):
        super().__init__()
        if class_position not in CLASS_POSITIONS:
            raise UserError(f"--class-position must be one of {CLASS_POSITIONS}, got {class_position!r}")
        classnames = class_names(classnames)
        self.encoder = TextEncoder(clip.model, precision=precision, attention=attention, name=clip.name,
                                   residual=residual)
        tokenize = clip.tokenizer
        emb_weight = clip.model.token_embedding.weight.detach()
        K, d = len(classnames), emb_weight.shape[1]
        if ctx_init:
            ctx = _ctx_from_words(tokenize, emb_weight, ctx_init)  # [n_ctx, d]
            n_ctx = ctx.shape[0]
            if csc:
                ctx = ctx.expand(K, n_ctx, d).clone()  # [K, n_ctx, d]
        elif n_ctx < 1:
            raise UserError(f"--n-ctx must be >= 1, got {n_ctx}")
        # The prompt must fit the text encoder: checked before the context (and the placeholder
        # text below) is allocated at n_ctx's size
        name_lens = _name_lengths(tokenize, classnames, n_ctx, ctx_init, self.encoder.context_length)
        if not ctx_init:
            shape = (K, n_ctx, d) if csc else (n_ctx, d)
            gen_device = generator.device if generator is not None else "cpu"
            ctx = torch.empty(shape, device=gen_device).normal_(0.0, 0.02, generator=generator).to(emb_weight.device)
        self.ctx = nn.Parameter(ctx)  # float32
        self.n_ctx, self.csc, self.class_position = n_ctx, csc, class_position
        self.classnames = list(classnames)
        self._register_prompts(tokenize, emb_weight, name_lens)
        # Unified context at the end: positions 0 .. n_ctx are the same for every class
        self._lay_out(1 + n_ctx if not csc and class_position == "end" else 0)

    def _register_prompts(self, tokenize, emb_weight: torch.Tensor, name_lens: list[int]) -> None:
        """The K prompts' tokens in the chosen layout and the embeddings of their fixed parts (buffers)."""
        n_ctx, device = self.n_ctx, emb_weight.device
        # Tokens of "X X ... X {name}." = [SOS] [X * n_ctx] [name] [.] [EOT] [pad ...]
        placeholder = " ".join(["X"] * n_ctx)
        # front/middle move the name's tokens, so the "." must be a token of its own: a name ending in
        # punctuation ("dog!", "U.S.") would merge with it ("!." one token) and take it to the front
        period = "." if self.class_position == "end" else " ."  # (end: CoOp's tokens, as "a photo of a dog!.")
        tokens = tokenize([f"{placeholder} {name}{period}" for name in self.classnames]).to(device)  # [K, 77]
        eot = _eot_index(tokens)  # [K]
        L_max = self.encoder.context_length
        perm = _position_order(name_lens, n_ctx, self.class_position, L_max).to(device)  # [K, 77]
        tokens = tokens.gather(1, perm)  # [K, 77] in the chosen layout (EOT does not move)
        is_ctx = (perm >= 1) & (perm <= n_ctx)  # [K, 77]
        ctx_index = torch.where(is_ctx, perm - 1, torch.zeros_like(perm))  # [K, 77]
        L = int(eot.max()) + 1  # encode only the first max(EOT) + 1 positions (causal mask)
        self.seq_len = L
        self.register_buffer("tokens", tokens, persistent=False)  # [K, 77]
        self.register_buffer("eot", eot, persistent=False)  # [K]
        self.register_buffer("is_ctx", is_ctx[:, :L], persistent=False)  # [K, L]
        self.register_buffer("ctx_index", ctx_index[:, :L], persistent=False)  # [K, L]
        fixed = emb_weight[tokens[:, :L]].float() * (~is_ctx[:, :L, None])  # [K, L, d], zero at ctx slots
        self.register_buffer("token_embeds", fixed, persistent=False)
        self.register_buffer("sos_embed", emb_weight[tokens[0, :1]].float(), persistent=False)  # [1, d]
        padding = tokens[:, L:]
        assert bool((padding == tokens[0, -1]).all()), "the tokens after max(EOT) must all be padding"
        self.register_buffer("pad_embed", emb_weight[tokens[0, -1:]].float(), persistent=False)  # [1, d]

    def _lay_out(self, prefix_len: int) -> None:
        """Sets how the encoder reads the prompts: positions ``0 .. prefix_len - 1`` encoded once
        and shared by the K prompts (0: none), the rest packed, each prompt up to its own EOT."""
        P = self.prefix_len = prefix_len
        self.register_buffer("suffix_eot", self.eot - P, persistent=False)  # [K] EOT positions after the prefix
        index = packed_index(self.suffix_eot, self.seq_len - P)  # [N] positions up to each EOT
        self.register_buffer("packed_index", index, persistent=False)

    @property
    def tokens_encoded(self) -> int:
        """Token positions through the text transformer per forward pass: the shared prefix once,
        then the packed positions."""
        return self.prefix_len + self.packed_index.numel()

    def prompt_embeddings(self, full: bool = False) -> torch.Tensor:
        """Token embeddings of the K prompts (without positional embeddings).

        Args:
            full: all ``context_length`` positions (77; padding included) instead of the first
                ``max(EOT) + 1``, e.g. to feed open_clip's own transformer.

        Returns:
            [K, L, d] float32, L = max(EOT) + 1, or 77 with ``full``.
        """
        K = len(self.classnames)
        if self.csc:
            ctx = self.ctx[torch.arange(K, device=self.ctx.device)[:, None], self.ctx_index]  # [K, L, d]
        else:
            ctx = self.ctx[self.ctx_index]  # [K, L, d]
        x = torch.where(self.is_ctx[..., None], ctx, self.token_embeds)  # [K, L, d]
        if full:  # positions after max(EOT) hold only the padding token
            pad = self.pad_embed.expand(x.shape[0], self.tokens.shape[1] - self.seq_len, -1)  # [K, 77 - L, d]
            x = torch.cat([x, pad], dim=1)  # [K, 77, d]
        return x

    def forward(self) -> torch.Tensor:
        """Text features [K, e] of the K prompts, float32, not normalised."""
        P = self.prefix_len
        if P:
            prefix = torch.cat([self.sos_embed, self.ctx])  # [1 + n_ctx, d]
            suffix = self.token_embeds[:, P:]  # [K, L - P, d]: name, ".", EOT, padding up to L
            return self.encoder(suffix, self.suffix_eot, self.packed_index, prefix=prefix)
        return self.encoder(self.prompt_embeddings(), self.eot, self.packed_index)


def text_features_from_prompt(clip: ClipModel, prompt: PromptFile | str | os.PathLike) -> torch.Tensor:
    """Normalised text features [K, e] of a saved prompt (loaded, or its file), encoded with ``clip``'s weights.

    Rebuilds the learner from the file's metadata (class names, n_ctx, csc, class position),
    loads its context and encodes the prompts (fp32). Used when the prompt is scored with other
    weights of the same architecture (``PromptFile.check_model`` returned False).

    Raises:
        UserError: the file's context does not fit the model or its metadata.
    """
    if not isinstance(prompt, PromptFile):
        prompt = load_prompt(prompt)
    learner = PromptLearner(
        clip, prompt.classnames, n_ctx=prompt.n_ctx, csc=prompt.csc, class_position=prompt.class_position
    )
    if tuple(prompt.ctx.shape) != tuple(learner.ctx.shape):
        raise UserError(
            f"{prompt.path or 'prompt'}: ctx has shape {tuple(prompt.ctx.shape)}, but the model and metadata "
            f"need {tuple(learner.ctx.shape)}"
        )
    with torch.no_grad():
        learner.ctx.copy_(prompt.ctx)
        return F.normalize(learner().float(), dim=-1)


def class_names(classnames: Sequence[str]) -> list[str]:
    """``classnames`` as a list, refusing one string: a str is a sequence of strings too, and
    ``"cat"`` was three classes, 'c', 'a' and 't', each with its text features, without a word.

    Raises:
        TypeError: a str (or bytes) given, or names that are not strings.
        UserError: no class names.
    """
    if isinstance(classnames, (str, bytes)):
        raise TypeError(f"classnames must be a list of class names, not one string ({classnames!r:.40}): give "
                        f"[{classnames!r:.40}] for one class")
    names = list(classnames)
    if not all(isinstance(n, str) for n in names):
        raise TypeError(f"classnames must be strings, got {type(next(n for n in names if not isinstance(n, str)))}")
    if not names:
        raise UserError("classnames: no class names given")
    return names


# The MCM baseline's prompt (Ming et al., 2022) as MCM's code writes it, without a period
# (its get_ood_scores_clip and evaluate_classification; prompts/zero_shot_template.txt holds it too)
ZERO_SHOT_TEMPLATE = "a photo of a {c}"


@torch.no_grad()
def zero_shot_text_features(
    clip: ClipModel, classnames: list[str], template: str = ZERO_SHOT_TEMPLATE, batch_size: int = 256
) -> torch.Tensor:
    """Normalised text features [K, e] of ``template`` filled with each class name (the MCM baseline).

    Uses open_clip's own ``encode_text`` on the tokenized text. Each distinct text is encoded
    once: names that repeat (folders 'sea lion' and 'sea_lion') get the same features bit for bit,
    on any CPU (as two rows of a batch they may round apart where the GEMM rounds by row).
    """
    if "{c}" not in template:
        raise UserError(f"--template {template!r}: must contain {{c}} where the class name goes")
    classnames = class_names(classnames)
    device = next(clip.model.parameters()).device
    texts = [template.replace("{c}", name) for name in classnames]
    distinct = list(dict.fromkeys(texts))
    feats = [
        clip.model.encode_text(clip.tokenizer(distinct[i : i + batch_size]).to(device)).float()
        for i in range(0, len(distinct), batch_size)
    ]
    feats = F.normalize(torch.cat(feats), dim=-1)
    if len(distinct) == len(texts):
        return feats
    row = {text: i for i, text in enumerate(distinct)}
    return feats[torch.tensor([row[text] for text in texts], device=feats.device)]
