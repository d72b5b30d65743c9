"""InfiniteBench En.MC (multiple choice over a whole novel) -> tasks.

Format followed: `longbook_choice_eng.jsonl` of the InfiniteBench release
(huggingface.co/datasets/xinrongzhang2022/InfiniteBench; reader in github.com/OpenBMB/InfiniteBench
src/eval_utils.py). One JSON object per line with "id", "context" (the novel), "input" (the
question), "options" (four option texts, A-D in order) and "answer": a list holding the correct
option's text, or [text, letter]; the letter is options.index(text), as InfiniteBench's
`get_answer` computes it.

Each line carries the full novel (~0.5-2 MB), and many questions share one novel, so with a
`docs_dir` the context is written once per distinct novel (content-addressed file name) and the
task keeps a `document_path`; without one it stays inline in `documents`.
"""

from __future__ import annotations

import string
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


def load_infinitebench(
    path: str | Path,
    *,
    docs_dir: str | Path | None = None,
    inline_max_chars: int = DEFAULT_INLINE_MAX_CHARS,
    skip_invalid: bool = False,
) -> LoadedTasks:
    """Tasks from `longbook_choice_eng.jsonl`."""
    path = Path(path)

    def build(where: str, record: Any) -> Task:
        raw_id = field(record, "id", (int, str), where)
        context = field(record, "context", str, where)
        question = field(record, "input", str, where)
        options = field(record, "options", list, where)
        if len(options) < 2 or not all(isinstance(o, str) and o.strip() for o in options):
            raise LoaderError(f"{where}: field 'options' must be a list of at least two non-empty strings")
        letter = _answer_letter(field(record, "answer", (list, str), where), options, where)
        return Task(
            id=f"infinitebench/longbook_choice_eng/{raw_id}",
            kind="multiple_choice",
            question=question,
            answer=letter,
            choices=options,
            metadata={"benchmark": "infinitebench", "subset": "longbook_choice_eng", "source_id": raw_id},
            **place_documents([context], docs_dir, inline_max_chars),
        )

    return collect(iter_jsonl(path), build, skip_invalid=skip_invalid, desc=f"infinitebench {path.name}")


def _answer_letter(answer: list | str, options: list[str], where: str) -> str:
    letters = string.ascii_uppercase[: len(options)]
    items = [answer] if isinstance(answer, str) else answer
    if not items or not isinstance(items[0], str):
        raise LoaderError(f"{where}: field 'answer' must hold the correct option's text")
    if len(items) == 2 and isinstance(items[1], str) and items[1].strip() in letters:
        return items[1].strip()
    stripped = [o.strip() for o in options]
    if items[0].strip() in stripped:
        return letters[stripped.index(items[0].strip())]
    raise LoaderError(f"{where}: field 'answer' {items[0]!r} is not one of the 'options'")
