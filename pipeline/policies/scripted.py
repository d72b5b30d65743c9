"""The scripted expert: solves generated NIAH and multi-hop tasks with the ideal Pensieve loop.

analyzeText -> checkBudget -> buildIndex -> for each fact: searchEngine -> readChunk -> note ->
deleteContext -> ... -> finish. Questions and chunks are read without templates (pipeline/policies/
reading.py): the key is what a question says besides its scaffolding, the value is the value-looking
token of the sentence that holds the key. A search that finds nothing is recovered from (other
keywords, then a scan of a short input), and a share of episodes rehearse that on purpose.

It decides from the visible context alone (the question, the notebook list in the task message, the
tool messages and their stubs), the same information a model has, so its trajectories are honest
demonstrations: nothing is read from the task's answer.
"""

from __future__ import annotations

import ast
import re
import zlib
from dataclasses import dataclass
from typing import Any

from pipeline.env.parsing import ToolCall, format_assistant_text
from pipeline.policies.base import Action, Message
from pipeline.policies.reading import (
    decoy_keyword,
    find_fact,
    hint_words,
    is_hop_question,
    question_keys,
    search_pieces,
)

_HEADER = re.compile(r"^\[msg (\d+) \| (\w+) \| called by msg (\d+)(?: \| ([^\]]*))?\]")
_NOTE_LINE = re.compile(r"^- (.+?): (.*)$", re.MULTILINE)
_HIT = re.compile(r"^chunk (\d+) \(score", re.MULTILINE)
_AVAILABLE = re.compile(r"(\d+) available")
_ROUNDS_LEFT = re.compile(r"(\d+) left of")
_INPUT_CHARS = re.compile(r"a text of (\d+) characters")
_PROGRESS = re.compile(r"progress (\d+)/(\d+)")
_SEARCHED = re.compile(r"^(?:No chunk matches (.+)\.|\d+ results for (.+), best first:)$")
_RANGE_TOOLS = re.compile(r"^\[msgs [\d, -]+ deleted \| tools: ([^|\]]*)")  # env.compact_stubs


@dataclass
class Goal:
    """One fact to find: the note key it is stored under, the key to look for, and what its value is
    (`value`: a token with a digit; `link`: also a codeword, the key of the next hop)."""

    key: str
    keyword: str
    want: str = "value"


@dataclass
class ToolMessage:
    msg_id: int
    tool: str
    call_id: int
    extra: str
    body: str
    stub: bool


def _goals(question: str, notes: dict[str, str]) -> tuple[list[Goal], str] | None:
    """The facts the question needs (given notes so far) and how to build the answer from notes."""
    keys = question_keys(question)
    if not keys:
        return None
    if is_hop_question(question):
        person = keys[0]
        goals = [Goal(f"codeword of {person}", person, "link")]
        codeword = notes.get(f"codeword of {person}")
        if codeword:
            goals.append(Goal(f"value of {codeword}", codeword))
        return goals, "last"
    return [Goal(k, k) for k in keys], "numbers"


def _searched_keyword(search: ToolMessage) -> str | None:
    m = _SEARCHED.match(search.body.split("\n", 1)[0])
    if not m:
        return None
    try:
        return str(ast.literal_eval(m.group(1) or m.group(2)))
    except (ValueError, SyntaxError):
        return None


class ScriptedExpert:
    """A policy that needs no model; deterministic given the context.

    `recovery_share` of the questions (chosen by a hash of the question, so the same ones every run)
    are recovery episodes: the first search uses a plausible wrong keyword (`decoy_keyword`) that
    finds nothing, a turn returned with `trained=False` so curate masks it; the expert then searches
    again with the key, and reads back the note it answers from before finishing. Any search that
    finds nothing, deliberate or not, is followed the same way: the key's pieces, then (inputs of at
    most `max_scan_chars` characters) a budget check and a scan of the chunks in order.

    `note_retry_share` of the questions (another hash) rehearse a failed note: the first note of the
    episode carries its key only (the failure a sampled student makes most: it closes the arguments after
    the key), untrained, and after the environment's error the expert writes the note again from the chunk
    it read. A student that never saw a failed note deletes its context after one and guesses.
    """

    name = "scripted"

    def __init__(
        self,
        chunk_size: int = 4000,
        overlap: int = 64,
        fill_fraction: float = 0.3,
        recovery_share: float = 0.0,
        max_reads_per_search: int = 3,
        max_scan_chars: int = 8000,
        note_retry_share: float = 0.0,
    ) -> None:
        for name, share in (("recovery_share", recovery_share), ("note_retry_share", note_retry_share)):
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"{name}={share} must be between 0 and 1")
        self.chunk_size, self.overlap, self.fill_fraction = chunk_size, overlap, fill_fraction
        self.recovery_share, self.note_retry_share = recovery_share, note_retry_share
        self.max_reads_per_search, self.max_scan_chars = max_reads_per_search, max_scan_chars

    async def act(self, messages: list[Message], tools: list[dict[str, Any]], seed: int | None = None) -> str | Action:
        return self.decide_action(messages)

    async def aclose(self) -> None:
        return None

    def decide(self, messages: list[Message]) -> str:
        return self.decide_action(messages).text

    def decide_action(self, messages: list[Message]) -> Action:
        call, trained = self._next_call(messages)
        return Action(format_assistant_text("", [call]), trained=trained)

    def is_recovery(self, question: str) -> bool:
        """Whether this question's episode rehearses a recovery (a stable choice per question)."""
        return _picked(question.encode(), self.recovery_share)

    def is_note_retry(self, question: str) -> bool:
        """Whether this question's episode rehearses a failed note (a stable choice, apart from recoveries)."""
        return _picked(b"note retry: " + question.encode(), self.note_retry_share)

    def _next_call(self, messages: list[Message]) -> tuple[ToolCall, bool]:
        task = messages[1]["content"]
        question = task.split("\n\n", 1)[0].removeprefix("Question: ")
        notes = {k: v for k, v in _NOTE_LINE.findall(task)}
        tool_msgs = [t for m in messages if m["role"] == "tool" and (t := _tool_message(m["content"]))]
        seen = {t.tool for t in tool_msgs}
        seen |= {n for m in messages if (r := _RANGE_TOOLS.match(m["content"])) for n in re.findall(r"(\w+) x", r[1])}
        last = _last_turn_results(messages)
        if "analyzeText" not in seen:
            return ToolCall("analyzeText", {}), True
        if "checkBudget" not in seen:
            return ToolCall("checkBudget", {}), True
        if "buildIndex" not in seen:
            budget = next((t.body for t in tool_msgs if t.tool == "checkBudget" and not t.stub), "")
            available = int(m.group(1)) if (m := _AVAILABLE.search(budget)) else self.chunk_size * 4
            # a tight budget shrinks chunks, not below 256 tokens (or the teacher's own size, when it is smaller)
            size = max(min(256, self.chunk_size), min(self.chunk_size, int(available * self.fill_fraction)))
            return ToolCall("buildIndex", {"chunk_size": size, "overlap": min(self.overlap, size // 4)}), True
        plan = _goals(question, notes)
        if plan is None:
            return ToolCall("finish", {"answer": "unknown"}), True
        goals, combine = plan
        if last and last.tool == "note" and not last.body.startswith("Error"):
            live = [t.msg_id for t in tool_msgs if not t.stub]
            live += [t.call_id for t in tool_msgs if not t.stub]
            return ToolCall("deleteContext", {"msg_id": sorted(set(live))}), True
        recovery = self.is_recovery(question)
        open_goals = [g for g in goals if g.key not in notes]
        if not open_goals:
            goal_start = max((t.msg_id for t in tool_msgs if t.tool == "note"), default=0)
            verified = any(t.tool == "readNote" and t.msg_id > goal_start for t in tool_msgs)
            if recovery and not verified:
                return ToolCall("readNote", {"key": goals[-1].key}), True
            return ToolCall("finish", {"answer": _answer(goals, notes, combine)}), True
        goal = open_goals[0]
        read = _chunk_to_note(last, tool_msgs)
        if read and (fact := find_fact(read.body, goal.keyword, goal.want, hint_words(question, [goal.keyword]))):
            value, sentence = fact
            if self.is_note_retry(question) and not any(t.tool == "note" for t in tool_msgs):
                return ToolCall("note", {"key": goal.key}), False  # rehearsed failure: context, not trained
            return ToolCall("note", {"key": goal.key, "summary": value, "content": sentence}), True
        return self._find(goal, goals, notes, combine, tool_msgs, task, recovery and goal is goals[0])

    def _find(
        self,
        goal: Goal,
        goals: list[Goal],
        notes: dict[str, str],
        combine: str,
        tool_msgs: list[ToolMessage],
        task: str,
        decoy_first: bool,
    ) -> tuple[ToolCall, bool]:
        """The next step towards `goal`: read the latest search's best unread hits, else search the
        next keyword, else scan the input if it is short, else give up with what the notes hold."""
        goal_start = max((t.msg_id for t in tool_msgs if t.tool == "note"), default=0)
        mine = [t for t in tool_msgs if t.msg_id > goal_start]
        searches = [t for t in mine if t.tool == "searchEngine" and not t.stub]
        if searches:
            latest = searches[-1]
            read = {
                int(c)
                for t in mine
                if t.tool == "readChunk" and t.msg_id > latest.msg_id
                for c in re.findall(r"chunk (\d+),", t.extra)
            }
            hits = [int(c) for c in _HIT.findall(latest.body)][: self.max_reads_per_search]
            for chunk_id in hits:
                if chunk_id not in read:
                    return ToolCall("readChunk", {"chunk_id": chunk_id}), True
        tried = {k.lower() for s in searches if (k := _searched_keyword(s)) is not None}
        decoy = decoy_keyword(goal.keyword)
        keywords = ([decoy] if decoy_first else []) + [goal.keyword] + search_pieces(goal.keyword)
        for keyword in keywords:
            if keyword.lower() not in tried:
                return ToolCall("searchEngine", {"keyword": keyword}), keyword != decoy or not decoy_first
        give_up = ToolCall("finish", {"answer": _answer(goals, notes, combine) or "unknown"}), True
        last_search = searches[-1].msg_id if searches else goal_start
        marker = next((t for t in mine if t.tool == "checkBudget" and t.msg_id > last_search), None)
        if marker is None:
            first_search = min((t.msg_id for t in tool_msgs if t.tool == "searchEngine"), default=goal_start)
            scanned_before = any(t.tool == "checkBudget" and first_search < t.msg_id <= goal_start for t in tool_msgs)
            n_chars = int(m.group(1)) if (m := _INPUT_CHARS.search(task)) else None
            if scanned_before or n_chars is None or n_chars > self.max_scan_chars:
                return give_up
            return ToolCall("checkBudget", {}), True  # before a scan: is there room for it?
        left = int(m.group(1)) if (m := _ROUNDS_LEFT.search(marker.body)) else 0
        progress = [(int(a), int(b)) for t in mine if t.msg_id > marker.msg_id for a, b in _PROGRESS.findall(t.extra)]
        done = bool(progress) and progress[-1][0] >= progress[-1][1]
        if done or left < 4 + (progress[-1][1] - progress[-1][0] if progress else 2):
            return give_up
        return ToolCall("readChunk", {"scan": True}), True


def _tool_message(content: str) -> ToolMessage | None:
    m = _HEADER.match(content)
    if not m:
        return None
    body = content.split("\n", 1)[1] if "\n" in content else ""
    stub = content.endswith("content deleted") and "\n" not in content
    return ToolMessage(int(m.group(1)), m.group(2), int(m.group(3)), m.group(4) or "", body, stub)


def _picked(key: bytes, share: float) -> bool:
    """A stable choice of `share` of the keys (by hash), the same on every run."""
    return zlib.crc32(key) % 10_000 < round(share * 10_000)


def _chunk_to_note(last: ToolMessage | None, tool_msgs: list[ToolMessage]) -> ToolMessage | None:
    """The chunk a note would be written from: the one just read, or, after a note that failed, the last chunk
    still in context (the failed note is written again from it)."""
    if last and last.tool == "readChunk" and not last.stub:
        return last
    if last and last.tool == "note" and last.body.startswith("Error"):
        return next((t for t in reversed(tool_msgs) if t.tool == "readChunk" and not t.stub), None)
    return None


def _last_turn_results(messages: list[Message]) -> ToolMessage | None:
    """The last tool message after the last assistant message, if any."""
    for message in reversed(messages):
        if message["role"] == "assistant":
            return None
        if message["role"] == "tool":
            return _tool_message(message["content"])
    return None


def _answer(goals: list[Goal], notes: dict[str, str], combine: str) -> str:
    values = [notes[g.key] for g in goals if g.key in notes]
    if combine == "last":
        return values[-1] if values else ""
    return ", ".join(values)
