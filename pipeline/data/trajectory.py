"""Trajectory records (SPEC 4): what one episode did, stored so that every context can be rebuilt.

Messages are stored once, in a table. A message that changes (a tool result replaced by its stub,
the task message re-rendered with a new notebook list) gets a new table entry; each turn lists the
table entries visible before it, so the exact prompt of every turn is `[messages[i] for i in
turn.context]` and the trained assistant text is `messages[turn.assistant]`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

Role = Literal["system", "user", "assistant", "tool"]
EndState = Literal["finished", "over_budget", "malformed", "max_rounds"]
END_STATES: tuple[str, ...] = ("finished", "over_budget", "malformed", "max_rounds")
TurnError = Literal["truncated"]
"""Per-turn problems of the policy's output itself (not the episode's end state): `truncated` means the
server stopped at the output cap (finish_reason `length`), so the text is cut, not what the model meant."""


class MessageRecord(BaseModel):
    """One version of one context message."""

    role: Role
    content: str
    msg_id: int | None = Field(default=None, description="The id the model sees (system 0, user 1).")
    tool_name: str | None = Field(default=None, description="Tool messages: which tool answered.")
    call_id: int | None = Field(default=None, description="Tool messages: msg id of the calling message.")
    stub: bool = Field(default=False, description="True when this is the deleted form of a message.")
    covers: list[int] | None = Field(
        default=None, description="Range stubs (env.compact_stubs): the msg ids of the adjacent stubs merged into it."
    )

    def chat(self) -> dict[str, str]:
        """The message as the chat template takes it."""
        return {"role": self.role, "content": self.content}


class Turn(BaseModel):
    """One assistant message and the tool results it produced."""

    index: int
    context: list[int] = Field(description="Table indices of the messages visible before the turn.")
    assistant: int = Field(description="Table index of the raw assistant message.")
    tool_calls: list[dict[str, Any]] = Field(default_factory=list, description="Parsed calls {name, arguments}.")
    tool_results: list[int] = Field(default_factory=list, description="Table indices of the tool messages.")
    context_tokens_before: int
    context_tokens_after: int
    edited: bool = Field(description="True when the turn changed earlier messages (delete, notebook list).")
    format_errors: int = 0
    trained: bool = Field(
        default=True, description="False: the policy asked not to train this turn (kept as context, mask 0)."
    )
    finish_reason: str | None = Field(default=None, description="The server's finish_reason, when it gave one.")
    error: TurnError | None = Field(default=None, description="truncated: the output hit the per-turn cap.")
    token_ids: list[int] | None = Field(
        default=None, description="The ids the student sampled (token-in/token-out); None for scripted/API text."
    )
    logprobs: list[float] | None = Field(
        default=None, description="The sampler's logprob of each of `token_ids`, where the backend gives them."
    )

    @property
    def action(self) -> str:
        """The action type used for balancing: the first tool called, or 'invalid'."""
        return self.tool_calls[0]["name"] if self.tool_calls else "invalid"


class Trajectory(BaseModel):
    """One finished episode."""

    episode_id: str
    task_id: str
    policy: str
    seed: int
    env: str = "pensieve"
    end_state: EndState
    answer: str | None = None
    correct: bool = False
    reward: float = 0.0
    reward_components: dict[str, float] = Field(default_factory=dict)
    format_errors: int = 0
    rounds: int = 0
    input_tokens: int | None = Field(default=None, description="Length of the task input in student tokens.")
    tools: list[dict[str, Any]] = Field(default_factory=list, description="Tool schemas given to the template.")
    messages: list[MessageRecord] = Field(default_factory=list)
    turns: list[Turn] = Field(default_factory=list)
    final_context: list[int] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)

    def context_messages(self, turn: Turn) -> list[dict[str, str]]:
        """The chat messages the model saw before `turn`."""
        return [self.messages[i].chat() for i in turn.context]

    @property
    def peak_context_tokens(self) -> int:
        return max((max(t.context_tokens_before, t.context_tokens_after) for t in self.turns), default=0)

    @property
    def mean_context_tokens(self) -> float:
        return sum(t.context_tokens_before for t in self.turns) / len(self.turns) if self.turns else 0.0
