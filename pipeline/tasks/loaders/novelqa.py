"""NovelQA (multiple choice over whole novels) -> tasks.

Format followed: the NovelQA release (huggingface.co/datasets/NovelQA/NovelQA, described in
github.com/NovelQA/novelqa.github.io README.md "Data Description"): books as `Books/<group>/<bid>.txt`
and one question file per book `Data/<group>/<bid>.json` with the same stem (<group> is PublicDomain
or CopyrightProtected; the Demonstration folder keeps `<Title>.txt` beside `<Title>.json`). A question
file is either the current layout, a dict keyed by QID, or the previous one, a list of dicts with a
"QID" field. Per question we use "Question", "Options" ({"A": ..., "B": ...}; yes/no questions have
only A and B), "Aspect" and "Complexity" (the README example spells it "Complex"), and the gold letter
from "Gold" (the field name of the answer-bearing release) or "Answer".

The public release withholds gold answers (they are graded on Codabench), so questions without
"Gold"/"Answer" are invalid here: raise, or are skipped with `skip_invalid`.

The input is the book file itself: `document_path` points at it (absolute; `convert` makes it
relative), so a 200K-token novel is never copied, however many questions ask about it.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

from pipeline.tasks.loaders._common import LoadedTasks, LoaderError, collect, field, read_json
from pipeline.tasks.schema import Task

ANSWER_FIELDS = ("Gold", "Answer")


def load_novelqa(
    questions: str | Path, books_dir: str | Path | None = None, *, skip_invalid: bool = False
) -> LoadedTasks:
    """Tasks from one question file or a folder of them (searched recursively).

    `books_dir` is searched recursively for `<stem>.txt`; by default the books sit beside the
    question files (Demonstration layout) or in a `Books/` folder next to their `Data/` folder.
    """
    questions = Path(questions)
    if questions.is_dir():
        files = sorted(questions.rglob("*.json"))
        if not files:
            raise FileNotFoundError(f"no NovelQA question files (*.json) under {questions}")
    elif questions.is_file():
        files = [questions]
    else:
        raise FileNotFoundError(f"NovelQA questions not found: {questions}")
    books = _index_books(files, books_dir)
    result = LoadedTasks()
    for path in files:
        collect(
            _file_records(path, books, skip_invalid, result),
            _build,
            skip_invalid=skip_invalid,
            desc=f"novelqa {path.name}",
            result=result,
        )
    return result


def _index_books(files: list[Path], books_dir: str | Path | None) -> dict[str, Path]:
    roots = [Path(books_dir)] if books_dir is not None else _default_book_roots(files)
    index: dict[str, Path] = {}
    for root in roots:
        if not root.is_dir():
            if books_dir is not None:
                raise FileNotFoundError(f"NovelQA books folder not found: {root}")
            continue
        for book in sorted(root.rglob("*.txt")):
            index.setdefault(book.stem, book.resolve())
    return index


def _default_book_roots(files: list[Path]) -> list[Path]:
    roots: list[Path] = []
    for path in files:
        candidates = [path.parent] + [p.parent / "Books" for p in path.parents if p.name == "Data"]
        roots += [c for c in candidates if c not in roots]
    return roots


def _file_records(path: Path, books: dict[str, Path], skip_invalid: bool, result: LoadedTasks):
    """(where, (book, qid, record)) for every question of one file; a broken file is one skip."""
    try:
        items = _questions(path, read_json(path))
        book = books.get(path.stem)
        if book is None:
            raise LoaderError(f"{path}: no book file {path.stem}.txt found for this question file")
    except LoaderError as exc:
        if not skip_invalid:
            raise
        result.skip(f"{exc} (whole file skipped)")
        return
    for qid, record in items:
        yield f"{path}: question {qid}", (book, qid, record)


def _questions(path: Path, data: Any) -> list[tuple[str, Any]]:
    if isinstance(data, dict):  # current layout: {"Q0000": {...}, ...}
        return [(str(qid), record) for qid, record in data.items()]
    if isinstance(data, list):  # previous layout: [{"QID": "Q0000", ...}, ...]
        return [
            (str(rec.get("QID") if isinstance(rec, dict) and rec.get("QID") else f"Q{i:04d}"), rec)
            for i, rec in enumerate(data)
        ]
    raise LoaderError(f"{path}: expected a dict keyed by QID or a list of questions, got {type(data).__name__}")


def _build(where: str, item: tuple[Path, str, Any]) -> Task:
    book, qid, record = item
    question = field(record, "Question", str, where)
    options = field(record, "Options", (dict, list), where)
    letters, choices = _options(options, where)
    gold = next((record[k] for k in ANSWER_FIELDS if isinstance(record, dict) and record.get(k) is not None), None)
    if gold is None:
        raise LoaderError(f"{where}: missing field 'Gold' (or 'Answer'); the public release withholds answers")
    answer = _gold_letter(str(gold), letters, choices, where)
    metadata = {
        "benchmark": "novelqa",
        "book": book.stem,
        "qid": qid,
        "aspect": record.get("Aspect"),
        "complexity": record.get("Complexity", record.get("Complex")),
    }
    return Task(
        id=f"novelqa/{book.stem}/{qid}",
        kind="multiple_choice",
        question=question,
        document_path=str(book),
        answer=answer,
        choices=choices,
        metadata={k: v for k, v in metadata.items() if v is not None},
    )


def _options(options: dict | list, where: str) -> tuple[list[str], list[str]]:
    if isinstance(options, list):
        letters = list(string.ascii_uppercase[: len(options)])
        values = options
    else:
        letters = sorted(str(k).strip().upper() for k in options)
        by_letter = {str(k).strip().upper(): v for k, v in options.items()}
        values = [by_letter[k] for k in letters]
        if letters != list(string.ascii_uppercase[: len(letters)]):
            raise LoaderError(f"{where}: field 'Options' keys must be A, B, C, ... in order, got {letters}")
    if len(values) < 2 or not all(isinstance(v, str | int | float) and str(v).strip() for v in values):
        raise LoaderError(f"{where}: field 'Options' needs at least two non-empty options")
    return letters, [str(v) for v in values]


def _gold_letter(gold: str, letters: list[str], choices: list[str], where: str) -> str:
    letter = gold.strip().strip("()").upper()
    if letter in letters:
        return letter
    if gold.strip() in choices:  # some copies store the option text instead of the letter
        return letters[choices.index(gold.strip())]
    raise LoaderError(f"{where}: field 'Gold' is {gold!r}, not one of the options {letters}")
