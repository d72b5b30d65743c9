"""Batches of shared-prefix rows (pipeline/data/shared_prefix.py): a 4D attention mask and position ids per row.

TRL's SFTTrainer collator knows causal rows and padding-free packing (independent sequences), not a tree, so
shared-prefix rows come with this collator. It reads what TRL's dataset preparation leaves (`input_ids`,
`labels` built from `completion_mask`) plus the tree (`prefix_length`, `segment_lengths`) and returns

- `input_ids`, `labels` (padded with -100), `position_ids` (the prefix 0..p-1, each segment p, p+1, ...);
- the tree itself, in one of three forms (`mask_format`):
  - `tree` (sdpa): the kwarg `shared_prefix_tree`, one (prefix_length, segment_lengths, length) per row, read by
    pipeline/training/shared_prefix_attention.py, which runs sdpa's causal kernel per branch: no dense mask, attention
    costs what separate rows cost;
  - `bool` / `additive`: `attention_mask` of shape (batch, 1, n, n): query i may read key j when j <= i and j
    is in the prefix or in i's own segment; padding reads only itself (a row with nothing to read gives NaN)
    and has label -100.

transformers (5.x, `masking_utils._preprocess_mask_arguments`) passes a 4D mask to the attention function
as it is, so what it holds must suit that function: a boolean mask (True = read) for plain `sdpa`, an
additive float mask (0 or the dtype's minimum) for `eager`, which is what the eager recipes get. The dense
masks are the reference the tree attention is tested against. With every other implementation SFT falls back to
one row per segment, with a warning (`shared_prefix_fallback`): flash-attention kernels take no such mask (their
varlen path packs independent sequences from 2D masks or position ids), and `flex_attention` cannot train on a CPU
(torch 2.13: no backward on CPU; its forward crashed here), so it is unverified; it would take the tree as a
BlockMask (README).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from pipeline.training.shared_prefix_attention import NAME, TREE

MaskFormat = Literal["tree", "bool", "additive"]
# What each attention implementation reads: sdpa rows go to pipeline/training/shared_prefix_attention.py (no dense mask)
MASK_FORMATS: dict[str, MaskFormat] = {"sdpa": "tree", "eager": "additive"}
LOADED_AS = {"sdpa": NAME, "eager": "eager"}  # the attn_implementation the model is loaded with
SHARED_PREFIX_COLUMNS = ("prefix_length", "segment_lengths")  # dataset columns the collator reads besides TRL's
NUM_TOKENS = "shared_prefix_num_tokens"  # batch key: real (unpadded) tokens, for TRL's num_tokens metric


class SharedPrefixError(ValueError):
    """Shared-prefix rows asked for where they cannot be trained; the message says what to change."""


def mask_format(attn_implementation: str | None) -> MaskFormat:
    """The 4D mask the model's attention implementation reads, or a SharedPrefixError that names the fix."""
    implementation = attn_implementation or "sdpa"
    if implementation not in MASK_FORMATS:
        raise SharedPrefixError(
            f"shared_prefix needs an attention implementation that takes a 4D mask ({sorted(MASK_FORMATS)}); "
            f"the model uses {implementation!r} (flash-attention's varlen kernels pack independent sequences "
            "only, not a shared prefix)"
        )
    return MASK_FORMATS[implementation]


def shared_prefix_fallback(attn_implementation: str | None) -> str | None:
    """Why shared-prefix rows cannot train with this attention (SFT then trains one row per segment, the same
    gradient for more tokens), or None when they can. A GPU recipe on flash attention keeps working."""
    try:
        mask_format(attn_implementation)
    except SharedPrefixError as error:
        return str(error)
    return None


def loaded_attention(attn_implementation: str | None) -> str:
    """The attn_implementation a model training on shared-prefix rows is loaded with (sdpa: the tree attention)."""
    mask_format(attn_implementation)
    return LOADED_AS[attn_implementation or "sdpa"]


def tree_layout(length: int, prefix_length: int, segment_lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per token of a row of `length` tokens: its segment (0 = the prefix, 1.. = segments) and its position.
    Lengths are clipped to `length`, so a truncated ordinary row (no segments) stays an ordinary row."""
    segment = torch.zeros(length, dtype=torch.long)
    position = torch.arange(length)
    start = min(prefix_length, length)
    for k, size in enumerate(segment_lengths, start=1):
        end = min(start + size, length)
        segment[start:end] = k
        position[start:end] = torch.arange(prefix_length, prefix_length + end - start)
        start = end
    if start < length:
        raise ValueError(f"the tree covers {start} of the row's {length} tokens")
    return segment, position


def tree_mask(segment: torch.Tensor) -> torch.Tensor:
    """(n, n) booleans: query i reads key j when j <= i and j is in the prefix or in i's segment; -1 = padding,
    which reads only itself."""
    n = segment.numel()
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    same_branch = (segment[None, :] == 0) | (segment[None, :] == segment[:, None])
    real = segment >= 0
    allowed = causal & same_branch & real[:, None] & real[None, :]
    return allowed | torch.eye(n, dtype=torch.bool)


@dataclass
class SharedPrefixCollator:
    """Pads shared-prefix rows and builds their 4D masks and position ids (see the module doc)."""

    pad_token_id: int
    mask_format: MaskFormat = "tree"
    mask_dtype: torch.dtype = torch.float32  # additive masks: the dtype of the attention scores
    pad_to_multiple_of: int | None = None

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        length = max(len(e["input_ids"]) for e in examples)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = len(examples)
        input_ids = torch.full((batch, length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((batch, length), -100, dtype=torch.long)
        position_ids = torch.zeros((batch, length), dtype=torch.long)
        dense = self.mask_format != "tree"
        allowed = torch.zeros((batch, 1, length, length) if dense else (0,), dtype=torch.bool)
        tree = []
        for b, example in enumerate(examples):
            ids = example["input_ids"]
            n = len(ids)
            segment, position = tree_layout(n, int(example["prefix_length"]), list(example["segment_lengths"]))
            padded = torch.full((length,), -1, dtype=torch.long)
            padded[:n] = segment
            input_ids[b, :n] = torch.as_tensor(ids)
            labels[b, :n] = torch.as_tensor(example["labels"])
            position_ids[b, :n] = position
            sizes = torch.bincount(segment, minlength=1).tolist()  # the prefix, then each segment, clipped to n
            tree.append((sizes[0], sizes[1:], n))
            if dense:
                allowed[b, 0] = tree_mask(padded)
        output = {
            "input_ids": input_ids,
            "labels": labels,
            "position_ids": position_ids,
            NUM_TOKENS: torch.tensor(sum(len(e["input_ids"]) for e in examples)),
        }
        if self.mask_format == "tree":
            output[TREE] = tree
        elif self.mask_format == "bool":
            output["attention_mask"] = allowed
        else:
            output["attention_mask"] = torch.zeros(allowed.shape, dtype=self.mask_dtype)
            output["attention_mask"].masked_fill_(~allowed, torch.finfo(self.mask_dtype).min)
        return output
