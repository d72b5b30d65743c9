"""Loaders: local files in public benchmarks' released formats -> task records (SPEC 3).

Each loader returns `LoadedTasks` (a list of `Task` that also counts skipped records). `convert`
runs one and writes a task file whose huge inputs sit in a folder beside it, with paths relative to
the task file so the pair can be moved together:

    convert("ruler", "data/generated/ruler_niah_single_1.jsonl", "RULER/niah_single_1/validation.jsonl")

or from a shell: `statelm tasks convert ruler RULER/niah_single_1/validation.jsonl OUT.jsonl`.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.tasks.loaders._common import DEFAULT_INLINE_MAX_CHARS, LoadedTasks, LoaderError
from pipeline.tasks.loaders.browsecomp_plus import load_browsecomp_plus
from pipeline.tasks.loaders.infinitebench import load_infinitebench
from pipeline.tasks.loaders.longmemeval import load_longmemeval
from pipeline.tasks.loaders.novelqa import load_novelqa
from pipeline.tasks.loaders.ruler import load_ruler
from pipeline.tasks.schema import write_tasks

LOADERS: dict[str, Callable[..., LoadedTasks]] = {
    "novelqa": load_novelqa,
    "infinitebench": load_infinitebench,
    "longmemeval": load_longmemeval,
    "browsecomp_plus": load_browsecomp_plus,
    "ruler": load_ruler,
}


def convert(benchmark: str, out_path: str | Path, source: str | Path, **options: Any) -> LoadedTasks:
    """Load `source` with the named loader and write the tasks to `out_path` (JSONL).

    Inputs over `inline_max_chars` go to `<out stem>_docs/` next to the output (unless `docs_dir` is
    given; NovelQA always points at its book files). Returns the tasks, with `.skipped` set.
    """
    if benchmark not in LOADERS:
        raise ValueError(f"unknown benchmark {benchmark!r}; choose one of {', '.join(LOADERS)}")
    accepted = set(inspect.signature(LOADERS[benchmark]).parameters)
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ValueError(f"{benchmark} loader does not take {', '.join(unknown)}; it takes {', '.join(accepted)}")
    out_path = Path(out_path)
    if "docs_dir" in accepted:
        options.setdefault("docs_dir", out_path.parent / f"{out_path.stem}_docs")
    tasks = LOADERS[benchmark](source, **options)
    base = out_path.parent.resolve()
    for task in tasks:
        if task.document_path is not None and Path(task.document_path).is_absolute():
            task.document_path = os.path.relpath(task.document_path, base)
    write_tasks(tasks, out_path)
    return tasks


__all__ = [
    "DEFAULT_INLINE_MAX_CHARS",
    "LOADERS",
    "LoadedTasks",
    "LoaderError",
    "convert",
    "load_browsecomp_plus",
    "load_infinitebench",
    "load_longmemeval",
    "load_novelqa",
    "load_ruler",
]
