"""LongMemEval-S (questions over ~50 past chat sessions) -> judge tasks.

Format followed: `longmemeval_s.json` of the LongMemEval release (huggingface.co/datasets/
xiaowu0162/longmemeval; fields documented in github.com/xiaowu0162/LongMemEval README.md): one JSON
array whose entries have "question_id" (abstention questions end in "_abs"), "question_type",
"question", "answer", "question_date", "haystack_session_ids", "haystack_dates" and
"haystack_sessions" (lists of turns {"role", "content", optional "has_answer"}) and
"answer_session_ids".

Answers are free text and LongMemEval grades them with an LLM judge whose instructions depend on the
question type (src/evaluation/evaluate_qa.py), so tasks are kind `judge` and carry that
type-specific rule, in our own words, as `metadata["judge_guidance"]` for the judge prompt.

Rendering: one document per session, in the file's (chronological) order, headed by its index and
date, turns as "role: content" - the "nl" history format of LongMemEval's run_generation.py. Session
ids are not shown (evidence sessions are named "answer_..."), nor are the has_answer labels; both
stay in metadata for analysis. The question is prefixed with its date, which temporal questions need.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.tasks.loaders._common import (
    DEFAULT_INLINE_MAX_CHARS,
    LoadedTasks,
    LoaderError,
    collect,
    field,
    place_documents,
    read_json,
)
from pipeline.tasks.schema import Task

_CONTAINS = (
    "The response is correct if it contains the correct answer or is equivalent to it; a response with"
    " only part of the required information is wrong."
)
JUDGE_GUIDANCE = {
    "single-session-user": _CONTAINS,
    "single-session-assistant": _CONTAINS,
    "multi-session": _CONTAINS,
    "temporal-reasoning": _CONTAINS + " Counts of days, weeks or months that are off by one still count as correct.",
    "knowledge-update": _CONTAINS
    + " If the response also mentions older information, it is correct as long as the updated answer"
    " it gives is the required one.",
    "single-session-preference": "The correct answer is a rubric for a personalised response. The response"
    " is correct if it recalls and uses the user's personal information as the rubric describes; it need"
    " not cover every point of the rubric.",
}
ABSTENTION_GUIDANCE = (
    "The question cannot be answered from the chat history; the correct answer explains why. The response"
    " is correct only if it says the question cannot be answered (the information is missing, or only"
    " other information was given)."
)


def load_longmemeval(
    path: str | Path,
    *,
    docs_dir: str | Path | None = None,
    inline_max_chars: int = DEFAULT_INLINE_MAX_CHARS,
    skip_invalid: bool = False,
) -> LoadedTasks:
    """Tasks from `longmemeval_s.json` (also reads the _m and _oracle files, same schema)."""
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, list):
        raise LoaderError(f"{path}: expected a JSON array of questions, got {type(data).__name__}")
    records = [(_where(path, i, rec), rec) for i, rec in enumerate(data)]

    def build(where: str, record: Any) -> Task:
        qid = field(record, "question_id", str, where)
        qtype = field(record, "question_type", str, where)
        answer = field(record, "answer", (str, int, float), where)
        date = field(record, "question_date", str, where)
        documents, evidence = _sessions(record, where)
        abstention = qid.endswith("_abs")
        guidance = ABSTENTION_GUIDANCE if abstention else JUDGE_GUIDANCE.get(qtype, _CONTAINS)
        return Task(
            id=f"longmemeval/{qid}",
            kind="judge",
            question=f"Current date: {date}\n{field(record, 'question', str, where)}",
            answer=str(answer),
            metadata={
                "benchmark": "longmemeval",
                "question_id": qid,
                "question_type": qtype,
                "question_date": date,
                "abstention": abstention,
                "answer_session_ids": record.get("answer_session_ids") or [],
                "evidence_sessions": evidence,
                "n_sessions": len(documents),
                "judge_guidance": guidance,
            },
            **place_documents(documents, docs_dir, inline_max_chars),
        )

    return collect(records, build, skip_invalid=skip_invalid, desc=f"longmemeval {path.name}")


def _where(path: Path, index: int, record: Any) -> str:
    qid = record.get("question_id") if isinstance(record, dict) else None
    return f"{path}: entry {index}" + (f" ({qid})" if qid else "")


def _sessions(record: dict, where: str) -> tuple[list[str], list[int]]:
    """Rendered sessions, and the 1-based numbers of the evidence sessions."""
    sessions = field(record, "haystack_sessions", list, where)
    dates = field(record, "haystack_dates", list, where)
    ids = field(record, "haystack_session_ids", list, where)
    if not len(sessions) == len(dates) == len(ids):
        raise LoaderError(
            f"{where}: fields 'haystack_sessions', 'haystack_dates' and 'haystack_session_ids' differ in"
            f" length ({len(sessions)}, {len(dates)}, {len(ids)})"
        )
    if not sessions:
        raise LoaderError(f"{where}: field 'haystack_sessions' is empty")
    answer_ids = set(record.get("answer_session_ids") or [])
    documents, evidence = [], []
    for number, (session, date, sid) in enumerate(zip(sessions, dates, ids, strict=True), start=1):
        spot = f"{where}: field 'haystack_sessions'[{number - 1}]"
        if not isinstance(session, list):
            raise LoaderError(f"{spot} must be a list of turns")
        turns = []
        for t, turn in enumerate(session):
            role = field(turn, "role", str, f"{spot}[{t}]")
            content = field(turn, "content", str, f"{spot}[{t}]")
            turns.append(f"{role}: {content.strip()}")
        documents.append(f"### Session {number}\nSession date: {date}\n\n" + "\n\n".join(turns))
        if sid in answer_ids:
            evidence.append(number)
    return documents, evidence
