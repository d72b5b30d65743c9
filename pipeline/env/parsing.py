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
_DECODER = json.JSONDecoder()
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
    blocks, position, outside = 0, 0, []
    while (start := text.find(TOOL_CALL_OPEN, position)) >= 0:
        outside.append(text[position:start])
        blocks += 1
        call, error, position = _read_block(text, start + len(TOOL_CALL_OPEN))
        if error:
            out.errors.append(f"tool call {blocks}: {error}")
        else:
            out.calls.append(call)  # type: ignore[arg-type]
    outside.append(text[position:])
    stray_close = sum(part.count(TOOL_CALL_CLOSE) for part in outside)
    if stray_close > 0:
        out.errors.append(f"{stray_close} '</tool_call>' without a matching '<tool_call>'")
    if not blocks and not out.errors:
        out.errors.append(
            "no tool call found: every turn must call a tool, written as "
            '<tool_call>{"name": "<tool>", "arguments": {...}}</tool_call>'
        )
    return out


def _read_block(text: str, body_start: int) -> tuple[ToolCall | None, str | None, int]:
    """Parse the JSON object after `<tool_call>` (which may itself contain '</tool_call>' in strings).

    Returns the call or an error, and where to continue scanning.
    """
    body_begin = len(text) - len(text[body_start:].lstrip())
    try:
        _, json_end = _DECODER.raw_decode(text, body_begin)
    except json.JSONDecodeError:
        json_end = -1
    if json_end >= 0:
        rest = text[json_end:]
        if rest.lstrip().startswith(TOOL_CALL_CLOSE):
            end = json_end + (len(rest) - len(rest.lstrip())) + len(TOOL_CALL_CLOSE)
            call, error = _parse_block(text[body_start:json_end])
            return call, error, end
    close = text.find(TOOL_CALL_CLOSE, body_start)
    if close < 0:
        return None, f"'<tool_call>' is never closed by '</tool_call>': {_clip(text[body_start:])}", len(text)
    call, error = _parse_block(text[body_start:close])
    return call, error or "unexpected text after the JSON object", close + len(TOOL_CALL_CLOSE)


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
    call = call.get("function", call)  # OpenAI-style {"type": "function", "function": {...}}
    arguments = call.get("arguments", {})
    args_json = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    return f'{TOOL_CALL_OPEN}\n{{"name": "{call["name"]}", "arguments": {args_json}}}\n{TOOL_CALL_CLOSE}'


def format_assistant_text(content: str, calls: list[ToolCall | dict[str, Any]]) -> str:
    """Raw assistant text for content plus structured calls, exactly as Qwen3's template renders a
    non-final assistant turn (reasoning normalised to `<think>\n..\n</think>\n\n`)."""
    content = content or ""
    text = content
    if "</think>" in content:
        reasoning = content.split("</think>")[0].rstrip("\n").split("<think>")[-1].lstrip("\n")
        content = content.split("</think>")[-1].lstrip("\n")
        text = f"<think>\n{reasoning.strip(chr(10))}\n</think>\n\n{content}" if reasoning else content
    for i, call in enumerate(calls):
        if i or content:
            text += "\n"
        text += format_tool_call(call)
    return text


def _clip(text: str, limit: int = 120) -> str:
    text = text.strip().replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + "..."
