"""The CoOp context: learnable prompt vectors and a fast, exact encoder of the K class prompts.

A prompt is built in embedding space from the tokens of ``"X X ... X {name}."``:
``[SOS] [ctx x n_ctx] [name tokens] [.] [EOT]`` (class position ``end``; ``middle`` puts half of
the context after the name, ``front`` puts the name first), pooled at the EOT position after
``ln_final`` and projected by ``text_projection`` (SPEC section 2).

The encoder computes exactly what open_clip's ``encode_text`` computes on the same embeddings,
with three exact shortcuts (docs/prompt.md explains why each is exact):

* only the first ``max(EOT) + 1`` positions are encoded (the mask is causal, pooling is at EOT);
* with a unified context at the end, positions ``0 .. n_ctx`` (SOS and the context) are the
  same for every class, so they are encoded once and shared by the K prompts as attention keys
  and values;
* the last layer runs attention, the MLP and ``ln_final`` for the K EOT tokens only.

Two optional speed knobs: ``precision`` ("bf16"/"fp16" casts the frozen text weights once; the
context, the residual stream and the output stay float32) and ``attention`` ("causal" uses the
causal kernels of ``scaled_dot_product_attention``, "mask" an additive float mask like open_clip).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

from .clip_model import ClipModel
from .errors import UserError
from .prompt_file import PromptFile

__all__ = [
    "ATTENTION",
    "CLASS_POSITIONS",
    "ENCODER_PRECISIONS",
    "PromptLearner",
    "TextEncoder",
    "check_text_tower",
    "text_features_from_prompt",
    "zero_shot_text_features",
]

CLASS_POSITIONS = ("end", "middle", "front")
ATTENTION = ("causal", "mask")
ENCODER_PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_text_tower(model: nn.Module, name: str = "model") -> None:
    """Raise a UserError unless ``model`` has open_clip's standard CLIP text tower.

    Supported: ``open_clip.CLIP`` (ViT-B-16, RN50, ...): token and positional embeddings, a
    causal transformer of ``ResidualAttentionBlock`` (``nn.MultiheadAttention``), ``ln_final``,
    argmax (EOT) pooling, ``text_projection``. CustomTextCLIP / Hugging Face text towers are not.
    """
    needed = ("transformer", "token_embedding", "positional_embedding", "ln_final", "text_projection", "attn_mask")
    if hasattr(model, "text") or any(not hasattr(model, a) for a in needed):
        raise UserError(
            f"--model {name}: a CoOp prompt needs open_clip's standard CLIP text tower (token embedding, causal "
            "transformer, EOT pooling); CustomTextCLIP and Hugging Face text towers are not supported"
        )
    if getattr(model, "text_pool_type", "argmax") != "argmax" or model.attn_mask is None:
        raise UserError(
            f"--model {name}: a CoOp prompt needs a causal text transformer pooled at the EOT token "
            f"(text_pool_type 'argmax'), got {getattr(model, 'text_pool_type', None)!r}"
            + (" without a causal mask" if model.attn_mask is None else "")
        )
    for blk in model.transformer.resblocks:
        ok = (
            isinstance(getattr(blk, "attn", None), nn.MultiheadAttention)
            and isinstance(getattr(blk, "ln_1", None), nn.LayerNorm)
            and isinstance(getattr(blk, "ln_2", None), nn.LayerNorm)
            and hasattr(blk.mlp, "c_fc")
            and not hasattr(blk, "ln_1_kv")
        )
        if not ok:
            raise UserError(
                f"--model {name}: its text blocks are not open_clip's standard ResidualAttentionBlock "
                "(custom attention blocks are not supported by the CoOp prompt)"
            )


def _frozen(t: torch.Tensor | None, dtype: torch.dtype | None = None) -> torch.Tensor | None:
    """A detached view (same storage when no cast is needed) of a frozen weight."""
    if t is None:
        return None
    t = t.detach()
    return t if dtype is None else t.to(dtype)


class _Block(nn.Module):
    """One frozen ResidualAttentionBlock, run functionally on a flat list of tokens.

    Matmul weights are held in ``dtype`` (cast once); LayerNorm and LayerScale parameters stay
    float32, and so does the residual stream, as in open_clip under autocast.
    """

    def __init__(self, blk: nn.Module, dtype: torch.dtype):
        super().__init__()
        attn = blk.attn
        self.heads = attn.num_heads
        self.width = attn.embed_dim
        self.eps1, self.eps2 = blk.ln_1.eps, blk.ln_2.eps
        self.act = blk.mlp.gelu if hasattr(blk.mlp, "gelu") else blk.mlp[1]  # stateless (GELU, QuickGELU)
        ls1, ls2 = getattr(blk.ls_1, "gamma", None), getattr(blk.ls_2, "gamma", None)
        weights = {
            "ln1_w": _frozen(blk.ln_1.weight), "ln1_b": _frozen(blk.ln_1.bias),
            "in_w": _frozen(attn.in_proj_weight, dtype), "in_b": _frozen(attn.in_proj_bias, dtype),
            "out_w": _frozen(attn.out_proj.weight, dtype), "out_b": _frozen(attn.out_proj.bias, dtype),
            "ls1": _frozen(ls1),
            "ln2_w": _frozen(blk.ln_2.weight), "ln2_b": _frozen(blk.ln_2.bias),
            "fc_w": _frozen(blk.mlp.c_fc.weight, dtype), "fc_b": _frozen(blk.mlp.c_fc.bias, dtype),
            "proj_w": _frozen(blk.mlp.c_proj.weight, dtype), "proj_b": _frozen(blk.mlp.c_proj.bias, dtype),
            "ls2": _frozen(ls2),
        }
        for k, v in weights.items():
            self.register_buffer(k, v, persistent=False)  # frozen: never parameters, never saved
        self.dtype = dtype

    def qkv(self, x: torch.Tensor) -> torch.Tensor:
        """[N, d] residual tokens -> [N, 3d] queries, keys, values (compute dtype)."""
        h = F.layer_norm(x, (self.width,), self.ln1_w, self.ln1_b, self.eps1).to(self.dtype)
        return F.linear(h, self.in_w, self.in_b)

    def finish(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Residual tokens [N, d] and their attention outputs [N, d] -> the block's output [N, d]."""
        o = F.linear(a.to(self.dtype), self.out_w, self.out_b)
        x = x + (o * self.ls1 if self.ls1 is not None else o)
        h = F.layer_norm(x, (self.width,), self.ln2_w, self.ln2_b, self.eps2).to(self.dtype)
        m = F.linear(self.act(F.linear(h, self.fc_w, self.fc_b)), self.proj_w, self.proj_b)
        return x + (m * self.ls2 if self.ls2 is not None else m)


def _heads(t: torch.Tensor, n: int, length: int, heads: int) -> torch.Tensor:
    """[n * length, w] -> [n, heads, length, w / heads]."""
    return t.reshape(n, length, heads, -1).transpose(1, 2)


class TextEncoder(nn.Module):
    """The frozen text transformer of an open_clip CLIP model, for prompt embeddings.

    Holds no parameters: its weights are non-persistent buffers (views of the model's weights in
    float32, or copies cast once to bf16/fp16), so they never get gradients and are never saved.

    Args:
        model: an ``open_clip.CLIP`` (checked by :func:`check_text_tower`).
        precision: "fp32", "bf16" or "fp16": the dtype of the matmul weights.
        attention: "causal" (causal SDPA kernels) or "mask" (an additive float mask).
        name: the model's name, for error messages.
    """

    def __init__(self, model: nn.Module, precision: str = "fp32", attention: str = "causal", name: str = "model"):
        super().__init__()
        check_text_tower(model, name)
        if precision not in ENCODER_PRECISIONS:
            raise UserError(f"--precision must be one of {tuple(ENCODER_PRECISIONS)}, got {precision!r}")
        if attention not in ATTENTION:
            raise ValueError(f"attention must be one of {ATTENTION}, got {attention!r}")
        self.precision, self.attention = precision, attention
        self.blocks = nn.ModuleList(_Block(b, ENCODER_PRECISIONS[precision]) for b in model.transformer.resblocks)
        self.heads = self.blocks[0].heads
        self.width = self.blocks[0].width
        self.context_length = model.positional_embedding.shape[0]
        self.register_buffer("positional_embedding", _frozen(model.positional_embedding), persistent=False)
        self.register_buffer("lnf_w", _frozen(model.ln_final.weight), persistent=False)
        self.register_buffer("lnf_b", _frozen(model.ln_final.bias), persistent=False)
        self.lnf_eps = model.ln_final.eps
        proj = model.text_projection
        if isinstance(proj, nn.Linear):  # x @ W.T + b
            self.register_buffer("proj_w", _frozen(proj.weight).t(), persistent=False)
            self.register_buffer("proj_b", _frozen(proj.bias), persistent=False)
        else:  # a [width, e] matrix: x @ W
            self.register_buffer("proj_w", _frozen(proj), persistent=False)
            self.register_buffer("proj_b", None, persistent=False)

    def _attend(self, q, k, v, causal_offset: int) -> torch.Tensor:
        """Causal attention where query i sits at key position ``causal_offset + i``."""
        Lq, Lk = q.shape[-2], k.shape[-2]
        if self.attention == "causal":
            if causal_offset == 0:
                return F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(Lq, Lk))
        # open_clip's way: an additive float mask with -inf above the (shifted) diagonal
        mask = torch.full((Lq, Lk), float("-inf"), device=q.device).triu_(1 + causal_offset).to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    def forward(self, x: torch.Tensor, eot: torch.Tensor, prefix: torch.Tensor | None = None) -> torch.Tensor:
        """Text features of K prompts, pooled at EOT and projected (not normalised).

        Args:
            x: token embeddings (without positional embeddings) [K, S, d] of positions
                ``P .. P+S-1`` of each prompt, where P is the prefix length (0 without a prefix).
            eot: [K] position of each prompt's EOT token within ``x`` (0-based, < S).
            prefix: optional shared embeddings [P, d] of positions ``0 .. P-1``, the same for
                every prompt: encoded once and used as keys/values by all K prompts.

        Returns:
            [K, e] float32 text features.
        """
        K, S, d = x.shape
        P = 0 if prefix is None else prefix.shape[0]
        if P + S > self.context_length:
            raise ValueError(f"prompts of {P + S} tokens exceed the context length {self.context_length}")
        pos = self.positional_embedding.float()
        xs = (x.float() + pos[P : P + S]).reshape(K * S, d)  # [K*S, d]
        h = self.heads
        if P:
            xp = prefix.float() + pos[:P]  # [P, d]
            tokens = torch.cat([xp, xs])  # [P + K*S, d]: one batch of tokens for every matmul
        else:
            tokens = xs
        # mask for the EOT queries of the last layer: key j is visible iff j <= P + eot
        keys = torch.arange(P + S, device=x.device)
        eot_mask = (keys[None, :] <= (P + eot)[:, None])[:, None, None, :]  # [K, 1, 1, P+S]
        last = len(self.blocks) - 1
        for i, blk in enumerate(self.blocks):
            qkv = blk.qkv(tokens)  # [N, 3d]
            qkv_s = qkv[P:].reshape(K, S, 3, d)  # [K, S, 3, d]
            q_s, k_s, v_s = (_heads(qkv_s[:, :, j], K, S, h) for j in range(3))  # [K, h, S, d/h]
            if P:
                qkv_p = qkv[:P].reshape(1, P, 3, d)  # [1, P, 3, d]
                q_p, k_p, v_p = (_heads(qkv_p[:, :, j], 1, P, h) for j in range(3))  # [1, h, P, d/h]
                k_all = torch.cat([k_p.expand(K, -1, -1, -1), k_s], dim=2)  # [K, h, P+S, d/h]
                v_all = torch.cat([v_p.expand(K, -1, -1, -1), v_s], dim=2)
            else:
                k_all, v_all = k_s, v_s
            if i == last:
                # only the EOT outputs are pooled: attention, MLP and ln_final for K tokens
                q_eot = q_s[torch.arange(K, device=x.device), :, eot][:, :, None]  # [K, h, 1, d/h]
                a = F.scaled_dot_product_attention(q_eot, k_all, v_all, attn_mask=eot_mask)  # [K, h, 1, d/h]
                x_eot = tokens[P:].reshape(K, S, d)[torch.arange(K, device=x.device), eot]  # [K, d]
                tokens = blk.finish(x_eot, a.reshape(K, d))  # [K, d]
                break
            a_s = self._attend(q_s, k_all, v_all, causal_offset=P)  # [K, h, S, d/h]
            a_s = a_s.transpose(1, 2).reshape(K * S, d)
            if P:
                a_p = self._attend(q_p, k_p, v_p, causal_offset=0).transpose(1, 2).reshape(P, d)
                a = torch.cat([a_p, a_s])  # [P + K*S, d]
            else:
                a = a_s
            tokens = blk.finish(tokens, a)
        out = F.layer_norm(tokens.float(), (d,), self.lnf_w, self.lnf_b, self.lnf_eps)  # [K, d]
        out = out @ self.proj_w.float()
        return out + self.proj_b if self.proj_b is not None else out


def _eot_index(tokens: torch.Tensor) -> torch.Tensor:
    """Position of the EOT token (the largest id) in each row of [N, L] tokens."""
    return tokens.argmax(dim=-1)


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
        attention: "causal" (default, causal SDPA kernels) or "mask" (additive float mask).
        share_prefix: encode the positions shared by every prompt (SOS and a unified context at
            class position end) once (default True; exact, see docs/prompt.md).
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
        share_prefix: bool = True,
    ):
        super().__init__()
        model = clip.model
        if class_position not in CLASS_POSITIONS:
            raise UserError(f"--class-position must be one of {CLASS_POSITIONS}, got {class_position!r}")
        if not classnames:
            raise UserError("classnames: no class names given")
        self.encoder = TextEncoder(model, precision=precision, attention=attention, name=clip.name)
        tokenize = clip.tokenizer
        emb_weight = model.token_embedding.weight.detach()
        device = emb_weight.device
        d = emb_weight.shape[1]

        if ctx_init:
            init_tokens = tokenize([ctx_init]).to(device)  # [1, 77]
            n_ctx = int(_eot_index(init_tokens)[0]) - 1
            if n_ctx < 1:
                raise UserError(f"--ctx-init {ctx_init!r}: has no tokens")
            ctx = emb_weight[init_tokens[0, 1 : 1 + n_ctx]].float().clone()  # [n_ctx, d]
            if csc:
                ctx = ctx.expand(len(classnames), n_ctx, d).clone()  # [K, n_ctx, d]
        else:
            if n_ctx < 1:
                raise UserError(f"--n-ctx must be >= 1, got {n_ctx}")
            shape = (len(classnames), n_ctx, d) if csc else (n_ctx, d)
            gen_device = generator.device if generator is not None else "cpu"
            ctx = torch.empty(shape, device=gen_device).normal_(0.0, 0.02, generator=generator).to(device)
        self.ctx = nn.Parameter(ctx)  # float32
        self.n_ctx, self.csc, self.class_position = n_ctx, csc, class_position
        self.classnames = list(classnames)

        # Tokens of "X X ... X {name}." = [SOS] [X * n_ctx] [name] [.] [EOT] [pad ...]
        K, L_max = len(classnames), self.encoder.context_length
        placeholder = " ".join(["X"] * n_ctx)
        tokens = tokenize([f"{placeholder} {name}." for name in classnames]).to(device)  # [K, 77]
        name_lens = (_eot_index(tokenize(list(classnames))) - 1).tolist()  # CoOp: len(encode(name))
        eot = _eot_index(tokens)  # [K]
        for name, n_name in zip(classnames, name_lens):
            if 1 + n_ctx + n_name + 2 > L_max:
                raise UserError(f"class {name!r}: its prompt needs more than the {L_max} tokens of the text encoder")
        # perm[k, p]: which position of the "end" layout goes to position p of the chosen layout
        perm = torch.arange(L_max).repeat(K, 1)  # [K, 77]
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
        perm = perm.to(device)
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
        # Unified context at the end: positions 0 .. n_ctx are the same for every class.
        self.prefix_len = 1 + n_ctx if (share_prefix and not csc and class_position == "end") else 0
        self.register_buffer("sos_embed", emb_weight[tokens[0, :1]].float(), persistent=False)  # [1, d]
        padding = tokens[:, L:]
        assert bool((padding == tokens[0, -1]).all()), "the tokens after max(EOT) must all be padding"
        self.register_buffer("pad_embed", emb_weight[tokens[0, -1:]].float(), persistent=False)  # [1, d]

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
            return self.encoder(suffix, self.eot - P, prefix=prefix)
        return self.encoder(self.prompt_embeddings(), self.eot)


def text_features_from_prompt(clip: ClipModel, prompt: PromptFile) -> torch.Tensor:
    """Normalised text features [K, e] of a saved prompt, encoded with ``clip``'s weights.

    Rebuilds the learner from the file's metadata (class names, n_ctx, csc, class position),
    loads its context and encodes the prompts (fp32). Used when the prompt is scored with other
    weights of the same architecture (``PromptFile.check_model`` returned False).

    Raises:
        UserError: the file's context does not fit the model or its metadata.
    """
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


@torch.no_grad()
def zero_shot_text_features(
    clip: ClipModel, classnames: list[str], template: str = "a photo of a {c}.", batch_size: int = 256
) -> torch.Tensor:
    """Normalised text features [K, e] of ``template`` filled with each class name (the MCM baseline).

    Uses open_clip's own ``encode_text`` on the tokenized text.
    """
    if "{c}" not in template:
        raise UserError(f"--template {template!r}: must contain {{c}} where the class name goes")
    device = next(clip.model.parameters()).device
    texts = [template.replace("{c}", name) for name in classnames]
    feats = [
        clip.model.encode_text(clip.tokenizer(texts[i : i + batch_size]).to(device)).float()
        for i in range(0, len(texts), batch_size)
    ]
    return F.normalize(torch.cat(feats), dim=-1)
