"""Attention over shared-prefix rows without a dense mask: `attn_implementation="sdpa_shared_prefix"`.

Why. A dense (n, n) mask makes sdpa on a CPU compute every query against every key (no causal block
skipping, and its masked kernels are slower), so a packed row of n = p + sum(l_k) tokens costs more
attention than its segments as separate rows (sum of (p + l_k)^2 / 2). This function computes the tree
exactly, each piece once: the prefix with the causal kernel over the prefix alone (p^2 / 2), and each segment's
queries against the prefix keys (no mask: p * l_k) and against its own keys (causal: l_k^2 / 2), the two
merged by their log-sum-exp as flash attention merges key blocks (`TreeAttention`, one autograd node per
row). The backward runs the flash backward kernel on each key block with the merged output and log-sum-exp,
which is the exact gradient of attention over [prefix; segment] (as ring attention computes it). So attention costs
p^2 / 2 + sum(p * l_k + l_k^2 / 2), less than the separate rows' sum((p + l_k)^2 / 2), and everything else
in the model (projections, MLPs, norms, the LM head) runs on each prefix token once. It needs the CPU flash
kernel's log-sum-exp (`aten._scaled_dot_product_flash_attention_for_cpu`); elsewhere (a GPU, dropout) each
segment runs causal sdpa over [prefix ; segment] instead, which recomputes the prefix's queries per segment.

The tree reaches the attention layers as the forward kwarg `shared_prefix_tree` (one `(prefix_length,
segment_lengths, length)` per row; transformers passes model kwargs down to the attention function), from
pipeline/training/shared_prefix_collator.py. The name is registered in transformers' AttentionInterface but not in
its mask interface, so transformers builds no mask for it; without the kwarg (generation, a plain batch)
it is causal sdpa over unpadded rows. It is not saved in the model's config (transformers drops
`_attn_implementation_internal` on save).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

NAME = "sdpa_shared_prefix"
TREE = "shared_prefix_tree"  # forward kwarg: per row (prefix_length, segment_lengths, length)

Tree = list[tuple[int, list[int], int]]


def _causal(module: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """Causal sdpa on (1, heads, n, dim) slices; returns (1, n, heads, dim) as transformers' attention does."""
    return sdpa_attention_forward(module, q, k, v, None, is_causal=True, **kwargs)[0]


_FLASH = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
_FLASH_BACKWARD = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)


def _empty_but_padding(like: torch.Tensor, length: int) -> torch.Tensor:
    """An uninitialised tensor shaped like `like` (heads, positions, ...) whose positions from `length` are zero."""
    out = torch.empty_like(like)
    out[:, :, length:] = 0
    return out


class TreeAttention(torch.autograd.Function):
    """One row's tree as a single autograd node: the prefix causally, each segment's queries over [prefix keys ;
    its own keys, causally] as two flash calls merged by log-sum-exp. Inputs (1, heads, n, dim) with the key/value
    heads already repeated; the output (1, heads, n, dim) is zeros after `length`. One node, not a slice and a
    concatenation per piece: autograd would zero-fill a full-size gradient for every slice (measured: fill_ and
    copy_ took a fifth of a SmolLM2 shared-prefix step)."""

    @staticmethod
    def forward(ctx, q, k, v, prefix: int, segments: tuple[int, ...], length: int, scale: float) -> torch.Tensor:
        out = _empty_but_padding(q, length)
        lse = _empty_but_padding(q.new_empty(q.shape[:3], dtype=torch.float32), length)
        out[:, :, :prefix], lse[:, :, :prefix] = _FLASH(q[:, :, :prefix], k[:, :, :prefix], v[:, :, :prefix], 0.0,
                                                        True, scale=scale)  # fmt: skip
        start = prefix
        for size in segments:
            end = start + size
            q_own, k_own, v_own = (t[:, :, start:end] for t in (q, k, v))
            out_prefix, lse_prefix = _FLASH(q_own, k[:, :, :prefix], v[:, :, :prefix], 0.0, False, scale=scale)
            out_own, lse_own = _FLASH(q_own, k_own, v_own, 0.0, True, scale=scale)
            merged = torch.logaddexp(lse_prefix, lse_own)
            piece = torch.exp(lse_prefix - merged).unsqueeze(-1) * out_prefix.float()
            out[:, :, start:end] = piece + torch.exp(lse_own - merged).unsqueeze(-1) * out_own.float()
            lse[:, :, start:end] = merged
            start = end
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.tree, ctx.scale = (prefix, segments, length), scale
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, out, lse = ctx.saved_tensors
        (prefix, segments, length), scale = ctx.tree, ctx.scale
        grad = grad.contiguous()
        dq, dk, dv = (_empty_but_padding(t, length) for t in (q, k, v))  # every other position is written below
        head = slice(0, prefix)
        pieces = (t[:, :, head] for t in (grad, q, k, v, out, lse))
        dq[:, :, head], dk[:, :, head], dv[:, :, head] = _FLASH_BACKWARD(*pieces, 0.0, True, scale=scale)
        start = prefix
        for size in segments:
            own = slice(start, start + size)
            g, q_own, o, l_own = grad[:, :, own], q[:, :, own], out[:, :, own], lse[:, :, own]
            dq_prefix, dk_prefix, dv_prefix = _FLASH_BACKWARD(g, q_own, k[:, :, head], v[:, :, head], o, l_own, 0.0,
                                                              False, scale=scale)  # fmt: skip
            dq_own, dk[:, :, own], dv[:, :, own] = _FLASH_BACKWARD(g, q_own, k[:, :, own], v[:, :, own], o, l_own,
                                                                   0.0, True, scale=scale)  # fmt: skip
            dq[:, :, own] = dq_prefix + dq_own
            dk[:, :, head] += dk_prefix
            dv[:, :, head] += dv_prefix
            start += size
        return dq, dk, dv, None, None, None, None


def _merged(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, groups: int, tree: tuple[int, list[int], int],
            scaling: float | None) -> torch.Tensor:  # fmt: skip
    """The tree's output as (1, n, heads, dim), through TreeAttention."""
    # Under autocast the projections and rotary embeddings can leave q, k and v in different dtypes; sdpa is
    # autocast to its lower precision, so the flash calls take that dtype too (as sdpa would)
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else q.dtype
    q, k, v = (t.to(dtype) for t in (q, k, v))
    k, v = (repeat_kv(t, groups) if groups > 1 else t for t in (k, v))
    scale = scaling if scaling is not None else 1.0 / math.sqrt(q.shape[-1])
    prefix, segments, length = tree
    return TreeAttention.apply(q, k, v, prefix, tuple(segments), length, scale).transpose(1, 2)


def _branches(module: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prefix: int, segments: list[int],
              options: dict[str, Any]) -> list[torch.Tensor]:  # fmt: skip
    """Without the flash kernel's log-sum-exp: causal sdpa over [prefix ; segment] per segment (the prefix's
    outputs kept from the first), the same attention as the segments' separate rows."""
    pieces, start = [], prefix
    for i, size in enumerate(segments):
        end = start + size
        branch = [torch.cat([t[:, :, :prefix], t[:, :, start:end]], dim=2) for t in (q, k, v)]
        out = _causal(module, *branch, **options)
        pieces += [out[:, :prefix], out[:, prefix:]] if i == 0 else [out[:, prefix:]]
        start = end
    return pieces


def shared_prefix_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """The attention of a batch of shared-prefix rows (see the module doc); padding outputs are zeros."""
    tree: Tree | None = kwargs.pop(TREE, None)
    kwargs.pop("is_causal", None)
    if tree is None:
        if attention_mask is not None:
            raise ValueError(f"{NAME}: a padding mask without {TREE}; use the shared-prefix collator or sdpa")
        return sdpa_attention_forward(module, query, key, value, None, dropout, scaling, is_causal=True, **kwargs)
    options = {"dropout": dropout, "scaling": scaling, **kwargs}
    merge = _FLASH is not None and query.device.type == "cpu" and (dropout == 0 or not module.training)
    if len(tree) == 1:  # the CPU recipes' batch of one: no slice or concatenation (each would copy under autograd)
        return _row(module, query, key, value, tree[0], merge, options), None
    rows = [_row(module, query[b : b + 1], key[b : b + 1], value[b : b + 1], row, merge, options)
            for b, row in enumerate(tree)]  # fmt: skip
    return torch.cat(rows, dim=0), None


def _row(module: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, row: tuple[int, list[int], int],
         merge: bool, options: dict[str, Any]) -> torch.Tensor:  # fmt: skip
    """One row's attention output (1, n, heads, dim), zeros after its length."""
    prefix, segments, length = row
    if segments and merge and prefix > 0:  # TreeAttention writes the whole row, padding included
        return _merged(q, k, v, getattr(module, "num_key_value_groups", 1), row, options["scaling"])
    if not segments:  # an ordinary row
        pieces = [_causal(module, q[:, :, :length], k[:, :, :length], v[:, :, :length], **options)]
    else:
        pieces = _branches(module, q, k, v, prefix, segments, options)
    n = q.shape[2]
    if length < n:
        pieces.append(pieces[0].new_zeros(1, n - length, *pieces[0].shape[2:]))
    return torch.cat(pieces, dim=1) if len(pieces) > 1 else pieces[0]


AttentionInterface.register(NAME, shared_prefix_attention)
