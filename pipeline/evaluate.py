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
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from pipeline.data.task_sources import build_tasks, load_tokenizer, make_grader
from pipeline.data.trajectory import Trajectory
from pipeline.env.registry import eval_figures
from pipeline.play.imitation import imitation_figures
from pipeline.play.rollout import Episode, collect, iter_trajectories, plan_episodes, summarize
from pipeline.policies.base import as_action
from pipeline.policies.factory import make_policy
from pipeline.policies.hf import HFPolicy
from pipeline.reports.plots import accuracy_by_length_plot, sawtooth_plot
from pipeline.settings.errors import PreflightError
from pipeline.settings.preflight import check_endpoint, check_env, check_model_path, check_policy, check_task_files
from pipeline.settings.recipe import EvalRecipe, PolicySpec
from pipeline.tasks.schema import Task

logger = logging.getLogger(__name__)

BUCKETS = [(2_000, "<=2K"), (8_000, "2K-8K"), (32_000, "8K-32K"), (128_000, "32K-128K"), (512_000, "128K-512K")]
# Input-length ranges reported beside the buckets: the demo's "longer than any training input" figure
RANGES = {"4K-32K": (4_000, 32_000)}
NO_TOOLS_SYSTEM = "Read the text and answer the question. Reply with the answer only."


def length_bucket(tokens: int | None) -> str:
    for limit, label in BUCKETS:
        if (tokens or 0) <= limit:
            return label
    return ">512K"


def _source(metadata: dict[str, Any]) -> str:
    return str(metadata.get("generator") or metadata.get("benchmark") or metadata.get("task_kind") or "tasks")


def episode_report(trajectories: list[Trajectory]) -> dict[str, Any]:
    """Summary figures plus accuracy by task source and by input-length bucket."""
    report = summarize(trajectories)
    turns = sum(len(t.turns) for t in trajectories)
    report["format_error_rate"] = report["format_errors"] / turns if turns else 0.0
    report["finish_rate"] = report["end_states"].get("finished", 0) / len(trajectories) if trajectories else 0.0
    report["well_formed_finish_rate"] = (
        sum(t.end_state == "finished" and t.format_errors == 0 for t in trajectories) / len(trajectories)
        if trajectories
        else 0.0
    )
    report["accuracy_by_task"] = _accuracy_by(trajectories, lambda t: _source(t.metadata))
    report["accuracy_by_length"] = _accuracy_by(trajectories, lambda t: length_bucket(t.input_tokens))
    report["accuracy_by_range"] = {}
    for label, (low, high) in RANGES.items():
        inside = [t for t in trajectories if low <= (t.input_tokens or 0) <= high]
        if inside:
            report["accuracy_by_range"][label] = sum(t.correct for t in inside) / len(inside)
    by_bucket: dict[str, list[float]] = defaultdict(list)
    for t in trajectories:
        by_bucket[length_bucket(t.input_tokens)].append(t.mean_context_tokens)
    report["mean_context_by_length"] = {k: sum(v) / len(v) for k, v in _ordered(by_bucket).items()}
    report.update(eval_figures(trajectories))  # each environment's own sections (BaseEnv.eval_figures)
    return report


def _accuracy_by(items: list[Any], key) -> dict[str, float]:
    groups: dict[str, list[bool]] = defaultdict(list)
    for item in items:
        groups[key(item)].append(bool(item.correct if hasattr(item, "correct") else item["correct"]))
    return {k: sum(v) / len(v) for k, v in _ordered(groups).items()}


def _ordered(groups: dict[str, Any]) -> dict[str, Any]:
    order = [label for _, label in BUCKETS] + [">512K"]
    return dict(sorted(groups.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))


async def no_tools_baseline(
    tasks: list[Task], policy: Any, tokenizer: Any, max_context_tokens: int, max_output_tokens: int, grader, out: Path
) -> list[dict[str, Any]]:
    """The plain model reads the whole input in its prompt (when it fits) and answers directly."""
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {}
    if out.exists():
        for line in out.read_text().splitlines():
            try:
                record = json.loads(line)
                done[record["task_id"]] = record
            except (json.JSONDecodeError, KeyError):
                continue
    results = list(done.values())
    todo = [t for t in tasks if t.id not in done]
    batch = 8 if hasattr(policy, "act_batch") else 1  # a local model answers several tasks in one batch
    with tqdm(total=len(todo), desc="no-tools baseline") as bar:
        for start in range(0, len(todo), batch):
            records = await _no_tools_batch(todo[start : start + batch], policy, tokenizer, max_context_tokens,
                                            max_output_tokens, grader)  # fmt: skip
            with out.open("a", encoding="utf-8") as handle:
                handle.writelines(json.dumps(record) + "\n" for record in records)
            results += records
            bar.update(len(records))
    return results


async def _no_tools_batch(
    tasks: list[Task], policy: Any, tokenizer: Any, max_context_tokens: int, max_output_tokens: int, grader
) -> list[dict[str, Any]]:
    """Answer the tasks whose whole input fits the window; the others are recorded as not fitting."""
    records, asks = [], []
    for task in tasks:
        text = task.load_input()
        messages = [
            {"role": "system", "content": NO_TOOLS_SYSTEM},
            {"role": "user", "content": f"{text}\n\nQuestion: {task.question}"},
        ]
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prompt_tokens = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        input_tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        fits = prompt_tokens + max_output_tokens <= max_context_tokens
        records.append({"task_id": task.id, "input_tokens": input_tokens, "fits": fits, "answer": None,
                        "correct": False, "source": _source(task.metadata)})  # fmt: skip
        if fits:
            asks.append((len(records) - 1, task, messages))
    if asks and hasattr(policy, "act_batch"):
        raws = await policy.act_batch([m for _, _, m in asks], [[] for _ in asks], [0] * len(asks))
    else:
        raws = [as_action(await policy.act(m, [], seed=0)).text for _, _, m in asks]
    for (position, task, _), raw in zip(asks, raws, strict=True):
        answer = re.sub(r"<think>.*?</think>", "", as_action(raw).text, flags=re.DOTALL).strip()
        records[position].update(answer=answer, correct=bool(grader(task, answer)))
    return records


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
        try:
            run = asyncio.run(collect(played_episodes, policy, tokenizer, recipe.environment, path, grader,
                                      recipe.concurrency, recipe.rewards, progress))  # fmt: skip
            trajectories = list(iter_trajectories(path))
            played[name] = {**episode_report(trajectories), "failed": run["failed"]}
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
        picks = _sawtooth_picks(trajectories, recipe.sawtooth_episodes)
        budget = getattr(recipe.environment, "max_context_tokens", None)
        plot = sawtooth_plot(picks, out_dir / f"sawtooth_{name}.png", f"Active context per turn: {name}", budget)
        played[name]["sawtooth_plot"] = plot.name
    report: dict[str, Any] = {"tasks": len(tasks), "systems": {name: played[name] for name in systems}}
    if "no_tools" in recipe.baselines:
        spec = recipe.models[recipe.no_tools_model or next(iter(recipe.models))]
        policy = make_policy(spec.model_copy(update={"max_tokens": recipe.no_tools_max_output_tokens}))
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
        for record in results:
            record["bucket"] = length_bucket(record["input_tokens"])
        report["systems"]["no_tools"] = {
            "episodes": len(results),
            "fits": sum(r["fits"] for r in results),
            "accuracy": sum(r["correct"] for r in results) / len(results) if results else 0.0,
            "accuracy_by_task": _accuracy_by(results, lambda r: r["source"]),
            "accuracy_by_length": _accuracy_by(results, lambda r: r["bucket"]),
        }
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


def _sawtooth_picks(trajectories: list[Trajectory], n: int) -> list[Trajectory]:
    """A few episodes spread over input lengths, preferring ones that deleted context."""
    ranked = sorted(trajectories, key=lambda t: t.input_tokens or 0)
    with_deletes = [t for t in ranked if any(c["name"] == "deleteContext" for u in t.turns for c in u.tool_calls)]
    pool = with_deletes or ranked
    if len(pool) <= n:
        return pool
    return [pool[round(i * (len(pool) - 1) / (n - 1))] for i in range(n)] if n > 1 else pool[-1:]


def markdown_summary(report: dict[str, Any]) -> str:
    """A short human summary of report.json with the plots embedded."""
    lines = [
        f"# Evaluation ({report['tasks']} tasks)",
        "",
        "| system | accuracy | finished | well-formed finished "
        "| format errors / turn | mean context | peak context | mean rounds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, f in report["systems"].items():
        if "end_states" not in f:
            lines.append(f"| {name} | {f['accuracy']:.0%} | - | - | - | - | - | - |")
            continue
        lines.append(
            f"| {name} | {f['accuracy']:.0%} | {f['finish_rate']:.0%} | {f['well_formed_finish_rate']:.0%} | "
            f"{f['format_error_rate']:.2f} | {f['mean_context_tokens']:.0f} | {f['peak_context_tokens']} | "
            f"{f['mean_rounds']:.1f} |"
        )
    buckets = sorted(
        {b for f in report["systems"].values() for b in f["accuracy_by_length"]},
        key=lambda b: [label for _, label in BUCKETS].index(b) if b in dict(map(reversed, BUCKETS)) else 99,
    )
    lines += [
        "",
        "Accuracy by input length:",
        "",
        "| system | " + " | ".join(buckets) + " |",
        "|---|" + "---|" * len(buckets),
    ]
    for name, f in report["systems"].items():
        cells = [f"{f['accuracy_by_length'][b]:.0%}" if b in f["accuracy_by_length"] else "-" for b in buckets]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    variants = [(name, f) for name, f in report["systems"].items() if "inventory" in f or "repl" in f]
    if variants:
        lines += [
            "",
            "| system | inventory state accuracy | REPL blocks / episode | block errors | sub-calls / episode |",
            "|---|---|---|---|---|",
        ]
        for name, f in variants:
            cells = ["-"] * 4
            if "inventory" in f:
                cells[0] = f"{f['inventory']['state_accuracy']:.0%}"
            if "repl" in f:
                repl = f["repl"]
                cells[1:] = [
                    f"{repl['blocks_per_episode']:.1f}",
                    f"{repl['block_error_rate']:.0%}",
                    f"{repl['sub_calls_per_episode']:.1f}",
                ]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    imitating = [(name, f["imitation"]) for name, f in report["systems"].items() if "imitation" in f]
    if imitating:
        actions = sorted({a for _, i in imitating for a in i["exact_turn_rate_by_action"]})
        lines += [
            "",
            "Imitation of the expert's held-out episodes (teacher forcing; a turn counts when every token is the "
            "model's greedy choice):",
            "",
            "| system | turns | tokens | " + " | ".join(actions) + " |",
            "|---|---|---|" + "---|" * len(actions),
        ]
        for name, i in imitating:
            by_action = i["exact_turn_rate_by_action"]
            cells = [f"{by_action[a]:.0%}" if a in by_action else "-" for a in actions]
            lines.append(
                f"| {name} | {i['exact_turn_rate']:.0%} | {i['token_accuracy']:.0%} | " + " | ".join(cells) + " |"
            )
    lines += ["", f"![accuracy by input length]({report['accuracy_plot']})", ""]
    for name, f in report["systems"].items():
        if "sawtooth_plot" in f:
            lines += [f"![sawtooth {name}]({f['sawtooth_plot']})", ""]
    return "\n".join(lines)
