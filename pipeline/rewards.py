"""Episode reward as named components with weights from the recipe (SPEC 6, verifiers-style rubric).

Each component is an indicator or count computed from the end state and the grade; the recipe's
weights turn them into one number. Every component is logged, so a run shows *why* reward moved.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

ComponentFn = Callable[[str, bool, int], float]

REWARD_COMPONENTS: dict[str, ComponentFn] = {
    # finished through `finish`, graded correct, and no format error on the way
    "correct": lambda end, correct, errors: float(end == "finished" and correct and errors == 0),
    "wrong": lambda end, correct, errors: float(end == "finished" and not correct),
    "malformed": lambda end, correct, errors: float(end == "malformed"),
    "over_budget": lambda end, correct, errors: float(end in ("over_budget", "max_rounds")),
    "format_errors": lambda end, correct, errors: float(errors),
}

DEFAULT_REWARD_WEIGHTS: dict[str, float] = {
    "correct": 1.0,
    "wrong": -0.5,
    "malformed": -1.0,
    "over_budget": -1.0,
    "format_errors": 0.0,
}


def reward_components(end_state: str, correct: bool, format_errors: int) -> dict[str, float]:
    """Every named component's value for one episode."""
    return {name: fn(end_state, correct, format_errors) for name, fn in REWARD_COMPONENTS.items()}


def weighted_reward(components: Mapping[str, float], weights: Mapping[str, float] | None = None) -> float:
    """Weighted sum; unknown weight names are an error so a typo in a recipe cannot pass silently."""
    weights = DEFAULT_REWARD_WEIGHTS if weights is None else weights
    unknown = set(weights) - set(REWARD_COMPONENTS)
    if unknown:
        raise ValueError(f"unknown reward components in weights: {sorted(unknown)}; known: {list(REWARD_COMPONENTS)}")
    return float(sum(weights.get(name, 0.0) * value for name, value in components.items()))
