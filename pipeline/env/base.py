"""What every environment shares (SPEC 2): the bookkeeping of an episode, so each one supplies only its turns.

`pipeline/play/rollout.py` drives any `BaseEnv` (`name`, `tools`, `done`, `end_state`, `answer`, `messages()`,
`step(raw_text)`, `trajectory(...)`), so a new environment plugs into collect, curate, GRPO and eval by
producing the same trajectory records. `BaseEnv` does the bookkeeping once: the message table (every
message version stored once) and the live context (table rows), rendering and token counts in the
student's tokenizer, message ids, the format-error and budget end states, the turn records, the
trajectory record, and the environment's rubric (its named reward components, pipeline/env/rubric.py) and
evaluation figures. A subclass writes `_turn` (its turn logic, ending with `_record_turn`; `step` counts the
round) and its tools; it may override `_over_budget`, `episode_metadata`, `recorded_input_tokens` and
`eval_figures`, and set `rubric` to add reward components of its own.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from pipeline.data.trajectory import MessageRecord, Trajectory, Turn
from pipeline.env.rubric import DEFAULT_RUBRIC, Rubric
from pipeline.tasks.schema import Task


class BaseEnvConfig(BaseModel):
    """The settings every environment has: its budgets and the chat template's thinking switch.

    Recipes set them under `environment:` (the shared env file); each kind's config adds its own fields and a
    `kind`. A key no kind knows is an error naming it, not a silently ignored typo."""

    model_config = ConfigDict(extra="forbid")

    max_context_tokens: int = Field(default=32000, description="Rendered context + max_output_tokens limit.")
    max_output_tokens: int = Field(default=2048, description="Tokens reserved for the next assistant message.")
    max_rounds: int = Field(default=150, description="Assistant turns before the episode ends as max_rounds.")
    max_format_errors: int = Field(default=3, description="Consecutive erroneous turns before 'malformed'.")
    enable_thinking: bool | None = Field(default=None, description="Passed to the chat template when set.")


@dataclass
class StepResult:
    """What one `step` did: whether the episode ended (and how), its format errors, whether it edited context."""

    done: bool
    end_state: str | None
    format_errors: int
    edited: bool


class BaseEnv(ABC):
    """One episode's state and records. Build a new env per episode.

    The config is a `BaseEnvConfig` (its budgets). `task` is set by `from_task` (None for an env built by hand);
    the rubric's reward functions see it.
    """

    name: ClassVar[str] = "base"
    rubric: ClassVar[Rubric] = DEFAULT_RUBRIC

    def __init__(self, tokenizer: Any, config: Any) -> None:
        self.tokenizer = tokenizer
        self.config = config
        self.task: Task | None = None
        self.tools: list[dict[str, Any]] = []
        self.table: list[MessageRecord] = []  # every message version, stored once
        self.context: list[int] = []  # table indices of the live context
        self.turns: list[Turn] = []
        self.next_msg_id = 2  # 0 is the system prompt, 1 the task message
        self.rounds = 0
        self.format_errors = 0
        self.consecutive_error_turns = 0
        self.context_tokens = 0
        self.done = False
        self.end_state: str | None = None
        self.answer: str | None = None

    def _for_task(self, task: Task) -> Any:
        """`from_task`'s last step: remember the task, for the rubric."""
        self.task = task
        return self

    # -- observation -------------------------------------------------------------------------
    def messages(self) -> list[dict[str, str]]:
        """The live context as chat messages (what the policy sees)."""
        return [self.table[i].chat() for i in self.context]

    def render(self, add_generation_prompt: bool = True) -> str:
        kwargs = {} if self.config.enable_thinking is None else {"enable_thinking": self.config.enable_thinking}
        return self.tokenizer.apply_chat_template(
            self.messages(),
            tools=self.tools or None,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            **kwargs,
        )

    def count_tokens(self) -> int:
        """Tokens of the rendered context with the generation prompt, in the student's tokenizer."""
        return self._tokens(self.render())

    def _tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0

    # -- bookkeeping -------------------------------------------------------------------------
    def _new_msg_id(self) -> int:
        self.next_msg_id += 1
        return self.next_msg_id - 1

    def _add(self, message: MessageRecord) -> int:
        """Store `message` and append it to the live context; returns its table row."""
        self.table.append(message)
        self.context.append(len(self.table) - 1)
        return len(self.table) - 1

    def _replace(self, position: int, message: MessageRecord) -> None:
        """Store a new version of the message at context `position` (the old one stays in the table)."""
        self.table.append(message)
        self.context[position] = len(self.table) - 1

    def _end(self, state: str) -> None:
        self.done, self.end_state = True, state

    def _count_errors(self, errors: int) -> None:
        """Add a turn's format errors; `max_format_errors` consecutive turns with one end the episode as malformed."""
        self.format_errors += errors
        self.consecutive_error_turns = self.consecutive_error_turns + 1 if errors else 0
        if not self.done and self.consecutive_error_turns >= self.config.max_format_errors:
            self._end("malformed")

    def _over_context(self) -> bool:
        """The rendered context leaves no room for the next `max_output_tokens`."""
        return self.context_tokens + self.config.max_output_tokens > self.config.max_context_tokens

    def _over_budget(self) -> bool:
        """Any budget of the env spent (a subclass adds its own, e.g. time)."""
        return self._over_context()

    def _check_budgets(self) -> None:
        if self.done:
            return
        if self._over_budget():
            self._end("over_budget")
        elif self.rounds >= self.config.max_rounds:
            self._end("max_rounds")

    def step(self, raw_text: str) -> StepResult:
        """Apply one assistant message: count the round and let the subclass's `_turn` play it. Never raises on
        model output (a malformed message is a format error); after the end a step changes nothing."""
        if self.done:
            return StepResult(True, self.end_state, 0, False)
        self.rounds += 1
        return self._turn(raw_text, list(self.context), self.context_tokens)

    @abstractmethod
    def _turn(self, raw_text: Any, context_before: list[int], tokens_before: int) -> StepResult:
        """One turn's logic (each environment's own), ending with `_record_turn(context_before, tokens_before,
        ...)`; `context_before` / `tokens_before` are the live context the message answered."""

    def _record_turn(
        self,
        context_before: list[int],
        tokens_before: int,
        assistant_row: int,
        tool_calls: list[dict[str, Any]],
        tool_results: list[int],
        edited: bool,
        errors: int,
    ) -> StepResult:
        """Append the turn record (SPEC 4) and return the step's result."""
        self.turns.append(
            Turn(
                index=len(self.turns),
                context=context_before,
                assistant=assistant_row,
                tool_calls=tool_calls,
                tool_results=tool_results,
                context_tokens_before=tokens_before,
                context_tokens_after=self.context_tokens,
                edited=edited,
                format_errors=errors,
            )
        )
        return StepResult(self.done, self.end_state, errors, edited)

    # -- records -----------------------------------------------------------------------------
    def recorded_input_tokens(self) -> int | None:
        """The task input's length in student tokens as the record keeps it (None: never counted)."""
        return None

    def episode_metadata(self) -> dict[str, Any]:
        """The env's own figures, merged into the trajectory's metadata."""
        return {}

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
        """The finished episode as a record (SPEC 4), scored by the env's rubric with the recipe's `weights`.

        An episode cut off before it ended counts as `max_rounds`.
        """
        record = Trajectory(
            episode_id=episode_id,
            task_id=task_id,
            policy=policy,
            seed=seed,
            env=self.name,
            end_state=self.end_state or "max_rounds",
            answer=self.answer,
            correct=correct,
            format_errors=self.format_errors,
            rounds=self.rounds,
            input_tokens=self.recorded_input_tokens(),
            tools=self.tools,
            messages=self.table,
            turns=self.turns,
            final_context=list(self.context),
            metadata={**(metadata or {}), **self.episode_metadata()},
        )
        return self.rubric.score(record, self.task, weights)

    @classmethod
    def eval_figures(cls, trajectories: list[Trajectory]) -> dict[str, Any]:
        """The env's own sections of the evaluation report (pipeline/evaluate.py), over its episodes."""
        return {}
