"""A recipe's tasks, shared by every stage that plays episodes (collect, GRPO, eval, the demo).

The student's tokenizer (lengths are counted with it), the tasks of a recipe's `tasks:` list generated (seeded) or
read from files, and the grader that scores answers to them.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from pipeline.settings.errors import RecipeError
from pipeline.settings.preflight import check_task_files
from pipeline.settings.recipe import GeneratedTasks, JudgeSpec, TaskFile
from pipeline.tasks.generators import GENERATORS
from pipeline.tasks.graders import grade
from pipeline.tasks.schema import Task, read_tasks


def load_tokenizer(name_or_path: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name_or_path)


def parse_task_sources(tasks: list[Any] | None, recipe: str | None) -> list[GeneratedTasks | TaskFile]:
    """A `tasks:` list read outside a pydantic recipe (GRPO's TRL dataclass) as task sources; a bad entry names the
    recipe, the entry and the field, once (not pydantic's dump of every member of the union it tried)."""
    where = f"{recipe}: tasks" if recipe else "tasks"
    if not tasks:
        raise RecipeError(f"{where}: the recipe lists no task source ({{generator: ...}} or {{file: ...}})")
    sources: list[GeneratedTasks | TaskFile] = []
    for index, entry in enumerate(tasks):
        model = TaskFile if isinstance(entry, dict) and "file" in entry else GeneratedTasks
        try:
            sources.append(model.model_validate(entry))
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'entry'}: {e['msg']}" for e in exc.errors())
            raise RecipeError(f"{where}.{index}: {problems}") from exc
    check_task_files(sources, where)
    return sources


def build_tasks(sources: list[GeneratedTasks | TaskFile], tokenizer: Any) -> list[Task]:
    """A recipe's tasks, generated (seeded) or read from files, in recipe order."""
    tasks: list[Task] = []
    for source in sources:
        if isinstance(source, GeneratedTasks):
            kwargs = dict(
                n=source.n,
                min_tokens=source.min_tokens,
                max_tokens=source.max_tokens,
                seed=source.seed,
                tokenizer=tokenizer,
            )
            if source.generator in ("niah", "multihop"):
                kwargs["templates"] = source.templates
            if source.generator == "niah":
                kwargs.update(n_needles=source.n_needles, n_distractors=source.n_distractors)
                kwargs.update(source.model_dump(include={"key_shapes", "value_shapes"}, exclude_none=True))
            if source.generator == "inventory":  # unset fields keep the generator's defaults
                kwargs.update(source.model_dump(include={"n_chunks", "words_per_chunk"}, exclude_none=True))
            tasks += GENERATORS[source.generator](**kwargs)
        else:
            tasks += read_tasks(source.file)[: source.limit]
    ids = [t.id for t in tasks]
    duplicates = {i for i in ids if ids.count(i) > 1} if len(set(ids)) != len(ids) else set()
    if duplicates:
        raise ValueError(f"task ids must be unique across the recipe's sources; repeated: {sorted(duplicates)[:5]}")
    return tasks


def make_grader(judge_spec: JudgeSpec | None):
    """grade(task, answer) with the recipe's LLM judge (needed only for `judge` tasks)."""
    judge = None
    if judge_spec is not None:
        from pipeline.tasks.graders import JudgeConfig

        judge = JudgeConfig(**judge_spec.model_dump())

    def grader(task: Task, answer: str | None) -> bool:
        return grade(task, answer, judge=judge)

    return grader
