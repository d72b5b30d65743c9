"""A success-rate curriculum: move to the next, harder stage when the rolling success rate passes a threshold.

Used for Inventory streams (stages of `n_chunks` x `words_per_chunk`), but a stage is just the generator
arguments it overrides. `update(success)` is called once per finished episode; once the last `window`
episodes of the current stage reach `threshold`, the next stage starts with an empty window (so one
lucky episode never advances, and the new stage is judged on its own episodes). The last stage is kept
for good; a threshold of 0 makes a fixed schedule (next stage every `window` episodes). `state_dict()` /
`load_state_dict()` carry the position across a resumed GRPO run.

GRPO (pipeline/training/grpo_trainer.py) plays every Inventory task of its recipe at the current stage's sizes
(`staged_task`) and calls `update` with each episode's grade.
"""

from __future__ import annotations

import zlib
from collections import deque
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.tasks.inventory import generate_inventory
from pipeline.tasks.schema import Task


class CurriculumStage(BaseModel):
    """One difficulty level: the task generator's arguments (unset fields keep the generator default)."""

    model_config = ConfigDict(extra="forbid")

    n_chunks: int = Field(gt=0)
    words_per_chunk: int = Field(gt=0, description="Words per chunk.")
    command_density: float | None = Field(default=None, ge=0.0, le=1.0)
    n_items: int | None = Field(default=None, gt=0)

    def generator_kwargs(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class CurriculumConfig(BaseModel):
    """A recipe's `curriculum:` section."""

    model_config = ConfigDict(extra="forbid")

    stages: list[CurriculumStage] = Field(min_length=1, description="Easiest first.")
    window: int = Field(default=32, gt=0, description="Episodes the rolling success rate is taken over.")
    threshold: float = Field(
        default=0.8, ge=0.0, le=1.0, description="Success rate that moves to the next stage (0: every `window`)."
    )

    @model_validator(mode="after")
    def _distinct(self) -> CurriculumConfig:
        keys = [tuple(sorted(s.generator_kwargs().items())) for s in self.stages]
        if len(set(keys)) != len(keys):
            raise ValueError("curriculum.stages: two stages are the same")
        return self


class Curriculum:
    """Tracks the current stage and the rolling success rate over its episodes."""

    def __init__(self, config: CurriculumConfig) -> None:
        self.config = config
        self.stage_index = 0
        self.recent: deque[bool] = deque(maxlen=config.window)
        self.episodes = 0
        self.history: list[dict[str, int]] = []  # {stage, episode}: when each later stage began

    @property
    def stage(self) -> CurriculumStage:
        return self.config.stages[self.stage_index]

    @property
    def is_last(self) -> bool:
        return self.stage_index == len(self.config.stages) - 1

    @property
    def success_rate(self) -> float:
        """Over the current stage's last `window` episodes (0.0 before any)."""
        return sum(self.recent) / len(self.recent) if self.recent else 0.0

    def update(self, success: bool) -> bool:
        """Record one episode; True when this moved the curriculum to the next stage."""
        self.episodes += 1
        self.recent.append(bool(success))
        full = len(self.recent) == self.config.window
        if self.is_last or not full or self.success_rate < self.config.threshold:
            return False
        self.stage_index += 1
        self.recent.clear()
        self.history.append({"stage": self.stage_index, "episode": self.episodes})
        return True

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable position, with the stages it refers to (checked on load)."""
        return {
            "stage_index": self.stage_index,
            "recent": list(self.recent),
            "episodes": self.episodes,
            "history": list(self.history),
            "stages": [s.generator_kwargs() for s in self.config.stages],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from `state_dict()`; a state saved with other stages is an error, not a silent jump."""
        stages = [s.generator_kwargs() for s in self.config.stages]
        if state.get("stages") != stages:
            raise ValueError(
                f"curriculum state: saved stages {state.get('stages')} differ from the recipe's stages {stages}"
            )
        index = state.get("stage_index")
        if not isinstance(index, int) or not 0 <= index < len(stages):
            raise ValueError(f"curriculum state: stage_index {index!r} is not in 0..{len(stages) - 1}")
        self.stage_index = index
        self.recent = deque((bool(x) for x in state.get("recent", [])), maxlen=self.config.window)
        self.episodes = int(state.get("episodes", 0))
        self.history = [dict(h) for h in state.get("history", [])]


# The generator arguments a staged task keeps from the task it replaces (the stage sets the sizes)
_KEPT = ("command_density", "n_items", "adversarial_drops")


def staged_task(task: Task, stage: CurriculumStage) -> Task:
    """`task` regenerated at the stage's sizes when it is an Inventory stream; any other task as it is.

    The stream is seeded by the original task id, so every episode of a group (and a resumed run) plays the
    same stream for the same task and stage, and different tasks stay different. Its id records both.
    """
    if task.metadata.get("generator") != "inventory":
        return task
    kwargs = {k: task.metadata[k] for k in _KEPT if k in task.metadata}
    kwargs.update(stage.generator_kwargs())
    staged = generate_inventory(1, seed=zlib.crc32(task.id.encode()), **kwargs)[0]
    size = f"{staged.metadata['n_chunks']}x{staged.metadata['words_per_chunk']}"
    return staged.model_copy(update={"id": f"{task.id}@{size}", "metadata": {**staged.metadata, "source": task.id}})
