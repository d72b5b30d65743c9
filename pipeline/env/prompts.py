"""The words the Pensieve environment says to the model: system prompt, task message, tool headers."""

from __future__ import annotations

from typing import Any

SYSTEM_PROMPT = """You answer a question about a long input that is NOT in your context. Work only through tools:
measure the input (analyzeText), index it (buildIndex), search it (searchEngine), read chunks (readChunk),
keep the facts you need in the notebook (note, updateNote, readNote), and free context by deleting
messages you no longer need (deleteContext with their msg ids; every tool result starts with its msg id
and the id of the message that called it). Deleted messages become short stubs. Check your budget
(checkBudget) and end with finish(answer). Call at least one tool in every message."""
COMPACT_STUBS_NOTE = """Adjacent stubs merge into one range stub ("[msgs 12-30 deleted | tools: readChunk x9, note x9 |
read chunks 0-8, progress 9/40]"); the ids inside a range are already deleted."""


def system_prompt(config: Any) -> str:
    """The system prompt of an EnvConfig: short for `compact_prompts`; with `compact_stubs` it also says what a
    range stub is."""
    prompt = COMPACT_SYSTEM_PROMPT if config.compact_prompts else SYSTEM_PROMPT
    return prompt + ("\n" + COMPACT_STUBS_NOTE if config.compact_stubs else "")


# The same loop in fewer words, for small students (env `compact_prompts: true`): every row carries it.
COMPACT_SYSTEM_PROMPT = """Answer the question about a long input you cannot see. Use the tools: index, search, read a
chunk, note the facts, delete messages you no longer need (by msg id), finish(answer). One tool call or more per
message."""


def task_message(question: str, n_chars: int, notebook_listing: str, choices: list[str] | None = None) -> str:
    """The first user message: the question, the input's size, and the current notebook list."""
    parts = [f"Question: {question}"]
    if choices:
        parts.append("Options:\n" + "\n".join(f"{chr(65 + i)}. {c}" for i, c in enumerate(choices)))
        parts.append("Answer with the letter of the correct option.")
    parts.append(f"The input is a text of {n_chars} characters, available only through the tools.")
    parts.append(notebook_listing)
    return "\n\n".join(parts)


def tool_header(msg_id: int, tool: str, call_id: int, extra: str = "") -> str:
    return f"[msg {msg_id} | {tool} | called by msg {call_id}{' | ' + extra if extra else ''}]"


def tool_stub(msg_id: int, tool: str, call_id: int, extra: str = "") -> str:
    return tool_header(msg_id, tool, call_id, extra) + " content deleted"


def assistant_stub(msg_id: int, tool_names: list[str]) -> str:
    called = ", ".join(tool_names) if tool_names else "no tool"
    return f"[msg {msg_id} deleted | called {called}]"


def range_stub(msg_ids: str, tool_counts: dict[str, int], chunks_read: str, progress: str) -> str:
    """One stub for a run of adjacent stubs: which ids, which tools (how often), reading progress."""
    tools = ", ".join(f"{name} x{n}" for name, n in tool_counts.items()) or "no tool"
    reading = f" | read chunks {chunks_read}, {progress}" if chunks_read else ""
    return f"[msgs {msg_ids} deleted | tools: {tools}{reading}]"
