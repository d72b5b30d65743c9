"""Attention over shared-prefix rows without a dense mask: `attn_implementation="sdpa_shared_prefix"`.

Why. A dense (n, n) mask makes sdpa on a CPU compute every query against every key (no causal block
skipping, and its masked kernels are slower), so a packed row of n = p + sum(l_k) tokens costs more
attention than its segments as separate rows (sum of (p + l_k)^2 / 2). This function computes the tree
exactly, each piece once: the prefix with causal sdpa over the prefix alone (p^2 / 2), and each segment's
queries against the prefix keys (no mask: p * l_k) and against its own keys (causal: l_k^2 / 2), the two
merged by their log-sum-exp as flash attention merges key blocks (`SegmentAttention`). The backward runs
the flash backward kernel on each key block with the merged output and log-sum-exp, which is the exact
gradient of attention over [prefix; segment] (as ring attention computes it). So attention costs
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


class SegmentAttention(torch.autograd.Function):
    """A segment's queries over [prefix keys ; its own keys, causally], as two flash calls merged by log-sum-exp.

    Inputs are (1, heads, length, dim) with the key/value heads already repeated to the query heads."""

    @staticmethod
    def forward(ctx, q, k_prefix, v_prefix, k_own, v_own, scale: float) -> torch.Tensor:
        out_prefix, lse_prefix = _FLASH(q, k_prefix, v_prefix, 0.0, False, scale=scale)
        out_own, lse_own = _FLASH(q, k_own, v_own, 0.0, True, scale=scale)
        lse = torch.logaddexp(lse_prefix, lse_own)
        out = torch.exp(lse_prefix - lse).unsqueeze(-1) * out_prefix.float()
        out = (out + torch.exp(lse_own - lse).unsqueeze(-1) * out_own.float()).to(q.dtype)
        ctx.save_for_backward(q, k_prefix, v_prefix, k_own, v_own, out, lse)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k_prefix, v_prefix, k_own, v_own, out, lse = ctx.saved_tensors
        grad = grad.contiguous()
        dq_prefix, dk_prefix, dv_prefix = _FLASH_BACKWARD(grad, q, k_prefix, v_prefix, out, lse, 0.0, False,
                                                          scale=ctx.scale)  # fmt: skip
        dq_own, dk_own, dv_own = _FLASH_BACKWARD(grad, q, k_own, v_own, out, lse, 0.0, True, scale=ctx.scale)
        return dq_prefix + dq_own, dk_prefix, dv_prefix, dk_own, dv_own, None


def _merged(module: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prefix: int, segments: list[int],
            scaling: float | None) -> list[torch.Tensor]:  # fmt: skip
    """The tree's outputs, (1, n, heads, dim) pieces: the prefix once, then each segment via SegmentAttention."""
    # Under autocast the projections and rotary embeddings can leave q, k and v in different dtypes; sdpa is
    # autocast to its lower precision, so the flash calls take that dtype too (as sdpa would)
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else q.dtype
    q, k, v = (t.to(dtype) for t in (q, k, v))
    groups = getattr(module, "num_key_value_groups", 1)
    k, v = (repeat_kv(t, groups) if groups > 1 else t for t in (k, v))
    scale = scaling if scaling is not None else 1.0 / math.sqrt(q.shape[-1])
    pieces = [_causal(module, q[:, :, :prefix], k[:, :, :prefix], v[:, :, :prefix], scaling=scaling)]
    start = prefix
    for size in segments:
        end = start + size
        q_own, k_own, v_own = (t[:, :, start:end] for t in (q, k, v))
        out = SegmentAttention.apply(q_own, k[:, :, :prefix], v[:, :, :prefix], k_own, v_own, scale)
        pieces.append(out.transpose(1, 2))
        start = end
    return pieces


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
    n = query.shape[2]
    rows = []
    for b, (prefix, segments, length) in enumerate(tree):
        q, k, v = query[b : b + 1], key[b : b + 1], value[b : b + 1]
        if not segments:  # an ordinary row
            pieces = [_causal(module, q[:, :, :length], k[:, :, :length], v[:, :, :length], **options)]
        elif merge and prefix > 0:
            pieces = _merged(module, q, k, v, prefix, segments, scaling)
        else:
            pieces = _branches(module, q, k, v, prefix, segments, options)
        if length < n:
            pieces.append(pieces[0].new_zeros(1, n - length, *pieces[0].shape[2:]))
        rows.append(torch.cat(pieces, dim=1))
    return torch.cat(rows, dim=0), None


AttentionInterface.register(NAME, shared_prefix_attention)
