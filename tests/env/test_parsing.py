"""The tool-call parser: every shape a model writes, and every way it goes wrong, never an exception."""

from __future__ import annotations

from pipeline.env.parsing import format_assistant_text, parse_tool_calls


def test_several_calls_after_think():
    text = (
        "<think>\nfind the key first\n</think>\n\n"
        '<tool_call>\n{"name": "searchEngine", "arguments": {"keyword": "amber-falcon"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "checkBudget", "arguments": {}}\n</tool_call>'
    )
    parsed = parse_tool_calls(text)
    assert parsed.errors == []
    assert parsed.reasoning == "find the key first"
    assert [c.to_dict() for c in parsed.calls] == [
        {"name": "searchEngine", "arguments": {"keyword": "amber-falcon"}},
        {"name": "checkBudget", "arguments": {}},
    ]


def test_arguments_as_json_string_are_accepted():
    parsed = parse_tool_calls('<tool_call>{"name": "readChunk", "arguments": "{\\"chunk_id\\": 3}"}</tool_call>')
    assert parsed.calls[0].arguments == {"chunk_id": 3} and not parsed.errors


def test_errors_name_the_problem():
    cases = {
        "plain text, no call": "no tool call found",
        "<tool_call>{not json}</tool_call>": "tool call 1: invalid JSON",
        '<tool_call>{"arguments": {}}</tool_call>': "missing or non-string 'name'",
        '<tool_call>{"name": "note", "arguments": [1]}</tool_call>': "'arguments' of note must be a JSON object",
        '<tool_call>{"name": "note"}': "is never closed",
        '{"name": "note"}</tool_call>': "without a matching '<tool_call>'",
        '<tool_call>["a"]</tool_call>': "expected a JSON object",
    }
    for text, expected in cases.items():
        parsed = parse_tool_calls(text)
        assert any(expected in e for e in parsed.errors), (text, parsed.errors)


def test_good_and_bad_blocks_in_one_message():
    text = '<tool_call>{"name": "checkBudget", "arguments": {}}</tool_call><tool_call>oops</tool_call>'
    parsed = parse_tool_calls(text)
    assert [c.name for c in parsed.calls] == ["checkBudget"] and len(parsed.errors) == 1


def test_format_then_parse_round_trips():
    calls = [{"name": "note", "arguments": {"key": "k", "summary": "ünïcode ✓", "content": "a\nb", "n": [1, 2.5]}}]
    text = format_assistant_text("Let me note this.", calls)
    parsed = parse_tool_calls(text)
    assert [c.to_dict() for c in parsed.calls] == calls and not parsed.errors
    assert not isinstance(parse_tool_calls(None), Exception)  # type: ignore[arg-type]
