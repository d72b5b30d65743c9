"""The policy contract: a rendered context in, the next raw assistant message out (SPEC 4).

Every policy (scripted expert, local HF model, OpenAI-compatible server) returns the assistant's raw
text in the Qwen3/Hermes format the environment parses: optional `<think>...</think>`, then
`<tool_call>{...}</tool_call>` blocks. One text representation keeps teacher, student and
environment in agreement about what was said.

A policy may also return an `Action`: the text plus facts about the turn that are not part of the
text. `trained=False` says "play this turn, but do not teach it": the scripted expert's deliberately
failed search in a recovery episode stays in the episode (the recovery needs it as context) and is
masked out of the loss by curate.

Token-in/token-out. A local or vLLM student also returns the token ids it sampled (`token_ids`) and, where
the backend gives them (vLLM), their logprobs. The episode record keeps them on the turn, and GRPO trains
exactly those ids: decoding them to text and re-encoding the text can give other ids (two sampled tokens
that the tokenizer would merge), and an update on ids the policy never produced is off-policy.
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
    `token_ids` are the sampled ids (an end-of-turn token included when one was sampled), `logprobs` their
    sampling logprobs, one per id; both `None` for text from an API, a script or a teacher.
    """

    text: str
    trained: bool = True
    finish_reason: str | None = None
    token_ids: list[int] | None = None
    logprobs: list[float] | None = None

    def __post_init__(self) -> None:
        if self.logprobs is not None and (self.token_ids is None or len(self.logprobs) != len(self.token_ids)):
            raise ValueError("Action: logprobs need token_ids, one logprob per id")


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
