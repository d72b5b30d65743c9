"""Shared-prefix rows: the segments of one episode packed into one training row (an attention tree).

Why. Every context edit starts a segment (pipeline/data/segments.py), yet all segments of an episode begin with
the same tokens: the system prompt, the tool schemas and the opening of the task message (on the SmolLM2 demo
~850 of a ~1,700-token row). Training the segments as separate rows computes that prefix once per segment.
A shared-prefix row holds it once and then each segment's remaining tokens:

    [ prefix (p tokens) | rest of segment 1 | rest of segment 2 | ... ]

with an attention mask that lets every segment's tokens see the prefix and, causally, their own tokens only,
and position ids that continue from the prefix in each segment (the rest of segment k sits at positions
p, p+1, ... as in its own row). A causal model then computes, for every token of segment k, exactly the
hidden states of segment k's own row, so the loss on each trained token is the same and so is the loss TRL
trains (a sum over trained tokens divided by their count, `num_items_in_batch`), for fewer tokens.

The contract (a packed row, as `pack_episode` returns it and pipeline/training/shared_prefix_collator.py reads it):
- `input_ids`, `completion_mask`: the prefix, then each segment's tokens after it; the mask is each
  segment's own mask on its tokens (the prefix never holds a trained token).
- `prefix_length` (int) and `segment_lengths` (list[int]): the tree. A row with no segments is an ordinary
  causal row (an episode of one segment, or a segment too long to share a row): TRL may truncate it like
  any row. A row with segments always fits `max_length`, so truncation never cuts one.

The prefix length p is the longest common token prefix of the rows, but never reaches a row's first trained
token: the token right after the prefix starts each segment's rest, and in the packed row its logit comes
from the previous segment's last token, so it must be a token that is not trained (then its label is -100
and nothing reads that logit). p is at least the system prompt and tool schemas in practice.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class PackedRow:
    """One shared-prefix row (see the module doc): tokens, mask, the tree, and the episode it comes from."""

    episode_id: str
    input_ids: list[int] = field(repr=False)
    completion_mask: list[int] = field(repr=False)
    prefix_length: int
    segment_lengths: list[int]

    def to_row(self) -> dict[str, Any]:
        return {
            "input_ids": self.input_ids,
            "completion_mask": self.completion_mask,
            "prefix_length": self.prefix_length,
            "segment_lengths": self.segment_lengths,
            "episode_id": self.episode_id,
        }


def common_prefix_length(rows: Sequence[Sequence[int]]) -> int:
    """The length of the longest token prefix all rows share."""
    if not rows:
        return 0
    shortest = min(len(r) for r in rows)
    first = rows[0]
    for position in range(shortest):
        token = first[position]
        if any(r[position] != token for r in rows[1:]):
            return position
    return shortest


def shared_prefix_length(ids: Sequence[Sequence[int]], masks: Sequence[Sequence[int]]) -> int:
    """The prefix the rows can share: their common prefix, stopped before any row's first trained token
    (the first token of each segment's rest must not be trained; see the module doc)."""
    first_trained = min(list(mask).index(1) for mask in masks)
    return max(0, min(common_prefix_length(ids), first_trained - 1))


def _packed_length(ids: list[list[int]], masks: list[list[int]]) -> int:
    p = shared_prefix_length(ids, masks)
    return p + sum(len(r) - p for r in ids)


def pack_episode(
    episode_id: str, rows: Iterable[tuple[list[int], list[int]]], max_length: int | None = None
) -> list[PackedRow]:
    """The (input_ids, completion_mask) segment rows of one episode as shared-prefix rows, in order. Rows are
    grouped greedily in their order while the packed row fits `max_length`; a group of one is an ordinary
    row. Rows with no trained token are dropped (they train nothing, and TRL drops them too)."""
    kept = [(list(ids), list(mask)) for ids, mask in rows if 1 in mask]
    for ids, mask in kept:
        if len(ids) != len(mask):
            raise ValueError(f"episode {episode_id!r}: a row has {len(ids)} ids and {len(mask)} mask entries")
    groups: list[list[tuple[list[int], list[int]]]] = []
    for row in kept:
        if groups:
            candidate = [*groups[-1], row]
            length = _packed_length([r[0] for r in candidate], [r[1] for r in candidate])
            if max_length is None or length <= max_length:
                groups[-1] = candidate
                continue
        groups.append([row])
    return [_pack(episode_id, group) for group in groups]


def _pack(episode_id: str, group: list[tuple[list[int], list[int]]]) -> PackedRow:
    if len(group) == 1:
        ids, mask = group[0]
        return PackedRow(episode_id, ids, mask, len(ids), [])
    ids, masks = [r[0] for r in group], [r[1] for r in group]
    p = shared_prefix_length(ids, masks)
    input_ids, completion_mask = list(ids[0][:p]), [0] * p
    for row_ids, row_mask in group:
        input_ids += row_ids[p:]
        # A row's first token is never predicted in its own row (p == 0: nothing shared), so never trained here
        completion_mask += [0, *row_mask[1:]] if p == 0 else row_mask[p:]
    return PackedRow(episode_id, input_ids, completion_mask, p, [len(r) - p for r in ids])


def pack_rows(rows: Iterable[dict[str, Any]], max_length: int | None = None) -> list[PackedRow]:
    """Segment rows (dicts with input_ids, completion_mask, episode_id; any order) packed per episode. Episodes
    keep the order of their first row, and each episode's rows their order."""
    episodes: dict[str, list[tuple[list[int], list[int]]]] = {}
    for row in rows:
        episodes.setdefault(str(row["episode_id"]), []).append((row["input_ids"], row["completion_mask"]))
    return [packed for episode, rows_ in episodes.items() for packed in pack_episode(episode, rows_, max_length)]


def shared_prefix_dataset(dataset: Any, max_length: int | None) -> tuple[Any, dict[str, Any]]:
    """A segment-row `datasets.Dataset` (with `episode_id`) as shared-prefix rows, and figures for report.json:
    rows and tokens before and after, and how many rows share a prefix."""
    from datasets import Dataset

    rows = [
        r for r in dataset.select_columns(["input_ids", "completion_mask", "episode_id"]) if 1 in r["completion_mask"]
    ]
    packed = pack_rows(rows, max_length)
    segment_tokens = sum(len(r["input_ids"]) for r in rows)
    tokens = sum(len(r.input_ids) for r in packed)
    sharing = [r for r in packed if r.segment_lengths]
    figures = {
        "segment_rows": len(rows),
        "segment_tokens": segment_tokens,
        "rows": len(packed),
        "tokens": tokens,
        "token_ratio": tokens / segment_tokens if segment_tokens else 0.0,
        "rows_sharing_a_prefix": len(sharing),
        "mean_prefix_tokens": sum(r.prefix_length for r in sharing) / len(sharing) if sharing else 0.0,
    }
    columns = ("input_ids", "completion_mask", "prefix_length", "segment_lengths")
    return Dataset.from_list([{k: r.to_row()[k] for k in columns} for r in packed]), figures
