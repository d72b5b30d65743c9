"""Snapshot sampling for GRPO (SPEC 6): which segments of an episode are trained, and with what weight.

An episode is cut into segments by `pipeline/data/segments.py` (the same cut SFT curation uses). Training
every segment of every episode would let long episodes (many edits, many segments) dominate the
update, so at most `cap` segments are trained per episode, picked in this order:

1. the last segment (it holds the answer, or the turn that ended the episode);
2. segments adjacent to context edits: the one that ends with an edit and the one that starts after
   it, since managing the context is the behaviour being trained (random order among them if they do
   not all fit);
3. the rest at random.

Each picked segment gets the weight `1 / k` (k = segments picked from its episode), so every episode
carries the same total weight whatever its length. The choice is a pure function of the segment
flags and the seed.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Pick:
    """One trained segment: its index in the episode's segment list, why it was picked, its weight."""

    index: int
    reason: str  # last | edit | random
    weight: float


def episode_rng(seed: int, *keys: object) -> random.Random:
    """A random stream that depends only on the seed and the keys (e.g. step and episode id)."""
    return random.Random(zlib.crc32(":".join(map(str, (seed, *keys))).encode()))


def sample_segments(
    ends_with_edit: Sequence[bool],
    starts_after_edit: Sequence[bool],
    cap: int,
    rng: random.Random,
) -> list[Pick]:
    """Pick at most `cap` of an episode's segments (flags per segment, in order); picks come back in order."""
    if len(ends_with_edit) != len(starts_after_edit):
        raise ValueError(f"{len(ends_with_edit)} ends_with_edit flags but {len(starts_after_edit)} starts_after_edit")
    if cap < 1:
        raise ValueError(f"cap (max_segments_per_episode) must be >= 1, got {cap}")
    n = len(ends_with_edit)
    if n == 0:
        return []
    reasons: dict[int, str] = {n - 1: "last"}
    near_edit = [i for i in range(n - 1) if ends_with_edit[i] or starts_after_edit[i]]
    rest = [i for i in range(n - 1) if i not in set(near_edit)]
    for group, reason in ((near_edit, "edit"), (rest, "random")):
        room = cap - len(reasons)
        if room <= 0:
            break
        chosen = group if len(group) <= room else rng.sample(group, room)
        reasons.update({i: reason for i in chosen})
    weight = 1.0 / len(reasons)
    return [Pick(i, reasons[i], weight) for i in sorted(reasons)]
