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

from pipeline.data.task_sources import build_tasks, load_tokenizer, make_grader
from pipeline.data.trajectory_files import iter_trajectories
from pipeline.play.rollout import collect, plan_episodes, summarize
from pipeline.policies.factory import make_policy
from pipeline.settings.errors import EXIT_EPISODES_FAILED, StateLMError
from pipeline.settings.preflight import check_endpoint, check_env, check_model_path, check_policy, check_task_files
from pipeline.settings.recipe import CollectRecipe

logger = logging.getLogger(__name__)


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
