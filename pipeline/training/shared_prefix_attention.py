"""Attention over shared-prefix rows without a dense mask: `attn_implementation="sdpa_shared_prefix"`.

Why. A dense (n, n) mask makes sdpa on a CPU compute every query against every key (no causal block
skipping, and its masked kernels are slower), so a packed row of n = p + sum(l_k) tokens costs more
attention than its segments as separate rows (sum of (p + l_k)^2 / 2). This function computes the tree
exactly with sdpa's causal kernel instead: for segment k it runs causal sdpa on the queries, keys and values
of [prefix ; segment k] (as in segment k's own row, so each segment's query reads the prefix and its own
earlier tokens), keeps the prefix outputs of the first run and the segment outputs of every run. Attention
then costs what the separate rows cost, while everything else in the model (projections, MLPs, norms, the
LM head) runs on each prefix token once.

The tree reaches the attention layers as the forward kwarg `shared_prefix_tree` (one `(prefix_length,
segment_lengths, length)` per row; transformers passes model kwargs down to the attention function), from
pipeline/training/shared_prefix_collator.py. The name is registered in transformers' AttentionInterface but not in
its mask interface, so transformers builds no mask for it; without the kwarg (generation, a plain batch)
it is causal sdpa over unpadded rows. It is not saved in the model's config (transformers drops
`_attn_implementation_internal` on save).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

NAME = "sdpa_shared_prefix"
TREE = "shared_prefix_tree"  # forward kwarg: per row (prefix_length, segment_lengths, length)

Tree = list[tuple[int, list[int], int]]


def _causal(module: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """Causal sdpa on (1, heads, n, dim) slices; returns (1, n, heads, dim) as transformers' attention does."""
    return sdpa_attention_forward(module, q, k, v, None, is_causal=True, **kwargs)[0]


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
    n = query.shape[2]
    rows = []
    for b, (prefix, segments, length) in enumerate(tree):
        q, k, v = query[b : b + 1], key[b : b + 1], value[b : b + 1]
        pieces = []
        if not segments:  # an ordinary row
            pieces.append(_causal(module, q[:, :, :length], k[:, :, :length], v[:, :, :length], **options))
        start = prefix
        for i, size in enumerate(segments):
            end = start + size
            branch = [torch.cat([t[:, :, :prefix], t[:, :, start:end]], dim=2) for t in (q, k, v)]
            out = _causal(module, *branch, **options)
            pieces += [out[:, :prefix], out[:, prefix:]] if i == 0 else [out[:, prefix:]]
            start = end
        if length < n:
            pieces.append(pieces[0].new_zeros(1, n - length, *pieces[0].shape[2:]))
        rows.append(torch.cat(pieces, dim=1))
    return torch.cat(rows, dim=0), None


AttentionInterface.register(NAME, shared_prefix_attention)
