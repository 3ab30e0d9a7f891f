"""Frozen open_clip towers run functionally, with their weights cast once: fast and exact.

``TextEncoder`` encodes prompt embeddings (the CoOp context) and ``ImageEncoder`` encodes
images with open_clip's ViT. Both compute what open_clip computes (the same LayerNorms,
attention, MLPs, pooling and projections), with three differences that change no result:

* the matmul weights are held in one dtype (``precision``), cast once at construction rather
  than by autocast at every call; LayerNorm parameters and the residual stream stay float32,
  as in open_clip under autocast;
* attention runs through ``F.scaled_dot_product_attention`` (its causal kernels for the text),
  or, with ``attention="flex"``, over the flat list of tokens with a block-sparse mask
  (FlexAttention on CUDA);
* the last block computes attention, the MLP and the final LayerNorm only for the token that is
  pooled (EOT for the text, CLS for the image): no other output of the last block is used.

The weights are non-persistent buffers (views of the model's float32 weights, or cast copies):
the modules have no parameters, never get gradients and add nothing to a ``state_dict``.
See docs/prompt.md.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from clip_smot.common import device as common_device
from clip_smot.common.device import DTYPES
from clip_smot.common.errors import UserError

__all__ = [
    "ATTENTION",
    "ImageEncoder",
    "TextEncoder",
    "check_text_tower",
    "compile_available",
    "fast_image_encoder",
    "flex_available",
    "packed_index",
]

ATTENTION = ("causal", "mask", "square", "flex")


def _is_standard_block(blk: nn.Module) -> bool:
    """open_clip's ResidualAttentionBlock (not the custom one, not cross-attention)."""
    return (
        isinstance(getattr(blk, "attn", None), nn.MultiheadAttention)
        and isinstance(getattr(blk, "ln_1", None), nn.LayerNorm)
        and isinstance(getattr(blk, "ln_2", None), nn.LayerNorm)
        and hasattr(getattr(blk, "mlp", None), "c_fc")
        and not hasattr(blk, "ln_1_kv")
    )


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
        if not _is_standard_block(blk):
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

    def __init__(self, blk: nn.Module, dtype: torch.dtype, residual_dtype: torch.dtype = torch.float32):
        super().__init__()
        attn = blk.attn
        self.heads = attn.num_heads
        self.width = attn.embed_dim
        self.eps1, self.eps2 = blk.ln_1.eps, blk.ln_2.eps
        self.act = blk.mlp.gelu if hasattr(blk.mlp, "gelu") else blk.mlp[1]  # stateless (GELU, QuickGELU)
        ls1, ls2 = getattr(blk.ls_1, "gamma", None), getattr(blk.ls_2, "gamma", None)
        weights = {
            # LayerNorm parameters in the residual stream's dtype: CUDA's layer_norm wants them to
            # match its input (the CPU kernel also takes float32 ones, CUDA's does not)
            "ln1_w": _frozen(blk.ln_1.weight, residual_dtype), "ln1_b": _frozen(blk.ln_1.bias, residual_dtype),
            "in_w": _frozen(attn.in_proj_weight, dtype), "in_b": _frozen(attn.in_proj_bias, dtype),
            "out_w": _frozen(attn.out_proj.weight, dtype), "out_b": _frozen(attn.out_proj.bias, dtype),
            "ls1": _frozen(ls1, residual_dtype),
            "ln2_w": _frozen(blk.ln_2.weight, residual_dtype), "ln2_b": _frozen(blk.ln_2.bias, residual_dtype),
            "fc_w": _frozen(blk.mlp.c_fc.weight, dtype), "fc_b": _frozen(blk.mlp.c_fc.bias, dtype),
            "proj_w": _frozen(blk.mlp.c_proj.weight, dtype), "proj_b": _frozen(blk.mlp.c_proj.bias, dtype),
            "ls2": _frozen(ls2, residual_dtype),
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


def packed_index(eot: torch.Tensor, length: int) -> torch.Tensor:
    """Sorted flat indices into [K, length] of the positions up to each row's EOT (inclusive).

    Args:
        eot: [K] EOT position of each prompt, relative to the start of the [K, length] layout.
        length: positions per prompt.
    """
    valid = torch.arange(length, device=eot.device)[None, :] <= eot[:, None]  # [K, length]
    return valid.flatten().nonzero().squeeze(1)  # [N]


def _heads(t: torch.Tensor, n: int, length: int, heads: int) -> torch.Tensor:
    """[n * length, w] -> [n, heads, length, w / heads]."""
    return t.reshape(n, length, heads, -1).transpose(1, 2)


_COMPILED_FLEX = None
_LAYOUTS_KEPT = 16  # layouts cached per TextEncoder (see TextEncoder._layout)


def flex_available(device: torch.device | str) -> bool:
    """Whether ``attention="flex"`` runs FlexAttention's kernel on ``device``, not a dense mask: a
    CUDA GPU of compute capability 8.0 (Ampere) or newer where Triton starts
    (:func:`clip_smot.common.device.missing_triton`: e.g. not without a C compiler). Below
    Ampere torch has no Triton kernel for FlexAttention and falls back to an eager dense path
    (slow; its fp16 backward fails)."""
    if torch.device(device).type != "cuda":
        return False
    try:
        from torch.nn.attention import flex_attention  # noqa: F401  ("import torch.nn..." would make torch local)
    except ImportError:
        return False
    # (while torch.compile traces, Triton has started: the check is not traced, it would break the graph)
    return torch.cuda.get_device_capability(device) >= (8, 0) and (
        torch.compiler.is_compiling() or common_device.missing_triton() is None)


def compile_available(device: torch.device | str) -> bool:
    """Whether ``torch.compile`` can build kernels for ``device``: on CUDA, Triton (inductor's
    GPU backend) needs compute capability 7.0 (Volta) or newer and must start on this machine
    (:func:`clip_smot.common.device.missing_triton`); the CPU backend always (given a C++
    compiler, which ``--compile`` checks)."""
    device = torch.device(device)
    return device.type != "cuda" or (torch.cuda.get_device_capability(device) >= (7, 0)
                                     and common_device.missing_triton() is None)


def _flex(q, k, v, block_mask) -> torch.Tensor:
    """FlexAttention with a BlockMask: compiled once per process (inside an already compiled
    region, the plain function, which the region's compiler fuses)."""
    from torch.nn.attention.flex_attention import flex_attention

    if torch.compiler.is_compiling():
        return flex_attention(q, k, v, block_mask=block_mask)
    global _COMPILED_FLEX
    if _COMPILED_FLEX is None:
        _COMPILED_FLEX = torch.compile(flex_attention, dynamic=False)
    return _COMPILED_FLEX(q, k, v, block_mask=block_mask)


def _masked_attention(q, k, v, mask) -> torch.Tensor:
    """Attention of q [1, h, Lq, d/h] over k, v [1, h, Lk, d/h] with a boolean [Lq, Lk] mask
    (True: visible; SDPA) or the equivalent FlexAttention BlockMask."""
    if isinstance(mask, torch.Tensor):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    with torch.autocast(q.device.type, enabled=False):  # q, k, v hold their dtype already; FlexAttention's
        return _flex(q, k, v, mask)  # backward under autocast is fragile (pytorch/pytorch#176025)


class TextEncoder(nn.Module):
    """The frozen text transformer of an open_clip CLIP model, for prompt embeddings.

    Holds no parameters: its weights are non-persistent buffers (views of the model's weights in
    float32, or copies cast once to bf16/fp16), so they never get gradients and are never saved.

    Args:
        model: an ``open_clip.CLIP`` (checked by :func:`check_text_tower`).
        precision: "fp32", "bf16" or "fp16": the dtype of the matmul weights.
        attention: "causal" (causal SDPA kernels), "mask" (an additive float mask) or "square"
            (with a shared prefix: the prefix's queries, keys and values are broadcast to every
            prompt and one plain ``is_causal=True`` SDPA runs over all P+S positions, the layout
            of the fast flash kernels; the prefix's outputs are read from the first prompt) or
            "flex" (no [K, S] layout at all: attention runs over the flat list of the encoded
            tokens, prefix first, with a mask that lets a token see the prefix and the earlier
            tokens of its own prompt; FlexAttention's block-sparse kernel on CUDA, where it is
            compiled with ``torch.compile`` on first use, and the same mask as a dense boolean
            ``attn_mask`` for SDPA elsewhere).
        residual: dtype of the residual stream: "fp32" (default, as open_clip under autocast) or
            "precision" / the precision's name (the whole tower in bf16/fp16, as a model cast with ``.to(bf16)``;
            LayerNorms still accumulate in float32 inside the kernel). With a low residual
            the encoder runs with autocast disabled: every dtype is already explicit.
        name: the model's name, for error messages.
    """

    def __init__(
        self, model: nn.Module, precision: str = "fp32", attention: str = "causal", name: str = "model",
        residual: str = "fp32",
    ):
        super().__init__()
        check_text_tower(model, name)
        if precision not in DTYPES:
            raise UserError(f"--precision must be one of {tuple(DTYPES)}, got {precision!r}")
        if attention not in ATTENTION:
            raise ValueError(f"attention must be one of {ATTENTION}, got {attention!r}")
        residual = precision if residual == "precision" else residual
        if residual not in ("fp32", precision):
            raise UserError(f"--text-residual must be 'fp32' or 'precision' ({precision!r}), got {residual!r}")
        self.precision, self.attention, self.residual = precision, attention, residual
        self.flex_kernel: bool | None = None  # attention="flex": None = FlexAttention on CUDA, a dense mask elsewhere
        self._layouts: dict = {}  # see _layout: key -> (the keyed tensors, the layout's tensors)
        self.residual_dtype = DTYPES[residual]
        self.blocks = nn.ModuleList(
            _Block(b, DTYPES[precision], self.residual_dtype) for b in model.transformer.resblocks
        )
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
        else:  # a [width, e] matrix, x @ W (or None: no projection)
            self.register_buffer("proj_w", _frozen(proj), persistent=False)
            self.register_buffer("proj_b", None, persistent=False)

    def _attend(self, q, k, v, causal_offset: int) -> torch.Tensor:
        """Causal attention where query i sits at key position ``causal_offset + i``."""
        Lq, Lk = q.shape[-2], k.shape[-2]
        if self.attention in ("causal", "square"):
            if causal_offset == 0:
                return F.scaled_dot_product_attention(q, k, v, is_causal=True)
            from torch.nn.attention.bias import (
                causal_lower_right,  # (imports torch._dynamo: only when used)
            )

            return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(Lq, Lk))
        # open_clip's way: an additive float mask with -inf above the (shifted) diagonal
        mask = torch.full((Lq, Lk), float("-inf"), device=q.device).triu_(1 + causal_offset).to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    def compile_layers(self, **options) -> None:
        """``torch.compile`` the per-layer work of ``attention="square"`` or ``"flex"`` (regional
        compilation: every layer but the last runs the same compiled code, so it compiles once).

        Args:
            **options: passed to ``torch.compile`` (e.g. ``mode``); ``dynamic=False`` by default.
        """
        if self.attention not in ("square", "flex"):
            raise ValueError('compile_layers needs attention="square" or "flex"')
        options.setdefault("dynamic", False)
        if self.attention == "square":
            self._square_layer = torch.compile(TextEncoder._square_layer.__get__(self), **options)
        else:
            self._flat_layer = torch.compile(TextEncoder._flat_layer.__get__(self), **options)

    def _flat_qkv(self, blk, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Flat tokens [L, d] -> queries, keys, values [1, h, L, d/h]."""
        L, h = tokens.shape[0], self.heads
        return tuple(t.unsqueeze(0) for t in blk.qkv(tokens).reshape(L, 3, h, self.width // h).permute(1, 2, 0, 3))

    def _flat_layer(self, blk, tokens: torch.Tensor, mask) -> torch.Tensor:
        """One block (not the last) over the flat token list: tokens [L, d] -> [L, d]."""
        a = _masked_attention(*self._flat_qkv(blk, tokens), mask)  # [1, h, L, d/h]
        return blk.finish(tokens, a[0].transpose(0, 1).reshape(tokens.shape[0], self.width))

    def _layout(self, eot: torch.Tensor, index: torch.Tensor, K: int, S: int, P: int) -> dict:
        """Index tensors and masks that depend on the prompts' layout only, not on their values.

        Built once per pair of ``eot`` and ``index`` tensors (a prompt learner's buffers) and
        cached by their identity and version, so a forward pass launches no kernels to rebuild
        them. The cache keeps the last ``_LAYOUTS_KEPT`` layouts (several learners may share one
        encoder; a captured CUDA graph reads the layout it was captured with, so it must be among
        them).

        Returns a dict with ``rows`` (0 .. K-1), ``eot_token`` [K] (each prompt's EOT in the
        token list after the prefix) and, by attention: "causal", "mask", "square":
        ``eot_mask`` [K, 1, 1, P+S] (the keys an EOT query of the last layer sees); "square":
        ``out_index``, ``fill_index`` (see :meth:`_attend_square`); "flex": ``eot_pos`` [K]
        (``P + eot_token``), ``masks`` (tokens
        [L, L], EOT queries [K, L], L = P + N: FlexAttention BlockMasks on CUDA, dense boolean
        masks elsewhere).
        """
        key = (id(eot), eot._version, id(index), index._version, K, S, P, self.flex_kernel)
        if key in self._layouts:
            return self._layouts[key][1]
        dev = eot.device
        rows = torch.arange(K, device=dev)
        eot_token = torch.searchsorted(index, rows * S + eot)  # [K]
        layout = {"rows": rows, "eot_token": eot_token}
        if self.attention == "flex":
            layout["eot_pos"] = P + eot_token  # [K]: the EOTs in the whole token list, prefix included
            layout["masks"] = self._flat_masks(eot, index, K, S, P, layout["eot_pos"])
        else:  # the EOT queries of the last layer: key j is visible iff j <= P + eot
            keys = torch.arange(P + S, device=dev)
            layout["eot_mask"] = (keys[None, :] <= (P + eot)[:, None])[:, None, None, :]  # [K, 1, 1, P+S]
        if self.attention == "square":  # rows of the flat [K*(P+S)] attention output the tokens need, in order
            sfx = index + (index // S + 1) * P  # [N] into [K*(P+S)]: row k's suffix starts at k*(P+S) + P
            layout["out_index"] = torch.cat([torch.arange(P, device=dev), sfx])  # [P + N]
            # each suffix position's token: its own, or its prompt's EOT after it
            flat = torch.arange(K * S, device=dev)  # [K*S]
            row = flat // S
            flat = row * S + torch.minimum(flat - row * S, eot[row])  # clamp to the row's EOT
            layout["fill_index"] = torch.searchsorted(index, flat)  # [K*S] into the N packed tokens
        if len(self._layouts) >= _LAYOUTS_KEPT:
            self._layouts.pop(next(iter(self._layouts)))  # the oldest
        self._layouts[key] = ((eot, index), layout)  # holds the tensors, so their ids stay theirs
        return layout

    def _flat_masks(self, eot, index, K: int, S: int, P: int, eot_pos: torch.Tensor) -> tuple:
        """The masks of ``attention="flex"``: (tokens [L, L], EOT queries [K, L]); L = P + N tokens.

        A token sees the prefix (positions < P) and the tokens of its own prompt up to itself:
        exactly the keys it sees in open_clip's causal [77, 77] mask, less the padding, which
        no query that matters sees anyway. ``eot_pos`` [K]: each EOT's position in the token list.
        """
        dev = eot.device
        doc = torch.cat([torch.full((P,), -1, device=dev, dtype=index.dtype), index // S])  # [L]: prompt, -1: prefix
        L = doc.shape[0]
        # (torch 2.5's create_block_mask calls the masks on positions rounded up to its 128-token
        # blocks, past L and K: an IndexError there; padded, what they read past the end is unused)
        doc = torch.cat([doc, doc.new_full((-L % 128,), -2)])  # [L rounded up]
        eot_pos = torch.cat([eot_pos, eot_pos.new_full((-K % 128,), -1)])  # [K rounded up]

        def visible(q, kv):  # token q sees token kv
            return (kv <= q) & ((kv < P) | (doc[kv] == doc[q]))

        def visible_from_eot(k, kv):  # prompt k's EOT token sees token kv
            return (kv <= eot_pos[k]) & ((kv < P) | (doc[kv] == k))

        use_flex = flex_available(dev) if self.flex_kernel is None else self.flex_kernel
        if use_flex:
            from torch.nn.attention.flex_attention import create_block_mask

            return (create_block_mask(lambda b, h, q, kv: visible(q, kv), None, None, L, L, device=dev),
                    create_block_mask(lambda b, h, q, kv: visible_from_eot(q, kv), None, None, K, L, device=dev))
        i = torch.arange(L, device=dev)
        return visible(i[:, None], i[None, :]), visible_from_eot(torch.arange(K, device=dev)[:, None], i[None, :])

    def _forward_flat(self, tokens: torch.Tensor, masks: tuple, eot_pos: torch.Tensor) -> torch.Tensor:
        """attention="flex": every block on the flat token list [L, d]; the last one for the EOT
        tokens (positions ``eot_pos`` [K]) only. Returns [K, d]."""
        for i in range(len(self.blocks) - 1):  # (a slice of a ModuleList builds a new one: every pass)
            blk = self.blocks[i]
            tokens = self._flat_layer(blk, tokens, masks[0])
        blk = self.blocks[-1]
        q, k, v = self._flat_qkv(blk, tokens)
        a = _masked_attention(q[:, :, eot_pos], k, v, masks[1])  # [1, h, K, d/h]
        return blk.finish(tokens.index_select(0, eot_pos), a[0].transpose(0, 1).reshape(len(eot_pos), self.width))

    def _square_layer(self, blk, tokens, K: int, S: int, P: int, fill_index, out_index) -> torch.Tensor:
        """One block (not the last) with square attention: tokens [P + N, d] -> [P + N, d]."""
        return blk.finish(tokens, self._attend_square(blk.qkv(tokens), K, S, P, fill_index, out_index))

    def _attend_square(
        self, qkv: torch.Tensor, K: int, S: int, P: int, fill_index: torch.Tensor, out_index: torch.Tensor
    ) -> torch.Tensor:
        """Attention outputs [P + N, d] of the prefix and suffix tokens ``qkv`` [P + N, 3d]:
        one ``is_causal=True`` SDPA over [K, h, P+S] with the prefix broadcast to every prompt.

        ``fill_index`` [K * S] gives, for each suffix position, the token
        that fills it: its own, or for a position after the prompt's EOT a copy of the EOT token
        (any finite values do: those keys are seen only by queries after the EOT, whose outputs
        are dropped, so they get exactly zero gradient). ``out_index`` [P + N] picks the outputs
        from the flat [K * (P+S)] layout: the prefix's from the first prompt (they are the same
        for every prompt), then the encoded positions.
        """
        d, h = self.width, self.heads
        qkv_p, qkv_s = qkv.split([P, qkv.shape[0] - P])  # [P, 3d], [N, 3d] (backward: one cat, not two pads)
        qkv_s = qkv_s.index_select(0, fill_index)  # [N, 3d] -> [K*S, 3d]: one gather
        full = torch.cat([qkv_p.expand(K, P, 3 * d), qkv_s.reshape(K, S, 3 * d)], dim=1)  # [K, P+S, 3d]
        full = full.reshape(K, P + S, 3, h, d // h)  # [K, P+S, 3, h, d/h]
        q, k, v = (t.transpose(1, 2) for t in full.unbind(2))  # [K, h, P+S, d/h] (backward: one stack)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)  # [K, P+S, h, d/h]
        return a.reshape(K * (P + S), d).index_select(0, out_index)  # [P + N, d]

    def forward(
        self, x: torch.Tensor, eot: torch.Tensor, index: torch.Tensor, prefix: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Text features of K prompts, pooled at EOT and projected (not normalised).

        Args:
            x: token embeddings (without positional embeddings) [K, S, d] of positions
                ``P .. P+S-1`` of each prompt, where P is the prefix length (0 without a prefix).
            eot: [K] position of each prompt's EOT token within ``x`` (0-based, < S).
            index: sorted flat indices [N] into ``K * S`` of the positions to encode; it must
                hold every position up to each prompt's EOT (see :func:`packed_index`). The
                positions left out (after a prompt's EOT) are seen by no query that matters, so
                the per-token work (LayerNorms, projections, MLPs) is done for these only and
                attention runs on a zero-padded [K, S] layout.
            prefix: optional shared embeddings [P, d] of positions ``0 .. P-1``, the same for
                every prompt: encoded once and used as keys/values by all K prompts.

        Returns:
            [K, e] text features: float32, or under a caller's autocast its dtype (the final
            projection is a matmul autocast casts), as open_clip's ``encode_text`` there.
        """
        if self.residual_dtype == torch.float32:
            return self._forward(x, eot, index, prefix)
        with torch.autocast(x.device.type, enabled=False):  # all dtypes explicit: no autocast casts
            return self._forward(x, eot, index, prefix)

    def _forward(self, x, eot, index, prefix) -> torch.Tensor:
        K, S, d = x.shape
        P = 0 if prefix is None else prefix.shape[0]
        if P + S > self.context_length:
            raise ValueError(f"prompts of {P + S} tokens exceed the context length {self.context_length}")
        pos = self.positional_embedding.float()
        rdt = self.residual_dtype
        xs = (x.float() + pos[P : P + S]).to(rdt).reshape(K * S, d)  # [K*S, d]
        tokens = xs.index_select(0, index)  # [N, d]: the packed positions
        if P:
            xp = (prefix.float() + pos[:P]).to(rdt)  # [P, d]
            tokens = torch.cat([xp, tokens])  # [P + N, d]: one batch of tokens for every matmul
        layout = self._layout(eot, index, K, S, P)
        if self.attention == "flex":
            return self._pool(self._forward_flat(tokens, layout["masks"], layout["eot_pos"]))
        for i in range(len(self.blocks) - 1):  # (a slice of a ModuleList builds a new one: every pass)
            blk = self.blocks[i]
            if self.attention == "square":
                tokens = self._square_layer(blk, tokens, K, S, P, layout["fill_index"], layout["out_index"])
            else:
                tokens = blk.finish(tokens, self._attend_causal(blk.qkv(tokens), index, K, S, P))  # [P + N, d]
        return self._pool(self._last_layer(tokens, eot, index, layout, K, S, P))

    def _split_qkv(self, qkv: torch.Tensor, index: torch.Tensor, K: int, S: int, P: int) -> tuple:
        """Queries, keys, values [P + N, 3d] -> the suffix queries [K, h, S, d/h], the keys and
        values of prefix and suffix [K, h, P+S, d/h], and the prefix's (q, k, v) [1, h, P, d/h]
        (None without a prefix). The suffix goes back to the [K, S] layout: zeros after EOT."""
        d, h = self.width, self.heads
        qkv_p, qkv_s = qkv.split([P, qkv.shape[0] - P])  # [P, 3d], [N, 3d]
        qkv_s = qkv_s.new_zeros(K * S, 3 * d).index_copy(0, index, qkv_s)  # [K*S, 3d]
        qkv_s = qkv_s.reshape(K, S, 3, d)  # [K, S, 3, d]
        q_s, k_s, v_s = (_heads(t, K, S, h) for t in qkv_s.unbind(2))  # [K, h, S, d/h]
        if not P:
            return q_s, k_s, v_s, None
        qkv_p = qkv_p.reshape(1, P, 3, d)  # [1, P, 3, d]
        q_p, k_p, v_p = (_heads(t, 1, P, h) for t in qkv_p.unbind(2))  # [1, h, P, d/h]
        k_all = torch.cat([k_p.expand(K, -1, -1, -1), k_s], dim=2)  # [K, h, P+S, d/h]
        v_all = torch.cat([v_p.expand(K, -1, -1, -1), v_s], dim=2)
        return q_s, k_all, v_all, (q_p, k_p, v_p)

    def _attend_causal(self, qkv: torch.Tensor, index: torch.Tensor, K: int, S: int, P: int) -> torch.Tensor:
        """Attention outputs [P + N, d] with attention "causal" or "mask": each prompt's
        positions over the prefix and its own earlier positions, the prefix over itself."""
        q_s, k_all, v_all, prefix = self._split_qkv(qkv, index, K, S, P)
        a_s = self._attend(q_s, k_all, v_all, causal_offset=P)  # [K, h, S, d/h]
        a_s = a_s.transpose(1, 2).reshape(K * S, self.width)
        a_s = a_s.index_select(0, index)  # [N, d] (backward: index_add, no sort)
        if prefix is None:
            return a_s
        a_p = self._attend(*prefix, causal_offset=0).transpose(1, 2).reshape(P, self.width)
        return torch.cat([a_p, a_s])  # [P + N, d]

    def _last_layer(self, tokens: torch.Tensor, eot, index, layout: dict, K: int, S: int, P: int) -> torch.Tensor:
        """The last block for the K EOT tokens only (attention, MLP; the only outputs pooled):
        tokens [P + N, d] -> [K, d]."""
        blk = self.blocks[-1]
        q_s, k_all, v_all, _ = self._split_qkv(blk.qkv(tokens), index, K, S, P)
        q_eot = q_s[layout["rows"], :, eot][:, :, None]  # [K, h, 1, d/h]
        a = F.scaled_dot_product_attention(q_eot, k_all, v_all, attn_mask=layout["eot_mask"])  # [K, h, 1, d/h]
        return blk.finish(tokens[P:].index_select(0, layout["eot_token"]), a.reshape(K, self.width))  # [K, d]

    def _pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """The K EOT tokens [K, d] -> ln_final, text projection -> features [K, e] (float32; a
        caller's autocast casts the projection, as it does open_clip's)."""
        out = F.layer_norm(tokens.float(), (self.width,), self.lnf_w, self.lnf_b, self.lnf_eps)  # [K, d]
        if self.proj_w is not None:
            out = out @ self.proj_w.float()
        return out + self.proj_b if self.proj_b is not None else out


def _vision_tower_is_standard(visual: nn.Module) -> bool:
    """Whether ``visual`` is open_clip's plain ViT (patch conv, CLS token, standard blocks)."""
    conv = getattr(visual, "conv1", None)
    return (
        isinstance(conv, nn.Conv2d)
        and conv.bias is None
        and tuple(conv.stride) == tuple(conv.kernel_size)
        and tuple(conv.padding) == (0, 0)
        and isinstance(getattr(visual, "class_embedding", None), torch.Tensor)
        and isinstance(getattr(visual, "positional_embedding", None), torch.Tensor)
        and getattr(visual, "attn_pool", None) is None
        and getattr(visual, "pool_type", None) in ("tok", "avg")
        and not getattr(visual, "output_tokens", False)
        and isinstance(getattr(visual, "ln_post", None), nn.LayerNorm)
        and isinstance(getattr(visual, "ln_pre", None), (nn.LayerNorm, nn.Identity))
        and all(_is_standard_block(b) for b in getattr(getattr(visual, "transformer", None), "resblocks", [None]))
    )


def fast_image_encoder(model: nn.Module, precision: str = "fp32") -> "ImageEncoder | None":
    """An :class:`ImageEncoder` for open_clip's ViT image towers, None for any other (ResNet, timm)."""
    visual = getattr(model, "visual", None)
    return ImageEncoder(visual, precision) if visual is not None and _vision_tower_is_standard(visual) else None


class ImageEncoder(nn.Module):
    """The frozen ViT image tower of an open_clip model: images [B, 3, S, S] -> features [B, e].

    Computes what ``model.encode_image`` computes (eval mode: no patch dropout): patch
    embedding (the stride-p convolution, as a matmul over flattened patches), CLS token,
    positional embedding, ``ln_pre``, the blocks, ``ln_post``, pooling ('tok' or 'avg'),
    ``proj``. Matmul weights in ``precision`` (cast once), LayerNorms and residual in float32.

    Args:
        visual: ``model.visual`` (check with :func:`fast_image_encoder`).
        precision: "fp32", "bf16" or "fp16".
    """

    def __init__(self, visual: nn.Module, precision: str = "fp32"):
        super().__init__()
        if not _vision_tower_is_standard(visual):
            raise ValueError("ImageEncoder supports open_clip's standard ViT image tower only")
        dtype = DTYPES[precision]
        self.precision = precision
        conv = visual.conv1
        self.patch = tuple(conv.kernel_size)
        self.width = conv.out_channels
        self.register_buffer("patch_w", _frozen(conv.weight, dtype).reshape(self.width, -1), persistent=False)
        self.register_buffer("class_embedding", _frozen(visual.class_embedding), persistent=False)
        self.register_buffer("positional_embedding", _frozen(visual.positional_embedding), persistent=False)
        ln_pre = visual.ln_pre if isinstance(visual.ln_pre, nn.LayerNorm) else None
        self.pre_eps = ln_pre.eps if ln_pre is not None else 0.0
        self.register_buffer("pre_w", _frozen(ln_pre.weight) if ln_pre is not None else None, persistent=False)
        self.register_buffer("pre_b", _frozen(ln_pre.bias) if ln_pre is not None else None, persistent=False)
        self.has_ln_pre = ln_pre is not None
        self.blocks = nn.ModuleList(_Block(b, dtype) for b in visual.transformer.resblocks)
        self.heads = self.blocks[0].heads
        self.pool_type = visual.pool_type
        self.final_ln_after_pool = bool(getattr(visual, "final_ln_after_pool", False))
        self.post_eps = visual.ln_post.eps
        self.register_buffer("post_w", _frozen(visual.ln_post.weight), persistent=False)
        self.register_buffer("post_b", _frozen(visual.ln_post.bias), persistent=False)
        self.register_buffer("proj", _frozen(visual.proj) if visual.proj is not None else None, persistent=False)

    def _layer(self, blk, tokens: torch.Tensor, B: int, n: int) -> torch.Tensor:
        """One block over all tokens: [B * n, w] -> [B * n, w]."""
        w, h = self.width, self.heads
        qkv = blk.qkv(tokens).reshape(B, n, 3, w)  # [B, n, 3, w]
        q, k, v = (_heads(qkv[:, :, j], B, n, h) for j in range(3))  # [B, h, n, w/h]
        return blk.finish(tokens, F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B * n, w))

    def compile_layers(self, **options) -> None:
        """``torch.compile`` the per-block work (one compiled region shared by the blocks, so it
        compiles once per input shape).

        Args:
            **options: passed to ``torch.compile``; ``dynamic=False`` by default.
        """
        options.setdefault("dynamic", False)
        self._layer = torch.compile(ImageEncoder._layer.__get__(self), **options)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images [B, 3, H, W] -> image features [B, e] (not normalised; float32, or under
        a caller's autocast its dtype, as open_clip's ``encode_image`` there)."""
        B, C, H, W = images.shape
        ph, pw = self.patch
        gh, gw = H // ph, W // pw  # the convolution ignores a remainder, so do we
        w, h = self.width, self.heads
        dtype = self.patch_w.dtype
        x = images[:, :, : gh * ph, : gw * pw].to(dtype)
        x = x.reshape(B, C, gh, ph, gw, pw).permute(0, 2, 4, 1, 3, 5).reshape(B, gh * gw, C * ph * pw)  # patches
        x = F.linear(x, self.patch_w).float()  # [B, N, w]: the stride-p convolution
        x = torch.cat([self.class_embedding.float().expand(B, 1, w), x], dim=1)  # [B, N+1, w]
        x = x + self.positional_embedding.float()
        if self.has_ln_pre:
            x = F.layer_norm(x, (w,), self.pre_w, self.pre_b, self.pre_eps)
        n = x.shape[1]
        tokens = x.reshape(B * n, w)  # [B*(N+1), w]
        cls_only = self.pool_type == "tok"
        last = len(self.blocks) - 1
        for i, blk in enumerate(self.blocks):
            if i < last or not cls_only:
                tokens = self._layer(blk, tokens, B, n)
                continue
            # the last block when only the CLS output is pooled: attention, MLP for CLS alone
            qkv = blk.qkv(tokens).reshape(B, n, 3, w)  # [B, N+1, 3, w]
            q, k, v = (_heads(qkv[:, :, j], B, n, h) for j in range(3))  # [B, h, N+1, w/h]
            a = F.scaled_dot_product_attention(q[:, :, :1], k, v)  # [B, h, 1, w/h]
            tokens = blk.finish(tokens.reshape(B, n, w)[:, 0], a.reshape(B, w))  # [B, w]
        if cls_only:
            pooled = F.layer_norm(tokens.float(), (w,), self.post_w, self.post_b, self.post_eps)  # [B, w]
        else:  # 'avg' over the patch tokens; ln_post before pooling unless final_ln_after_pool
            x = tokens.float().reshape(B, n, w)
            if self.final_ln_after_pool:
                pooled = F.layer_norm(x[:, 1:].mean(dim=1), (w,), self.post_w, self.post_b, self.post_eps)
            else:
                pooled = F.layer_norm(x, (w,), self.post_w, self.post_b, self.post_eps)[:, 1:].mean(dim=1)
        return pooled @ self.proj.float() if self.proj is not None else pooled
