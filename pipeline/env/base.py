"""What every environment offers the episode loop (Pensieve and its variants, SPEC 2).

`pipeline/rollout.py` drives any object with this shape, so a new environment plugs into collect,
curate, GRPO and eval by producing the same trajectory records.
"""

from __future__ import annotations

from typing import Any, Protocol

from pipeline.rewards import reward_components, weighted_reward
from pipeline.trajectory import Trajectory


class Environment(Protocol):
    name: str
    tools: list[dict[str, Any]]  # JSON schemas given to the chat template ([] when the env uses none)
    done: bool
    end_state: str | None  # finished | over_budget | malformed | max_rounds, once done
    answer: str | None

    def messages(self) -> list[dict[str, str]]:
        """The context the policy sees now, as chat messages."""
        ...

    def step(self, raw_text: str) -> Any:
        """Apply one raw assistant message; never raises on model output."""
        ...

    def trajectory(
        self,
        episode_id: str,
        task_id: str,
        policy: str,
        seed: int,
        correct: bool,
        weights: dict[str, float] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Trajectory:
        """The finished episode as a record."""
        ...


def episode_record(
    env: Any,
    *,
    episode_id: str,
    task_id: str,
    policy: str,
    seed: int,
    correct: bool,
    weights: dict[str, float] | None,
    input_tokens: int | None,
    metadata: dict[str, Any],
) -> Trajectory:
    """The trajectory record every environment writes the same way (SPEC 4), from its episode state.

    `env` holds `name, end_state, answer, format_errors, rounds, tools, table, turns, context`; an episode
    cut off before it ended counts as `max_rounds`. Each environment adds only its own `metadata`.
    """
    end_state = env.end_state or "max_rounds"
    components = reward_components(end_state, correct, env.format_errors)
    return Trajectory(
        episode_id=episode_id,
        task_id=task_id,
        policy=policy,
        seed=seed,
        env=env.name,
        end_state=end_state,
        answer=env.answer,
        correct=correct,
        reward=weighted_reward(components, weights),
        reward_components=components,
        format_errors=env.format_errors,
        rounds=env.rounds,
        input_tokens=input_tokens,
        tools=env.tools,
        messages=env.table,
        turns=env.turns,
        final_context=list(env.context),
        metadata=metadata,
    )
