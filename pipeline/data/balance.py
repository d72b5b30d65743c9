"""Action-type balancing (SPEC 5): no action type may exceed its share of the trained turns.

Every trained assistant turn has an action type (`Turn.action`: its first tool, or 'invalid'). A type
over its cap has turns masked out of the loss (they stay in the context), chosen at random with the
seed; types under their cap are never touched, so rare types are never dropped. Shares are of the
turns trained *after* balancing, so the cap holds on the final dataset.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterable

TurnKey = tuple[str, int]  # (episode_id, turn index)


def keep_counts(counts: dict[str, int], max_share: float = 1.0, caps: dict[str, float] | None = None) -> dict[str, int]:
    """How many turns of each type to keep: the most turns overall such that every type's share of the kept
    turns is at most its cap (`caps[type]`, else `max_share`), and no type loses a turn it need not lose.

    Start from everything and lower each type over its cap to floor(cap * total); the total shrinks, so
    repeat. Each pass keeps at least the optimum of every type, so the fixed point is the optimum.
    """
    caps = caps or {}
    for name, share in {"max_share": max_share, **caps}.items():
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"share cap {name}={share} must be between 0 and 1")
    keep = {t: c for t, c in counts.items() if c > 0}
    while True:
        total = sum(keep.values())
        over = {t: math.floor(caps.get(t, max_share) * total + 1e-9) for t, k in keep.items()}
        over = {t: k for t, k in over.items() if keep[t] > k}
        if not over:
            break
        keep.update(over)
    if counts and any(counts.values()) and sum(keep.values()) == 0:
        shares = {t: caps.get(t, max_share) for t in counts}
        raise ValueError(f"the share caps {shares} cannot hold on any turn: every type is capped and they sum below 1")
    return {t: keep.get(t, 0) for t in counts}


def balance_turns(
    turns: Iterable[tuple[str, int, str]],
    max_share: float = 1.0,
    caps: dict[str, float] | None = None,
    seed: int = 0,
) -> set[TurnKey]:
    """The (episode_id, turn) pairs to mask out of the loss, given every trained turn as
    (episode_id, turn, action). Deterministic for a seed, whatever the order of `turns`."""
    by_type: dict[str, list[TurnKey]] = {}
    for episode_id, index, action in turns:
        by_type.setdefault(action, []).append((episode_id, index))
    keep = keep_counts({t: len(v) for t, v in by_type.items()}, max_share, caps)
    masked: set[TurnKey] = set()
    for action in sorted(by_type):
        surplus = len(by_type[action]) - keep[action]
        if surplus > 0:
            rng = random.Random(f"{seed}:{action}")  # one stream per type: a type's choice ignores the others
            masked.update(rng.sample(sorted(by_type[action]), surplus))
    return masked


def distribution(actions: Iterable[str]) -> dict[str, int]:
    """Counts per action type, most common first."""
    return dict(Counter(actions).most_common())
