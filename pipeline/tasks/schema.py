"""The task record every loader and generator produces and every stage reads (SPEC 3).

A task is one question over one input. The input is either inline (`documents`) or a file next to the
task file (`document_path`), so multi-megabyte haystacks need not sit inside a JSONL line.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, model_validator

TaskKind = Literal["exact", "multiple_choice", "set", "judge"]
DOCUMENT_SEPARATOR = "\n\n"


class Task(BaseModel):
    """One question over one long input; `kind` picks the grader."""

    id: str = Field(min_length=1, description="Unique within a task file.")
    kind: TaskKind = Field(description="Grader: exact, multiple_choice, set or judge.")
    question: str = Field(min_length=1)
    documents: list[str] | None = Field(default=None, description="Inline input, joined by a blank line.")
    document_path: str | None = Field(
        default=None, description="Input file (UTF-8 text); relative paths resolve against the task file."
    )
    answer: str | list[str] = Field(
        description="Gold answer. exact/judge: a string or a list of accepted strings; set: the list of "
        "items; multiple_choice: the letter (A, B, ...)."
    )
    choices: list[str] | None = Field(default=None, description="Options for multiple_choice, in order.")
    metadata: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> Task:
        if (self.documents is None) == (self.document_path is None):
            raise ValueError("exactly one of 'documents' or 'document_path' must be given")
        if self.kind == "multiple_choice" and not self.choices:
            raise ValueError("kind 'multiple_choice' needs 'choices'")
        return self

    def load_input(self, base_dir: str | Path | None = None) -> str:
        """The full input text the environment serves through its tools."""
        if self.documents is not None:
            return DOCUMENT_SEPARATOR.join(self.documents)
        path = Path(self.document_path)  # type: ignore[arg-type]
        if not path.is_absolute() and base_dir is not None:
            path = Path(base_dir) / path
        try:
            return path.read_text(encoding="utf-8")
        except OSError as exc:
            raise FileNotFoundError(f"task {self.id!r}: cannot read document_path {str(path)!r}: {exc}") from exc


class TaskFileError(ValueError):
    """A task file line that is not a valid task; names the file and line."""


def read_tasks(path: str | Path, skip_invalid: bool = False) -> list[Task]:
    """Read a task JSONL file. Invalid lines raise with file:line, or are skipped when asked."""
    return list(iter_tasks(path, skip_invalid=skip_invalid))


def iter_tasks(path: str | Path, skip_invalid: bool = False) -> Iterator[Task]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"task file not found: {path}")
    base_dir = path.parent
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                task = Task.model_validate(json.loads(line))
            except (json.JSONDecodeError, ValidationError) as exc:
                if skip_invalid:
                    continue
                raise TaskFileError(f"{path}:{line_no}: invalid task record: {_short(exc)}") from exc
            if task.document_path is not None and not Path(task.document_path).is_absolute():
                task.document_path = str(base_dir / task.document_path)
            yield task


def write_tasks(tasks: Iterable[Task], path: str | Path) -> int:
    """Write tasks as JSONL (one per line); returns how many were written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", encoding="utf-8") as handle:
        for task in tasks:
            handle.write(task.model_dump_json(exclude_none=True) + "\n")
            count += 1
    return count


def _short(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'record'}: {e['msg']}" for e in exc.errors())
    return str(exc)


def task_source(metadata: dict[str, Any]) -> str:
    """Which generator or benchmark a task came from (its metadata): the key of eval's `accuracy_by_task`."""
    return str(metadata.get("generator") or metadata.get("benchmark") or metadata.get("task_kind") or "tasks")
