"""RULER needle-in-a-haystack -> tasks.

Format followed: the `<save_dir>/<task>/validation.jsonl` files RULER's `scripts/data/prepare.py`
writes through `scripts/data/synthetic/niah.py` (github.com/NVIDIA/RULER): one object per line with
"index", "input" (the whole filled-in prompt), "outputs" (the list of needle values to recall),
"length" and, in newer versions, "length_w_model_temp", "answer_prefix" and "token_position_answer".

RULER's "input" is one prompt: an instruction line ("Some special magic numbers are hidden within the
following text. ..."), the haystack, and the question ("What are all the special magic numbers for X
mentioned in the provided text?"), possibly wrapped in a model chat template and followed by the answer
prefix. The wording changes between RULER versions and the harnesses that re-render its files (with or
without the instruction, or one of its sentences, the question before or after the haystack), so the
loader relies on no template: the question is the sentence that asks about the "special magic" values
(ends in "?"), the haystack is the stretch between questions that holds the needle values ("outputs"),
and short lead-in lines that talk about the hidden values, chat-template markup and the answer prefix
are dropped. It fails with the file:line when no question, or no haystack holding every needle, is
found. Kind is `exact` for one output, `set` for several.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pipeline.tasks.loaders._common import (
    DEFAULT_INLINE_MAX_CHARS,
    LoadedTasks,
    LoaderError,
    collect,
    field,
    iter_jsonl,
    place_documents,
)
from pipeline.tasks.schema import Task

# The question: one sentence (no . ! ? inside) about the special magic values, ending in "?". The regex starts at
# the literal "special magic" (fast on haystacks of millions of characters); `_questions` finds the sentence start.
QUESTION_TAIL = re.compile(r"\bspecial magic\b[^\n.?!]*\?")
MAX_SENTENCE_CHARS = 1000
# Chat-template markup of the model wrappers RULER and the harnesses use (ChatML, Llama 2/3, Phi-3, Command R,
# ChatGLM, Jamba, Vicuna): each becomes a line break, a boundary like the template's own. A template wraps the
# prompt, so only its first and last TEMPLATE_CHARS are searched.
CHAT_MARKUP = re.compile(
    r"<\|[^|<>\n]{1,40}\|>(?:user|assistant|system)?|\[/?INST\]|<</?SYS>>|</?s>|\[gMASK\]sop|(?:USER|ASSISTANT):"
)
TEMPLATE_CHARS = 1000
# A lead-in line says the values are hidden in the text; a needle line states one ("... for key is: value").
INSTRUCTION_HINT = re.compile(r"\b(?:hidden|memori[sz]e|quiz|special magic|following text|text below)\b", re.I)
NEEDLE = re.compile(r"\bspecial magic [\w-]+ for .+? (?:is|are)\b")
# The answer prefix some versions leave at the end of "input" ("The special magic numbers for X ... are"),
# searched for in the last MAX_SENTENCE_CHARS of the haystack.
ANSWER_PREFIX = re.compile(
    r"(?:(?<=[\n.?!])|\A)[^\n.?!]*\bspecial magic\b[^\n.?!]*\b(?:are|is)\s*:?\s*\Z|\bAnswer:\s*\Z"
)
LEAD_IN_LINES = 5  # lines at the top of the haystack stretch that may hold the instruction
LEAD_IN_MAX_CHARS = 400  # longer lines are haystack (essay paragraphs)


def load_ruler(
    path: str | Path,
    *,
    name: str | None = None,
    docs_dir: str | Path | None = None,
    inline_max_chars: int = DEFAULT_INLINE_MAX_CHARS,
    skip_invalid: bool = False,
) -> LoadedTasks:
    """Tasks from one RULER NIAH jsonl. `name` (default: the task folder, e.g. niah_multikey_2) goes
    into the ids, so several RULER files can share a task file."""
    path = Path(path)
    name = name or (path.parent.name if path.stem in ("validation", "test") else path.stem)

    def build(where: str, record: Any) -> Task:
        index = field(record, "index", (int, str), where)
        outputs = field(record, "outputs", list, where)
        if not outputs or not all(isinstance(o, str | int) and str(o).strip() for o in outputs):
            raise LoaderError(f"{where}: field 'outputs' must be a non-empty list of strings")
        answers = [str(o).strip() for o in outputs]
        prefix = record.get("answer_prefix") if isinstance(record.get("answer_prefix"), str) else None
        haystack, question = split_prompt(field(record, "input", str, where), where, answers, prefix)
        metadata = {"benchmark": "ruler", "task": name, "index": index}
        for key in ("length", "length_w_model_temp", "token_position_answer"):
            if isinstance(record.get(key), int):
                metadata[key] = record[key]
        return Task(
            id=f"ruler/{name}/{index}",
            kind="exact" if len(answers) == 1 else "set",
            question=question,
            answer=answers[0] if len(answers) == 1 else answers,
            metadata=metadata,
            **place_documents([haystack], docs_dir, inline_max_chars),
        )

    return collect(iter_jsonl(path), build, skip_invalid=skip_invalid, desc=f"ruler {name}")


def split_prompt(
    text: str, where: str = "input", outputs: list[str] | None = None, answer_prefix: str | None = None
) -> tuple[str, str]:
    """(haystack, question) from a RULER NIAH prompt of any version or harness (see the module docstring).

    The questions cut the prompt into stretches; the haystack is the one holding the most needle values
    (`outputs`; without them, the longest), and the question is the one right after it (else right before).
    """
    plain = _without_markup(text)
    questions = _questions(plain)
    if not questions:
        question = "a sentence on the special magic values that ends in '?'"
        raise LoaderError(f"{where}: field 'input' has no RULER NIAH question ({question})")
    bounds = [0, *(b for span in questions for b in span), len(plain)]
    stretches = [(bounds[i], bounds[i + 1]) for i in range(0, len(bounds), 2)]
    values = outputs or []
    best = max(
        range(len(stretches)),
        key=lambda i: (sum(v in plain[slice(*stretches[i])] for v in values), stretches[i][1] - stretches[i][0]),
    )
    question = questions[best] if best < len(questions) else questions[best - 1]
    haystack = _trim(plain[slice(*stretches[best])], values, answer_prefix)
    if not haystack:
        raise LoaderError(f"{where}: field 'input' has an empty haystack next to the question")
    missing = [v for v in values if v not in haystack]
    if missing:
        raise LoaderError(f"{where}: field 'input' has no haystack holding the needle value(s) {missing} of 'outputs'")
    return haystack, plain[slice(*question)].strip()


def _without_markup(text: str) -> str:
    """The prompt with the chat template's markup at either end turned into line breaks."""
    if len(text) <= 2 * TEMPLATE_CHARS:
        return CHAT_MARKUP.sub("\n", text)
    head, middle, tail = text[:TEMPLATE_CHARS], text[TEMPLATE_CHARS:-TEMPLATE_CHARS], text[-TEMPLATE_CHARS:]
    return CHAT_MARKUP.sub("\n", head) + middle + CHAT_MARKUP.sub("\n", tail)


def _questions(plain: str) -> list[tuple[int, int]]:
    """(start, end) of each question sentence: from the sentence boundary before "special magic" to the "?"."""
    spans = []
    for match in QUESTION_TAIL.finditer(plain):
        floor = max(0, match.start() - MAX_SENTENCE_CHARS)
        cut = max(plain.rfind(mark, floor, match.start()) for mark in "\n.?!")
        spans.append((cut + 1 if cut >= 0 else floor, match.end()))
    return spans


def _trim(stretch: str, values: list[str], answer_prefix: str | None) -> str:
    """The haystack inside its stretch: without the lead-in lines up to the last one that reads like the
    instruction (a short line about the hidden values that states none), and without a trailing answer prefix."""
    lines = stretch.strip().split("\n")
    lead_in = 0
    for i, line in enumerate(lines[:LEAD_IN_LINES]):
        if len(line) > LEAD_IN_MAX_CHARS or NEEDLE.search(line) or any(v in line for v in values):
            break
        if INSTRUCTION_HINT.search(line):
            lead_in = i + 1
    haystack = "\n".join(lines[lead_in:]).strip()
    prefix = (answer_prefix or "").strip()
    if prefix and haystack.endswith(prefix):
        haystack = haystack[: -len(prefix)].strip()
    tail = len(haystack) - MAX_SENTENCE_CHARS
    answer = ANSWER_PREFIX.search(haystack, max(0, tail))
    return haystack[: answer.start()].strip() if answer else haystack
