"""The curate recipe (`recipes/<model>/curate.yaml`): which episodes are kept, how they are cut and balanced.

Budgets and chat-template settings are not repeated here: `environment` (usually the run's shared env file)
gives the round budget a kept episode may have used and the `enable_thinking` the rows are rendered with,
the same values the episodes were played under.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.env.pensieve import EnvConfig
from pipeline.settings.config import load_recipe
from pipeline.settings.recipe import env_section


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FilterConfig(_Strict):
    """Reject sampling: which episodes are kept (the round budget is environment.max_rounds)."""

    require_finished: bool = Field(default=True, description="Keep only episodes ended through `finish`.")
    require_correct: bool = Field(default=True, description="Keep only episodes the grader marked correct.")
    max_format_errors: int = Field(default=0, ge=0, description="Most format errors a kept episode may have.")
    max_context_tokens: int | None = Field(
        default=32000, gt=0, description="Most context tokens (peak over the turns) a kept episode may use."
    )


class SegmentConfig(_Strict):
    """How kept episodes become rows (pipeline/data/segments.py); the chat template gets environment.enable_thinking."""

    max_turns_per_segment: int | None = Field(default=None, gt=0, description="1 gives per-turn snapshots.")
    max_tokens_per_segment: int | None = Field(
        default=None, gt=0, description="Start a new segment before a row grows longer than this."
    )
    train_error_turns: bool = Field(
        default=False, description="Train turns that produced a format error (kept episodes may have some)."
    )


class BalanceConfig(_Strict):
    """Action-type balancing (pipeline/data/balance.py): caps on each type's share of the trained turns."""

    max_share: float = Field(default=1.0, ge=0.0, le=1.0, description="Cap for every type without its own.")
    max_share_by_type: dict[str, float] = Field(
        default_factory=lambda: {"deleteContext": 0.35}, description="Per-type caps, e.g. deleteContext: 0.35."
    )


class CurateRecipe(_Strict):
    """Everything `statelm curate` needs."""

    inputs: list[str] = Field(min_length=1, description="Trajectory JSONL files written by `statelm collect`.")
    output_dir: str = Field(description="Gets dataset/ (save_to_disk) and report.json.")
    tokenizer: str = Field(description="Path or hub id of the student's tokenizer (its chat template renders rows).")
    seed: int = Field(default=0, description="Seed of the balancing choice.")
    environment: Any = Field(
        default_factory=EnvConfig,
        description="The environment the episodes were played in (its max_rounds filters, its enable_thinking "
        "renders), usually the run's shared env file.",
    )
    filters: FilterConfig = Field(default_factory=FilterConfig)
    segments: SegmentConfig = Field(default_factory=SegmentConfig)
    balance: BalanceConfig = Field(default_factory=BalanceConfig)
    push_to_hub: bool = Field(default=False, description="Push the dataset to hub_id after writing it.")
    hub_id: str | None = Field(default=None, description="Dataset repo to push to, e.g. org/statelm-sft.")
    hub_private: bool = Field(default=True, description="Create the hub dataset private.")

    @field_validator("inputs", mode="before")
    @classmethod
    def _one_input(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("environment", mode="before")
    @classmethod
    def _env(cls, value: Any) -> BaseModel:
        return env_section(value)  # validated as every stage's environment block is

    @model_validator(mode="after")
    def _hub(self) -> CurateRecipe:
        if self.push_to_hub and not self.hub_id:
            raise ValueError("push_to_hub needs hub_id")
        return self

    @property
    def max_rounds(self) -> int | None:
        return getattr(self.environment, "max_rounds", None)

    @property
    def chat_template_kwargs(self) -> dict[str, Any]:
        thinking = getattr(self.environment, "enable_thinking", None)
        return {} if thinking is None else {"enable_thinking": thinking}


def load_curate_recipe(path: str | Path, overrides: dict[str, Any] | None = None) -> CurateRecipe:
    """Read and validate a curate recipe; `overrides` (dotted keys, e.g. 'balance.max_share') win; None is unset."""
    return load_recipe(CurateRecipe, path, overrides)
