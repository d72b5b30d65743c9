"""The policy contract: a rendered context in, the next raw assistant message out (SPEC 4).

Every policy (scripted expert, local HF model, OpenAI-compatible server) returns the assistant's raw
text in the Qwen3/Hermes format the environment parses: optional `<think>...</think>`, then
`<tool_call>{...}</tool_call>` blocks. One text representation keeps teacher, student and
environment in agreement about what was said.

A policy may also return an `Action`: the text plus facts about the turn that are not part of the
text. `trained=False` says "play this turn, but do not teach it": the scripted expert's deliberately
failed search in a recovery episode stays in the episode (the recovery needs it as context) and is
masked out of the loss by curate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

Message = dict[str, Any]
"""A chat message as the chat template takes it: {"role", "content"}; assistant content is raw text."""


@dataclass
class Action:
    """A policy's turn when plain text is not enough: the raw text plus what the episode should record.

    `finish_reason` is the server's (`stop`, `tool_calls`, `length`, ...): `length` means the text was
    cut at the output cap, which the rollout records on the turn as a `truncated` error.
    """

    text: str
    trained: bool = True
    finish_reason: str | None = None


def as_action(result: str | Action) -> Action:
    """What `Policy.act` returned, as an `Action` (a plain string is a trained turn)."""
    return result if isinstance(result, Action) else Action(str(result))


@runtime_checkable
class Policy(Protocol):
    """Maps the visible context to the next assistant message."""

    name: str

    async def act(self, messages: list[Message], tools: list[dict[str, Any]], seed: int | None = None) -> str | Action:
        """Return the raw assistant text for the next turn (or an `Action` holding it)."""
        ...

    async def aclose(self) -> None:
        """Release clients, servers or models."""
        ...
