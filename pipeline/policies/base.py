"""The policy contract: a rendered context in, the next raw assistant message out (SPEC 4).

Every policy (scripted expert, local HF model, OpenAI-compatible server) returns the assistant's raw
text in the Qwen3/Hermes format the environment parses: optional `<think>...</think>`, then
`<tool_call>{...}</tool_call>` blocks. One text representation keeps teacher, student and
environment in agreement about what was said.
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
