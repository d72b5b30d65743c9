"""The demo's figures: each system's accuracy per held-out split, GRPO's training curve, the issue's targets, and
summary.json / summary.md / the terminal table. Computed from the stage reports and the evaluated episodes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from pipeline.settings.demo_recipes import LONG_HELDOUT_TOKENS, SHORT_HELDOUT_MAX_TOKENS

SYSTEMS = ("untrained", "sft", "grpo")  # the models evaluated, in training order
SAMPLED = ("sft_t1", "grpo_t1")  # the trained models again at temperature 1.0


def split_figures(out: Path, name: str) -> dict[str, float | None]:
    """A system's figures on each held-out split, from its episodes: short (<= 2K) and long (4K-32K) generated
    NIAH with held-out phrasings, and the external hand-written set."""
    from pipeline.data.trajectory_files import iter_trajectories

    path = out / "eval" / name / "trajectories.jsonl"
    episodes = list(iter_trajectories(path)) if path.exists() else []
    external = [t for t in episodes if t.task_id.startswith("external")]
    generated = [t for t in episodes if not t.task_id.startswith("external")]
    short = [t for t in generated if (t.input_tokens or 0) <= SHORT_HELDOUT_MAX_TOKENS]
    low, high = LONG_HELDOUT_TOKENS
    long = [t for t in generated if low <= (t.input_tokens or 0) <= high]

    def rate(items: list, ok) -> float | None:
        return sum(bool(ok(t)) for t in items) / len(items) if items else None

    return {
        "heldout": rate(generated, lambda t: t.correct),
        "short": rate(short, lambda t: t.correct),
        "short_well_formed_finish": rate(short, lambda t: t.end_state == "finished" and t.format_errors == 0),
        "long": rate(long, lambda t: t.correct),
        "external": rate(external, lambda t: t.correct),
        "episodes": len(episodes),
    }


def grpo_figures(report: dict[str, Any]) -> dict[str, Any]:
    """Mean training reward of the first and last quarter of the steps, and the share of groups whose rewards
    differ (a group with one reward for all its episodes has no advantage: it teaches nothing)."""
    rewards = [s["reward"] for s in report["steps"] if "reward" in s]
    quarter = max(1, len(rewards) // 4)
    spread = [1.0 - s["frac_reward_zero_std"] for s in report["steps"] if "frac_reward_zero_std" in s]
    return {
        "steps": report["global_step"],
        "episodes_per_step": report["episodes_per_step"],
        "rewards": rewards,
        "first_quarter_reward": sum(rewards[:quarter]) / quarter if rewards else None,
        "last_quarter_reward": sum(rewards[-quarter:]) / quarter if rewards else None,
        "groups_with_spread": sum(spread) / len(spread) if spread else None,
    }


def demo_targets(summary: dict[str, Any]) -> dict[str, bool]:
    """The issue's targets, each checked on the figures above."""
    splits, g = summary["splits"], summary["grpo"]

    def at_least(value: float | None, bound: float) -> bool:
        return value is not None and value >= bound

    sft, grpo, sft_t1, grpo_t1 = (splits.get(k, {}) for k in ("sft", "grpo", *SAMPLED))
    t1_gain = (grpo_t1.get("heldout") or 0.0) - (sft_t1.get("heldout") or 0.0)
    return {
        "whole_demo_within_30_minutes": summary["total_seconds"] <= 1800,
        "sft_short_accuracy_at_least_0.9": at_least(sft.get("short"), 0.9),
        "sft_short_well_formed_finish_at_least_0.9": at_least(sft.get("short_well_formed_finish"), 0.9),
        "sft_long_4k_32k_accuracy_at_least_0.7": at_least(sft.get("long"), 0.7),
        "sft_external_accuracy_at_least_0.7": at_least(sft.get("external"), 0.7) if "external" in sft else True,
        "grpo_last_quarter_reward_above_first": g["last_quarter_reward"] is not None
        and g["last_quarter_reward"] > g["first_quarter_reward"],
        "grpo_half_of_groups_with_reward_spread": at_least(g["groups_with_spread"], 0.5),
        "grpo_t1_accuracy_10_points_above_sft_t1_or_95": t1_gain >= 0.1 or at_least(grpo_t1.get("heldout"), 0.95),
        "grpo_greedy_accuracy_not_below_sft": (grpo.get("heldout") or 0.0) >= (sft.get("heldout") or 0.0),
    }


def summarize(out: Path, profile: Any, results: dict[str, Any], seconds: dict[str, float]) -> dict[str, Any]:
    """The figures the demo is judged by, from the stage reports and the evaluated episodes."""
    collect, curate, sft, grpo, ev = (results[k] for k in ("collect", "curate", "sft", "grpo", "eval"))
    systems = {}
    for name, figures in ev["systems"].items():
        row = {"accuracy": figures["accuracy"], "accuracy_by_length": figures["accuracy_by_length"]}
        for key in ("finish_rate", "well_formed_finish_rate", "mean_reward", "mean_context_tokens"):
            if key in figures:
                row[key] = figures[key]
        for key in ("mean_context_by_length", "imitation", "accuracy_by_range"):
            if key in figures:
                row[key] = figures[key]
        row["episodes"] = figures["episodes"]
        systems[name] = row
    summary = {
        "profile": profile.settings(),
        "seconds": seconds,
        "total_seconds": round(sum(seconds.values()), 1),
        "tasks": results["tasks"],
        "collect": {k: collect[k] for k in ("episodes", "accuracy", "end_states", "mean_context_tokens")},
        "curate": {k: curate[k] for k in ("episodes_in", "episodes_kept", "rows", "tokens", "trained_tokens")},
        "sft": {
            "steps": sft["global_step"],
            "first_loss": sft["losses"][0]["loss"] if sft["losses"] else None,
            "last_loss": sft["losses"][-1]["loss"] if sft["losses"] else None,
        },
        "grpo": grpo_figures(grpo),
        "eval": {"tasks": ev["tasks"], "systems": systems},
        "splits": {name: split_figures(out, name) for name in ev["systems"] if name != "no_tools"},
    }
    summary["targets"] = demo_targets(summary)
    return summary


def write_summary(out: Path, summary: dict[str, Any], results: dict[str, Any]) -> None:
    """summary.json (for tests and scripts) and summary.md (for people), with the plots embedded."""
    from pipeline.reports.plots import training_curves_plot

    sft_losses = [(e["step"], e["loss"]) for e in results["sft"]["losses"]]
    grpo_rewards = [(s["step"], s["reward"]) for s in results["grpo"]["steps"] if "reward" in s]
    training_curves_plot(sft_losses, grpo_rewards, out / "training.png")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "summary.md").write_text(summary_markdown(summary, results["eval"]))


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def summary_markdown(summary: dict[str, Any], eval_report: dict[str, Any]) -> str:
    """What the demo shows, in the order a reader asks: did it learn, how was it trained, how it uses context."""
    systems = summary["eval"]["systems"]
    lines = [
        f"# statelm demo ({summary['profile']['name']}): {summary['total_seconds'] / 60:.1f} minutes on CPU",
        "",
        f"Held-out tasks: {summary['eval']['tasks']} (single-needle NIAH from generator seeds and phrasings never used "
        "in training: <=2K tokens and 4K-32K tokens, longer than any training input; and the hand-written "
        "external set). `_t1`: sampled at temperature 1.0.",
        "",
        "| system | acc <=2K | well-formed fin <=2K | acc 4K-32K | acc external | acc held-out | episodes |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, f in summary["splits"].items():
        lines.append(
            f"| {name} | {_pct(f['short'])} | {_pct(f['short_well_formed_finish'])} | {_pct(f['long'])} | "
            f"{_pct(f['external'])} | {_pct(f['heldout'])} | {f['episodes']} |"
        )
    no_tools = systems.get("no_tools")
    if no_tools:
        lines += ["", f"no-tools baseline (whole input in the prompt when it fits): {_pct(no_tools['accuracy'])}"]
    imitating = {name: s["imitation"] for name, s in systems.items() if "imitation" in s}
    if imitating:
        actions = sorted({a for i in imitating.values() for a in i["exact_turn_rate_by_action"]})
        lines += [
            "",
            "Per-turn imitation of the expert on the held-out episodes (teacher forcing: the model reads the expert's",
            "episode; a turn counts when its greedy choice is the expert's at every token). Playing an episode",
            "compounds errors; this shows what was learned turn by turn:",
            "",
            "| system | all turns | " + " | ".join(actions) + " |",
            "|---|---|" + "---|" * len(actions),
        ]
        for name, i in imitating.items():
            by_action = i["exact_turn_rate_by_action"]
            cells = [_pct(by_action.get(a)) for a in actions]
            lines.append(f"| {name} | {_pct(i['exact_turn_rate'])} | " + " | ".join(cells) + " |")
    lines += ["", "Targets (issue: demo learning):", ""]
    lines += [f"- {'met' if ok else 'NOT met'}: {name}" for name, ok in summary["targets"].items()]
    c, k, t, g = summary["collect"], summary["curate"], summary["sft"], summary["grpo"]
    rewards = ", ".join("-" if r is None else f"{r:.2f}" for r in g["rewards"])
    lines += [
        "",
        "## Training",
        "",
        f"- collect: {c['episodes']} scripted-teacher episodes, accuracy {c['accuracy']:.0%}",
        f"- curate: {k['episodes_kept']}/{k['episodes_in']} episodes kept -> {k['rows']} rows, {k['tokens']} tokens "
        f"({k['trained_tokens']} trained)",
        f"- SFT: {t['steps']} steps, loss {t['first_loss']:.3f} -> {t['last_loss']:.3f}",
        f"- GRPO: {g['steps']} steps x {g['episodes_per_step']} episodes, mean reward per step: {rewards}; "
        f"groups with a reward spread: {_pct(g['groups_with_spread'])}",
        "",
        "![training curves](training.png)",
        "",
        "## Context use",
        "",
        "Mean active context (tokens) by input length:",
        "",
    ]
    from pipeline.reports.eval_figures import BUCKETS

    seen = {b for s in systems.values() for b in s.get("mean_context_by_length", {})}
    order = [label for _, label in BUCKETS]
    buckets = sorted(seen, key=lambda b: order.index(b) if b in order else len(order))  # shortest inputs first
    lines += ["| system | " + " | ".join(buckets) + " |", "|---|" + "---|" * len(buckets)]
    for name, s in systems.items():
        if "mean_context_by_length" in s:
            by_length = s["mean_context_by_length"]
            cells = [f"{by_length[b]:.0f}" if b in by_length else "-" for b in buckets]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"![accuracy by input length](eval/{eval_report['accuracy_plot']})", ""]
    for name in (*SYSTEMS, "scripted_expert"):
        plot = eval_report["systems"].get(name, {}).get("sawtooth_plot")
        if plot:
            lines += [f"![sawtooth {name}](eval/{plot})", ""]
    seconds = ", ".join(f"{name} {s:.0f} s" for name, s in summary["seconds"].items())
    lines += ["## Time per stage", "", seconds, ""]
    return "\n".join(lines)


def print_summary(summary: dict[str, Any], console: Console) -> None:
    """The terminal version of summary.md's first table, plus stage times and targets."""
    table = Table(title="statelm demo: held-out tasks")
    table.add_column("system", no_wrap=True)
    for column in ("acc<=2K", "wf<=2K", "4K-32K", "extern", "held-out", "imit"):  # fits 80 columns
        table.add_column(column, no_wrap=True)
    systems = summary["eval"]["systems"]
    for name, f in summary["splits"].items():
        imitation = systems.get(name, {}).get("imitation")
        table.add_row(
            name, _pct(f["short"]), _pct(f["short_well_formed_finish"]), _pct(f["long"]), _pct(f["external"]),
            _pct(f["heldout"]), _pct(imitation["exact_turn_rate"]) if imitation else "-",
        )  # fmt: skip
    if "no_tools" in systems:
        table.add_row("no_tools", "-", "-", "-", "-", _pct(systems["no_tools"]["accuracy"]), "-")
    console.print(table)
    console.print("wf: finished with no format error; _t1: temperature 1.0; "
                  "imit: expert turns imitated exactly under teacher forcing")  # fmt: skip
    console.print("stage seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in summary["seconds"].items()))
    g = summary["grpo"]
    console.print(f"GRPO reward per step: {', '.join(f'{r:.2f}' for r in g['rewards'])}; groups with a spread: "
                  f"{_pct(g['groups_with_spread'])}")  # fmt: skip
    for name, ok in summary["targets"].items():
        console.print(f"{'[green]met' if ok else '[yellow]NOT met'}[/]: {name}")
