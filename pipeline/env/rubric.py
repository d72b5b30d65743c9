"""Episode reward as named components with weights from the recipe (SPEC 6, verifiers-style rubric).

A component is a function of the episode (its finished trajectory record: end state, grade, turns,
messages, metadata) and the task (None for an env built without one) that returns a number. Each
environment owns a `Rubric` (`BaseEnv.rubric`, pipeline/env/base.py): the default components below,
plus any of its own. The recipe's `rewards:` weights turn the components into one number, here and
nowhere else; every component is stored in the record's `reward_components` and logged, so a run shows
*why* reward moved.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from pipeline.data.trajectory import Trajectory
from pipeline.tasks.schema import Task

RewardFn = Callable[[Trajectory, Task | None], float]  # (episode, task or None) -> value


def _correct(episode: Trajectory, task: Task | None) -> float:
    """Finished through `finish`, graded correct, and no format error on the way."""
    return float(episode.end_state == "finished" and episode.correct and episode.format_errors == 0)


def _wrong(episode: Trajectory, task: Task | None) -> float:
    return float(episode.end_state == "finished" and not episode.correct)


def _malformed(episode: Trajectory, task: Task | None) -> float:
    return float(episode.end_state == "malformed")


def _over_budget(episode: Trajectory, task: Task | None) -> float:
    return float(episode.end_state in ("over_budget", "max_rounds"))


def _format_errors(episode: Trajectory, task: Task | None) -> float:
    return float(episode.format_errors)


DEFAULT_REWARD_WEIGHTS: dict[str, float] = {
    "correct": 1.0,
    "wrong": -0.5,
    "malformed": -1.0,
    "over_budget": -1.0,
    "format_errors": 0.0,
}


@dataclass(frozen=True)
class Rubric:
    """Named reward components; `score` fills a record's components and its weighted reward."""

    components: Mapping[str, RewardFn] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return list(self.components)

    def extend(self, **components: RewardFn) -> Rubric:
        """This rubric plus more components (an environment's own); a name may not be taken twice."""
        taken = sorted(set(components) & set(self.components))
        if taken:
            raise ValueError(f"reward components {taken} already exist in the rubric")
        return Rubric({**self.components, **components})

    def check_weights(self, weights: Mapping[str, float]) -> None:
        """Unknown weight names are an error, so a typo in a recipe cannot pass silently."""
        unknown = set(weights) - set(self.components)
        if unknown:
            raise ValueError(f"unknown reward components in weights: {sorted(unknown)}; known: {self.names}")

    def values(self, episode: Trajectory, task: Task | None = None) -> dict[str, float]:
        """Every named component's value for one episode."""
        return {name: float(fn(episode, task)) for name, fn in self.components.items()}

    def reward(self, components: Mapping[str, float], weights: Mapping[str, float] | None = None) -> float:
        """The weighted sum (default weights: DEFAULT_REWARD_WEIGHTS; a component without a weight counts 0)."""
        weights = DEFAULT_REWARD_WEIGHTS if weights is None else weights
        self.check_weights(weights)
        return float(sum(weights.get(name, 0.0) * value for name, value in components.items()))

    def score(
        self, episode: Trajectory, task: Task | None = None, weights: Mapping[str, float] | None = None
    ) -> Trajectory:
        """`episode` with its `reward_components` and `reward` set: the one place a reward is computed."""
        components = self.values(episode, task)
        episode.reward_components = components
        episode.reward = self.reward(components, weights)
        return episode


DEFAULT_RUBRIC = Rubric(
    {
        "correct": _correct,
        "wrong": _wrong,
        "malformed": _malformed,
        "over_budget": _over_budget,
        "format_errors": _format_errors,
    }
)
