"""What every environment offers the episode loop (Pensieve and its variants, SPEC 2).

`pipeline/rollout.py` drives any object with this shape, so a new environment plugs into collect,
curate, GRPO and eval by producing the same trajectory records.
"""

from __future__ import annotations

from typing import Any, Protocol

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
