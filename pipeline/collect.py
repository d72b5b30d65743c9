"""Stage 1a: collect teacher trajectories (`statelm collect --recipe recipes/<model>/teacher.yaml`).

Reads the recipe, builds the tasks and the policy, plays every episode not yet in
`<output_dir>/trajectories.jsonl`, and writes `<output_dir>/report.json` over the whole file.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

from pipeline.policies.factory import make_policy
from pipeline.recipe import CollectRecipe, GeneratedTasks, JudgeSpec, TaskFile
from pipeline.rollout import collect, iter_trajectories, plan_episodes, summarize
from pipeline.tasks.generators import GENERATORS
from pipeline.tasks.graders import grade
from pipeline.tasks.schema import Task, read_tasks

logger = logging.getLogger(__name__)


def load_tokenizer(name_or_path: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name_or_path)


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
                kwargs.update(source.model_dump(include={"n_chunks", "chunk_size"}, exclude_none=True))
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


def run_collect(recipe: CollectRecipe, progress: bool = True) -> dict[str, Any]:
    """Collect, then report over everything in the trajectory file."""
    out_dir = Path(recipe.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(recipe.student_tokenizer)
    tasks = build_tasks(recipe.tasks, tokenizer)
    episodes = plan_episodes(tasks, recipe.samples_per_task, recipe.seed)
    policy = make_policy(recipe.policy)
    path = out_dir / "trajectories.jsonl"

    async def main() -> dict[str, Any]:
        try:
            return await collect(
                episodes,
                policy,
                tokenizer,
                recipe.env,
                path,
                make_grader(recipe.judge),
                recipe.concurrency,
                recipe.rewards,
                progress,
            )
        finally:
            await policy.aclose()

    run = asyncio.run(main())
    errors: list[str] = []
    report = {"policy": policy.name, "trajectories": str(path), **summarize(list(iter_trajectories(path, errors)))}
    report.update(run)
    report["invalid_lines"] = errors
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    return report
