"""RULER needle-in-a-haystack -> tasks.

Format followed: the `<save_dir>/<task>/validation.jsonl` files RULER's `scripts/data/prepare.py`
writes through `scripts/data/synthetic/niah.py` (github.com/NVIDIA/RULER): one object per line with
"index", "input" (the whole filled-in prompt), "outputs" (the list of needle values to recall),
"length" and, in newer versions, "length_w_model_temp", "answer_prefix" and "token_position_answer".

RULER's "input" is one prompt: an instruction line ("Some special magic numbers are hidden within the
following text. ... afterwards."; "A ... is ..." for one needle), the haystack, and the question
("What are all the special magic numbers for X mentioned in the provided text?"), possibly wrapped in
a model chat template. The loader cuts it into the haystack (the document) and the question, drops the
template and the instruction (it only says the needles are in the text), and fails with the file:line
if the NIAH instruction or question cannot be found. Kind is `exact` for one output, `set` for several.
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

_NEEDLE_TYPE = r"[\w-]+"
INSTRUCTION = re.compile(
    rf"(?:Some|A) special magic ({_NEEDLE_TYPE}) (?:are|is) hidden within the following text\."
    rf" Make sure to memorize it\. I will quiz you about the {_NEEDLE_TYPE} afterwards\."
)
QUESTION = re.compile(
    rf"What (?:are all|is) the special magic {_NEEDLE_TYPE} for [^\n?]+? mentioned in the provided text\?"
)


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
        haystack, question = split_prompt(field(record, "input", str, where), where)
        answers = [str(o).strip() for o in outputs]
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


def split_prompt(text: str, where: str = "input") -> tuple[str, str]:
    """(haystack, question) from a RULER NIAH prompt."""
    intro = INSTRUCTION.search(text)
    if intro is None:
        raise LoaderError(f"{where}: field 'input' has no RULER NIAH instruction ('... special magic ...')")
    questions = list(QUESTION.finditer(text, intro.end()))
    if not questions:
        raise LoaderError(f"{where}: field 'input' has no RULER NIAH question after the haystack")
    last = questions[-1]
    haystack = text[intro.end() : last.start()].strip()
    if not haystack:
        raise LoaderError(f"{where}: field 'input' has an empty haystack")
    return haystack, last.group(0)
