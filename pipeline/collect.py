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

from pipeline.errors import EXIT_EPISODES_FAILED, StateLMError
from pipeline.policies.factory import make_policy
from pipeline.preflight import check_endpoint, check_env, check_model_path, check_policy, check_task_files
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


def preflight(recipe: CollectRecipe) -> None:
    """Everything that would otherwise fail after the tasks were built: paths, endpoints, task files."""
    check_model_path(recipe.student_tokenizer, "student_tokenizer")
    check_policy(recipe.policy, "policy")
    check_env(recipe.environment)
    if recipe.judge is not None:
        check_endpoint(recipe.judge.base_url, recipe.judge.api_key, "judge.base_url")
    check_task_files(recipe.tasks)


def failure_problem(report: dict[str, Any], max_failed_share: float) -> StateLMError | None:
    """The error `statelm collect` exits with when more of this run's episodes failed than allowed."""
    failed = len(report["failed"])
    attempted = failed + report["played"]
    if not failed or failed / attempted <= max_failed_share:
        return None
    return StateLMError(
        f"{failed} of {attempted} episodes failed (allowed share {max_failed_share:g}; "
        f"{report['played']} written, {report['skipped_existing']} already there). The first: {report['failed'][0]}. "
        "Fix the cause and re-run: written episodes are kept and skipped.",
        exit_code=EXIT_EPISODES_FAILED,
    )


def run_collect(recipe: CollectRecipe, progress: bool = True) -> dict[str, Any]:
    """Collect, then report over everything in the trajectory file."""
    preflight(recipe)
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
                recipe.environment,
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
