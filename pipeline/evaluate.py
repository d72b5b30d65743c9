"""Evaluation (SPEC 7): play models on tasks in the same environment and budgets as training, report.

Each system (a model under test, the scripted expert, the plain model reading everything without
tools) writes its own resumable files under `<output_dir>/<system>/`; the report is computed from
them: accuracy by task source and input-length bucket, end states, tool calls and error rate,
mean/peak active context, rounds, plus a sawtooth plot and accuracy by input length. Each environment
adds its own figures (`BaseEnv.eval_figures`, looked up through pipeline/env/registry.py): Inventory the
share of turns whose carried inventory was right, RLM the REPL and sub-call statistics (blocks, runtime
errors, timeouts, restarts, sub-calls and their tokens).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

from pipeline.data.task_sources import build_tasks, load_tokenizer, make_grader
from pipeline.data.trajectory import Trajectory
from pipeline.data.trajectory_files import iter_trajectories
from pipeline.play.imitation import imitation_figures
from pipeline.play.no_tools import no_tools_baseline
from pipeline.play.rollout import Episode, collect, plan_episodes
from pipeline.policies.factory import make_policy
from pipeline.policies.hf import HFPolicy
from pipeline.reports.eval_figures import episode_report, markdown_summary, no_tools_figures, sawtooth_picks
from pipeline.reports.plots import accuracy_by_length_plot, sawtooth_plot
from pipeline.settings.errors import PreflightError
from pipeline.settings.preflight import check_endpoint, check_env, check_model_path, check_policy, check_task_files
from pipeline.settings.recipe import EvalRecipe, PolicySpec
from pipeline.tasks.schema import Task

logger = logging.getLogger(__name__)


def preflight(recipe: EvalRecipe) -> None:
    """Every model path, endpoint and task file, before the first episode of the first system."""
    for label, spec in recipe.models.items():
        check_policy(spec, f"models.{label}")
    check_model_path(recipe.tokenizer_path(), "student_tokenizer")
    if recipe.no_tools_model is not None and recipe.no_tools_model not in recipe.models:
        raise PreflightError(f"no_tools_model: {recipe.no_tools_model!r} is not one of models {sorted(recipe.models)}")
    check_env(recipe.environment)
    if recipe.judge is not None:
        check_endpoint(recipe.judge.base_url, recipe.judge.api_key, "judge.base_url")
    check_task_files(recipe.tasks)


def run_eval(recipe: EvalRecipe, progress: bool = True) -> dict[str, Any]:
    """Play every system on the recipe's tasks and write report.json, report.md and the plots."""
    preflight(recipe)
    out_dir = Path(recipe.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(recipe.tokenizer_path())
    tasks = build_tasks(recipe.tasks, tokenizer)
    episodes = plan_episodes(tasks, recipe.samples_per_task, recipe.seed)
    grader = make_grader(recipe.judge)
    systems: dict[str, PolicySpec] = dict(recipe.models)
    if "scripted" in recipe.baselines:  # the RLM environment has its own expert (code, not tool calls)
        default = PolicySpec(kind="scripted_rlm" if recipe.environment.kind == "rlm" else "scripted")
        systems["scripted_expert"] = recipe.expert or default
    # The expert plays first, so each local model can be scored on its episodes while the model is still loaded
    order = sorted(systems, key=lambda name: name != "scripted_expert")
    expert_episodes: list[Trajectory] = []
    played: dict[str, dict[str, Any]] = {}
    for name in order:
        policy = make_policy(systems[name])
        path = out_dir / name / "trajectories.jsonl"
        played_episodes = _episodes_for(systems[name], tasks, episodes, tokenizer, recipe)
        started = time.perf_counter()
        try:
            run = asyncio.run(collect(played_episodes, policy, tokenizer, recipe.environment, path, grader,
                                      recipe.concurrency, recipe.rewards, progress))  # fmt: skip
            trajectories = list(iter_trajectories(path))
            # seconds: what this run spent playing (a resumed run plays only the episodes not yet written)
            seconds = round(time.perf_counter() - started, 1)
            played[name] = {**episode_report(trajectories), "failed": run["failed"], "seconds": seconds}
            if name == "scripted_expert":
                # In episode order, not file order (concurrent episodes are written as they end), so the
                # first `imitation_episodes` are the same ones on every run
                expert_episodes = sorted(trajectories, key=lambda t: t.episode_id)
            elif _scores_imitation(recipe, policy, expert_episodes):
                played[name]["imitation"] = imitation_figures(
                    policy.model, tokenizer, expert_episodes[: recipe.imitation_episodes], policy.chat_template_kwargs
                )
        finally:
            asyncio.run(policy.aclose())
        picks = sawtooth_picks(trajectories, recipe.sawtooth_episodes)
        budget = getattr(recipe.environment, "max_context_tokens", None)
        plot = sawtooth_plot(picks, out_dir / f"sawtooth_{name}.png", f"Active context per turn: {name}", budget)
        played[name]["sawtooth_plot"] = plot.name
    report: dict[str, Any] = {"tasks": len(tasks), "systems": {name: played[name] for name in systems}}
    if "no_tools" in recipe.baselines:
        spec = recipe.models[recipe.no_tools_model or next(iter(recipe.models))]
        policy = make_policy(spec.model_copy(update={"max_tokens": recipe.no_tools_max_output_tokens}))
        started = time.perf_counter()
        results = asyncio.run(
            no_tools_baseline(
                tasks,
                policy,
                tokenizer,
                recipe.no_tools_max_tokens,
                recipe.no_tools_max_output_tokens,
                grader,
                out_dir / "no_tools" / "results.jsonl",
            )
        )
        seconds = round(time.perf_counter() - started, 1)
        report["systems"]["no_tools"] = {**no_tools_figures(results), "seconds": seconds}
    series = {name: figures["accuracy_by_length"] for name, figures in report["systems"].items()}
    accuracy_by_length_plot(series, out_dir / "accuracy_by_length.png", "Accuracy by input length")
    report["accuracy_plot"] = "accuracy_by_length.png"
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    (out_dir / "report.md").write_text(markdown_summary(report))
    return report


def _episodes_for(spec: PolicySpec, tasks: list[Task], episodes: list[Episode], tokenizer: Any,
                  recipe: EvalRecipe) -> list[Episode]:  # fmt: skip
    """The episodes one system plays: its own samples per task, on the tasks short enough for it."""
    if spec.samples is None and spec.max_input_tokens is None:
        return episodes
    if spec.max_input_tokens is not None:
        tasks = [t for t in tasks if input_tokens(t, tokenizer) <= spec.max_input_tokens]
    return plan_episodes(tasks, spec.samples or recipe.samples_per_task, recipe.seed)


def input_tokens(task: Task, tokenizer: Any) -> int:
    """The input's length in the student's tokens, as the environment measures it."""
    return len(tokenizer(task.load_input(), add_special_tokens=False)["input_ids"])


def _scores_imitation(recipe: EvalRecipe, policy: Any, expert_episodes: list[Trajectory]) -> bool:
    """Imitation needs logits (a local HF model), the expert's tool-call episodes (not RLM's code) and greedy
    play: a sampled system of the same model would repeat the greedy system's figures."""
    return (
        recipe.imitation
        and bool(expert_episodes)
        and isinstance(policy, HFPolicy)
        and policy.temperature == 0
        and recipe.environment.kind != "rlm"
    )
