"""Graders: is a final answer right for a task? `grade` dispatches on `task.kind` (SPEC 3).

- exact: SQuAD-style normalisation (lowercase, no punctuation, no articles, single spaces; values with a
  digit compared without spaces, so "QX-4471" = "qx 4471"); any of several accepted answers matches.
- multiple_choice: the letter in the usual wrappings ("B", "(B)", "B) text", "Answer: B") or the exact
  text of an option.
- set: items split on commas, semicolons, newlines and "and", normalised, compared as sets.
- judge: an LLM behind an OpenAI-compatible endpoint (`JudgeConfig`) answers yes/no to the prompt in
  `judge_prompt.txt`; tasks may add a grading rule in `metadata["judge_guidance"]`.

A missing answer (None) is always wrong. The functions are pure except the judge call, so rewards
can be recomputed from stored trajectories.
"""

from __future__ import annotations

import inspect
import logging
import re
import string
from collections.abc import Awaitable, Callable
from functools import cache, lru_cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from pipeline.tasks.schema import Task

logger = logging.getLogger(__name__)

JUDGE_PROMPT_PATH = Path(__file__).with_name("judge_prompt.txt")
DEFAULT_GUIDANCE = (
    "The response is correct if it gives the correct answer or an equivalent one (same meaning, possibly"
    " different wording); a response that gives a different answer, several conflicting answers, or only"
    " part of the required information is wrong."
)
JudgeFn = Callable[[str], "str | Awaitable[str]"]


class JudgeNotConfiguredError(ValueError):
    """A `judge` task was graded without a judge."""


class JudgeConfig(BaseModel):
    """Where the judge model is served (vLLM, `transformers serve`, or any OpenAI-compatible API)."""

    model_config = ConfigDict(frozen=True)

    base_url: str = Field(description="e.g. http://127.0.0.1:8000/v1")
    model: str
    api_key: str = Field(default="EMPTY", repr=False)
    temperature: float = 0.0
    max_tokens: int = Field(default=512, description="Room for a reasoning model to think before yes/no.")
    timeout: float = 120.0
    max_retries: int = 2
    prompt_path: str | None = Field(default=None, description="Prompt template; default judge_prompt.txt.")


# ---------------------------------------------------------------- exact and set


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lowercase, drop punctuation and articles, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in string.punctuation)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def value_key(normalized: str) -> str:
    """A normalised value in the form codes are compared in: with a digit in it, spacing does not count
    ("QX-4471", "qx 4471" and "QX4471" are one code; "4,417,209" is 4417209 already)."""
    return normalized.replace(" ", "") if any(c.isdigit() for c in normalized) else normalized


def grade_exact(answer: str, gold: str | list[str]) -> bool:
    golds = [gold] if isinstance(gold, str) else gold
    return value_key(normalize_answer(answer)) in {value_key(normalize_answer(g)) for g in golds}


_ITEM_SEPARATORS = re.compile(r"[,;\n]+")
_AND = re.compile(r"\band\b|&", re.IGNORECASE)
_BULLET = re.compile(r"^\s*(?:[-*•]+|\d+[.)])\s+")


def split_items(text: str, split_and: bool = True) -> set[str]:
    """Normalised items of a list written as prose, one per line, or as bullets."""
    pieces = [_BULLET.sub("", p) for p in _ITEM_SEPARATORS.split(text)]
    if split_and:
        pieces = [q for p in pieces for q in _AND.split(p)]
    return {n for n in (normalize_answer(p) for p in pieces) if n}


def grade_set(answer: str, gold: str | list[str]) -> bool:
    # Gold items are kept whole ("salt and pepper" stays one item); the answer is tried both ways.
    target = split_items(gold) if isinstance(gold, str) else {normalize_answer(g) for g in gold} - {""}
    target = {value_key(t) for t in target}
    return any({value_key(i) for i in split_items(answer, split_and)} == target for split_and in (True, False))


# ---------------------------------------------------------------- multiple choice

_LETTER_ONLY = re.compile(r"^\(?([A-Za-z])\)?[.:)\]]?$")
_LETTER_THEN_TEXT = re.compile(r"^\(?([A-Z])[).:\]]\s*\S")
_LETTER_AFTER_KEYWORD = re.compile(r"(?i:answer|option|choice)\s*(?:(?i:is)|:|=)?\s*\(?([A-Z])\b")


def choice_letter(answer: str, choices: list[str]) -> str | None:
    """The option letter an answer picks, or None if it picks none clearly."""
    letters = string.ascii_uppercase[: len(choices)]
    text = answer.strip().strip("*`'\" ")
    normalized = normalize_answer(text)
    for letter, choice in zip(letters, choices, strict=False):
        if normalized and normalized == normalize_answer(choice):
            return letter
    for pattern in (_LETTER_ONLY, _LETTER_THEN_TEXT, _LETTER_AFTER_KEYWORD):
        match = pattern.search(text)
        if match:
            letter = match.group(1).upper()
            return letter if letter in letters else None
    return None


def gold_letter(task: Task) -> str:
    gold = task.answer if isinstance(task.answer, str) else task.answer[0]
    letter = choice_letter(gold, task.choices or [])
    if letter is None:
        raise ValueError(f"task {task.id!r}: gold answer {gold!r} is not an option letter or option text")
    return letter


def grade_multiple_choice(task: Task, answer: str) -> bool:
    return choice_letter(answer, task.choices or []) == gold_letter(task)


# ---------------------------------------------------------------- judge


@cache
def load_judge_prompt(path: str | None = None) -> str:
    return Path(path or JUDGE_PROMPT_PATH).read_text(encoding="utf-8")


def build_judge_prompt(task: Task, answer: str, template: str | None = None) -> str:
    gold = task.answer if isinstance(task.answer, str) else "any of: " + "; ".join(task.answer)
    guidance = str(task.metadata.get("judge_guidance") or DEFAULT_GUIDANCE)
    template = template if template is not None else load_judge_prompt()
    return template.format(question=task.question, gold=gold, response=answer.strip(), guidance=guidance)


_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_VERDICT = re.compile(r"\b(yes|no)\b", re.IGNORECASE)


def parse_verdict(text: str) -> bool | None:
    """True for yes, False for no, None if the judge said neither (reasoning blocks are ignored)."""
    text = _THINK.sub(" ", text)
    if "</think>" in text.lower():  # template opened <think> in the prompt: keep what follows it
        text = text[text.lower().rindex("</think>") + len("</think>") :]
    match = _VERDICT.search(text)
    return None if match is None else match.group(1).lower() == "yes"


def _messages(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


@lru_cache(maxsize=8)
def _sync_client(config: JudgeConfig):
    from openai import OpenAI

    return OpenAI(
        base_url=config.base_url, api_key=config.api_key, timeout=config.timeout, max_retries=config.max_retries
    )


def call_judge(prompt: str, config: JudgeConfig) -> str:
    """One judge completion (sync)."""
    response = _sync_client(config).chat.completions.create(
        model=config.model,
        messages=_messages(prompt),
        temperature=config.temperature,
        max_tokens=config.max_tokens,
    )
    return response.choices[0].message.content or ""


async def acall_judge(prompt: str, config: JudgeConfig) -> str:
    """One judge completion (async); a fresh client per call, so it is safe on any event loop."""
    from openai import AsyncOpenAI

    async with AsyncOpenAI(
        base_url=config.base_url, api_key=config.api_key, timeout=config.timeout, max_retries=config.max_retries
    ) as client:
        response = await client.chat.completions.create(
            model=config.model,
            messages=_messages(prompt),
            temperature=config.temperature,
            max_tokens=config.max_tokens,
        )
    return response.choices[0].message.content or ""


def _verdict(task: Task, reply: str) -> bool:
    verdict = parse_verdict(reply)
    if verdict is None:
        logger.warning("task %s: judge reply has no yes/no, graded wrong: %r", task.id, reply[:200])
        return False
    return verdict


def _judge_prompt(task: Task, answer: str, judge: JudgeConfig | JudgeFn | None) -> str:
    if judge is None:
        raise JudgeNotConfiguredError(
            f"task {task.id!r} has kind 'judge' but no judge is configured; pass "
            "judge=JudgeConfig(base_url=..., model=...) (or a callable prompt -> reply)"
        )
    template = load_judge_prompt(judge.prompt_path) if isinstance(judge, JudgeConfig) else None
    return build_judge_prompt(task, answer, template)


# ---------------------------------------------------------------- dispatch


def _grade_local(task: Task, answer: str) -> bool:
    if task.kind == "exact":
        return grade_exact(answer, task.answer)
    if task.kind == "multiple_choice":
        return grade_multiple_choice(task, answer)
    if task.kind == "set":
        return grade_set(answer, task.answer)
    raise ValueError(f"task {task.id!r}: unknown kind {task.kind!r}")


def grade(task: Task, answer: str | None, judge: JudgeConfig | JudgeFn | None = None) -> bool:
    """Is `answer` right for `task`? `judge` (a config, or a callable prompt -> reply for tests and
    custom clients) is needed only for kind `judge`."""
    if answer is None:
        return False
    if task.kind != "judge":
        return _grade_local(task, answer)
    prompt = _judge_prompt(task, answer, judge)
    reply = call_judge(prompt, judge) if isinstance(judge, JudgeConfig) else judge(prompt)  # type: ignore[misc]
    if inspect.isawaitable(reply):
        if inspect.iscoroutine(reply):
            reply.close()  # never awaited: close it so no "coroutine was never awaited" warning
        raise TypeError("grade() got an async judge callable; use agrade()")
    return _verdict(task, reply)


async def agrade(task: Task, answer: str | None, judge: JudgeConfig | JudgeFn | None = None) -> bool:
    """`grade` for asyncio code (rollouts); the judge callable may be sync or async."""
    if answer is None:
        return False
    if task.kind != "judge":
        return _grade_local(task, answer)
    prompt = _judge_prompt(task, answer, judge)
    reply = await acall_judge(prompt, judge) if isinstance(judge, JudgeConfig) else judge(prompt)  # type: ignore[misc]
    if inspect.isawaitable(reply):
        reply = await reply
    return _verdict(task, reply)
