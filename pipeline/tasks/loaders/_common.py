"""Shared plumbing for the benchmark loaders: error messages that say where, skip-and-count, and
moving huge inputs out of the task line into content-addressed files.

Every loader builds tasks record by record through `collect`, so a corrupt record either raises a
`LoaderError` naming the file, the line (JSONL) or record, and the field, or - with `skip_invalid` -
is counted in `LoadedTasks.skipped` and logged, and the rest of the file still loads.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError
from tqdm import tqdm

from pipeline.tasks.schema import DOCUMENT_SEPARATOR, Task

logger = logging.getLogger("pipeline.tasks.loaders")

T = TypeVar("T")

# Inputs longer than this (characters) go to a file when the caller gives a `docs_dir`.
DEFAULT_INLINE_MAX_CHARS = 100_000


class LoaderError(ValueError):
    """A record that cannot be converted; the message names file, line or record, and field."""


class LoadedTasks(list[Task]):
    """The converted tasks (a plain list) plus what was skipped, so callers can report it."""

    def __init__(self, tasks: Iterable[Task] = (), skipped: int = 0, errors: list[str] | None = None):
        super().__init__(tasks)
        self.skipped = skipped
        self.errors: list[str] = errors if errors is not None else []

    def skip(self, message: str) -> None:
        self.skipped += 1
        self.errors.append(message)


def field(record: Any, name: str, kind: type | tuple[type, ...], where: str, *, optional: bool = False) -> Any:
    """`record[name]` checked for type; the error says where and which field."""
    if not isinstance(record, dict):
        raise LoaderError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if name not in record or record[name] is None:
        if optional:
            return None
        raise LoaderError(f"{where}: missing field {name!r}")
    value = record[name]
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
        names = "/".join(k.__name__ for k in _as_tuple(kind))
        raise LoaderError(f"{where}: field {name!r} must be {names}, got {type(value).__name__}")
    return value


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def iter_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    """(where, record) per non-empty line; `where` is "file:line". A bad line yields a LoaderError
    instead of a record so `collect` can skip it and keep reading."""
    with _open(path) as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as exc:
                yield where, LoaderError(f"{where}: invalid JSON: {exc.msg} (column {exc.colno})")


def read_json(path: Path) -> Any:
    """A whole-file JSON document, with the file named in any error."""
    with _open(path) as handle:
        try:
            return json.load(handle)
        except json.JSONDecodeError as exc:
            raise LoaderError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from exc


def _open(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"input file not found: {path}")
    return path.open(encoding="utf-8")


def collect(
    records: Iterable[tuple[str, Any]],
    build: Callable[[str, Any], Task | list[Task]],
    *,
    skip_invalid: bool,
    desc: str,
    result: LoadedTasks | None = None,
) -> LoadedTasks:
    """Run `build(where, record)` over records; raise or skip-and-count what fails."""
    result = LoadedTasks() if result is None else result
    skipped_before = result.skipped
    for where, record in tqdm(records, desc=desc, unit="rec", disable=None, leave=False):
        try:
            if isinstance(record, Exception):
                raise record
            built = build(where, record)
        except ValidationError as exc:
            _fail(result, f"{where}: invalid task: {_validation_message(exc)}", skip_invalid, exc)
        except LoaderError as exc:
            _fail(result, str(exc), skip_invalid, exc)
        else:
            result.extend(built if isinstance(built, list) else [built])
    if result.skipped > skipped_before:
        logger.warning(
            "%s: skipped %d invalid record(s); first: %s",
            desc,
            result.skipped - skipped_before,
            result.errors[skipped_before],
        )
    _check_unique_ids(result, desc)
    return result


def _validation_message(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'record'}: {e['msg']}" for e in exc.errors())


def _fail(result: LoadedTasks, message: str, skip_invalid: bool, exc: Exception) -> None:
    if not skip_invalid:
        raise LoaderError(message) from exc
    result.skip(message)


def _check_unique_ids(tasks: list[Task], desc: str) -> None:
    seen: set[str] = set()
    for task in tasks:
        if task.id in seen:
            raise LoaderError(f"{desc}: duplicate task id {task.id!r}")
        seen.add(task.id)


def place_documents(
    documents: list[str], docs_dir: str | Path | None, inline_max_chars: int = DEFAULT_INLINE_MAX_CHARS
) -> dict[str, Any]:
    """Task fields for the input: inline `documents`, or a `document_path` when it is huge.

    Files are named by the SHA-256 of their content, so inputs shared by many questions (one book,
    many questions) are written once and re-running a conversion rewrites nothing. The path is
    absolute; `convert` makes it relative to the task file it writes.
    """
    total = sum(len(doc) for doc in documents) + len(DOCUMENT_SEPARATOR) * max(len(documents) - 1, 0)
    if docs_dir is None or total <= inline_max_chars:
        return {"documents": documents}
    text = DOCUMENT_SEPARATOR.join(documents)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]
    path = Path(docs_dir).resolve() / f"{digest}.txt"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)  # never leave a half-written input behind a valid name
    return {"document_path": str(path)}
