"""Parse a model's raw assistant text into tool calls (Qwen3 / Hermes format).

The model writes an optional `<think>...</think>` and then one or more blocks
`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`. Parsing never raises: every problem
becomes a message in `errors` that the environment shows back to the model.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
_BLOCK = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
_THINK = re.compile(r"^\s*<think>(.*?)</think>", re.DOTALL)


@dataclass
class ToolCall:
    """One parsed call: a tool name and its JSON arguments."""

    name: str
    arguments: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "arguments": self.arguments}


@dataclass
class ParsedOutput:
    """What the parser found in one assistant message."""

    calls: list[ToolCall] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    reasoning: str | None = None


def parse_tool_calls(text: str) -> ParsedOutput:
    """Extract every `<tool_call>` block; malformed blocks become errors, never exceptions."""
    out = ParsedOutput()
    if not isinstance(text, str):
        out.errors.append(f"assistant output is not text (got {type(text).__name__})")
        return out
    think = _THINK.match(text)
    if think:
        out.reasoning = think.group(1).strip()
    blocks = _BLOCK.findall(text)
    opened, closed = text.count(TOOL_CALL_OPEN), text.count(TOOL_CALL_CLOSE)
    if opened != closed or opened != len(blocks):
        out.errors.append(
            f"unbalanced tool call tags: {opened} '<tool_call>' and {closed} '</tool_call>'; "
            'write each call as <tool_call>{"name": ..., "arguments": {...}}</tool_call>'
        )
    if not blocks:
        if not out.errors:
            out.errors.append(
                "no tool call found: every turn must call a tool, written as "
                '<tool_call>{"name": "<tool>", "arguments": {...}}</tool_call>'
            )
        return out
    for number, body in enumerate(blocks, start=1):
        call, error = _parse_block(body)
        if error:
            out.errors.append(f"tool call {number}: {error}")
        else:
            out.calls.append(call)  # type: ignore[arg-type]
    return out


def _parse_block(body: str) -> tuple[ToolCall | None, str | None]:
    try:
        payload = json.loads(body.strip())
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON ({exc.msg} at char {exc.pos}): {_clip(body)}"
    if not isinstance(payload, dict):
        return None, f"expected a JSON object with 'name' and 'arguments', got {type(payload).__name__}"
    name = payload.get("name")
    if not isinstance(name, str) or not name:
        return None, "missing or non-string 'name'"
    arguments = payload.get("arguments", {})
    if isinstance(arguments, str):  # some servers send arguments as a JSON string
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as exc:
            return None, f"'arguments' of {name} is a string that is not JSON ({exc.msg})"
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        return None, f"'arguments' of {name} must be a JSON object, got {type(arguments).__name__}"
    return ToolCall(name=name, arguments=arguments), None


def format_tool_call(call: ToolCall | dict[str, Any]) -> str:
    """Render one call the way Qwen3's chat template does, so raw text and template output agree."""
    if isinstance(call, ToolCall):
        call = call.to_dict()
    arguments = call.get("arguments", {})
    args_json = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    return f'{TOOL_CALL_OPEN}\n{{"name": "{call["name"]}", "arguments": {args_json}}}\n{TOOL_CALL_CLOSE}'


def format_assistant_text(content: str, calls: list[ToolCall | dict[str, Any]]) -> str:
    """Raw assistant text for a message given as content plus structured calls (e.g. from an API)."""
    parts = [content.rstrip("\n")] if content and content.strip() else []
    parts.extend(format_tool_call(call) for call in calls)
    return "\n".join(parts)


def _clip(text: str, limit: int = 120) -> str:
    text = text.strip().replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + "..."
