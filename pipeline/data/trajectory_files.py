"""Trajectory files (SPEC 4): JSONL, one episode record per line, appended as episodes end.

Reading is forgiving (an invalid line is skipped and described by file:line, never fatal) and resuming is safe
(a truncated last line, the mark of a killed write, is cut off before new episodes are appended)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from pipeline.data.trajectory import Trajectory


@dataclass
class ExistingFile:
    """What a previous run left in the trajectory file."""

    episode_ids: set[str] = field(default_factory=set)
    corrupt_lines: list[str] = field(default_factory=list)
    truncated_tail: bool = False


def scan_existing(path: Path) -> ExistingFile:
    """Read a trajectory file from a previous run; cut off a truncated last line (a killed write)."""
    found = ExistingFile()
    if not path.exists():
        return found
    data = path.read_bytes()
    keep = len(data)
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        found.truncated_tail = True
    for line_no, raw in enumerate(data[:keep].splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            found.episode_ids.add(json.loads(raw)["episode_id"])
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as exc:
            found.corrupt_lines.append(f"{path}:{line_no}: {type(exc).__name__}: {exc}")
    if found.truncated_tail:
        with path.open("r+b") as handle:
            handle.truncate(keep)
    return found


def iter_trajectories(path: str | Path, errors: list[str] | None = None) -> Iterable[Trajectory]:
    """Valid trajectories of a file; invalid lines are skipped and described in `errors` (file:line)."""
    path = Path(path)
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield Trajectory.model_validate_json(line)
            except ValidationError as exc:
                if errors is not None:
                    first = exc.errors()[0]
                    where = ".".join(str(p) for p in first["loc"]) or "record"
                    errors.append(f"{path}:{line_no}: {where}: {first['msg']}")
