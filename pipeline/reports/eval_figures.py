"""Evaluation figures (SPEC 7) from played episodes: accuracy by task source, input-length bucket and range, end
states, context use, each environment's own sections, and report.md.

Pure functions of trajectories and records, so the demo's report and the eval stage count alike."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from pipeline.data.trajectory import Trajectory
from pipeline.env.registry import eval_figures
from pipeline.play.rollout import summarize
from pipeline.tasks.schema import task_source

BUCKETS = [(2_000, "<=2K"), (8_000, "2K-8K"), (32_000, "8K-32K"), (128_000, "32K-128K"), (512_000, "128K-512K")]
# Input-length ranges reported beside the buckets: the demo's "longer than any training input" figure
RANGES = {"4K-32K": (4_000, 32_000)}


def length_bucket(tokens: int | None) -> str:
    """The input-length bucket of an input of `tokens` student tokens."""
    for limit, label in BUCKETS:
        if (tokens or 0) <= limit:
            return label
    return ">512K"


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
    report["accuracy_by_task"] = accuracy_by(trajectories, lambda t: task_source(t.metadata))
    report["accuracy_by_length"] = accuracy_by(trajectories, lambda t: length_bucket(t.input_tokens))
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


def accuracy_by(items: list[Any], key) -> dict[str, float]:
    """Share correct per group (episodes or no-tools records), buckets in length order."""
    groups: dict[str, list[bool]] = defaultdict(list)
    for item in items:
        groups[key(item)].append(bool(item.correct if hasattr(item, "correct") else item["correct"]))
    return {k: sum(v) / len(v) for k, v in _ordered(groups).items()}


def _ordered(groups: dict[str, Any]) -> dict[str, Any]:
    order = [label for _, label in BUCKETS] + [">512K"]
    return dict(sorted(groups.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))


def no_tools_figures(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The no-tools baseline's figures, in the same keys as a system's (records get their bucket)."""
    for record in results:
        record["bucket"] = length_bucket(record["input_tokens"])
    return {
        "episodes": len(results),
        "fits": sum(r["fits"] for r in results),
        "accuracy": sum(r["correct"] for r in results) / len(results) if results else 0.0,
        "accuracy_by_task": accuracy_by(results, lambda r: r["source"]),
        "accuracy_by_length": accuracy_by(results, lambda r: r["bucket"]),
    }


def sawtooth_picks(trajectories: list[Trajectory], n: int) -> list[Trajectory]:
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
        "| format errors / turn | mean context | peak context | mean rounds | seconds played |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, f in report["systems"].items():
        seconds = f"{f['seconds']:.0f}" if "seconds" in f else "-"
        if "end_states" not in f:
            lines.append(f"| {name} | {f['accuracy']:.0%} | - | - | - | - | - | - | {seconds} |")
            continue
        lines.append(
            f"| {name} | {f['accuracy']:.0%} | {f['finish_rate']:.0%} | {f['well_formed_finish_rate']:.0%} | "
            f"{f['format_error_rate']:.2f} | {f['mean_context_tokens']:.0f} | {f['peak_context_tokens']} | "
            f"{f['mean_rounds']:.1f} | {seconds} |"
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
