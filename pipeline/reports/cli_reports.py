"""What each `statelm` stage prints when it is done: the figures of its report.json as terminal tables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

COLLECT_FIGURES = (
    "episodes", "played", "skipped_existing", "end_states", "accuracy", "mean_context_tokens",
    "peak_context_tokens", "mean_rounds", "format_errors", "truncated_turns", "tool_calls",
)  # fmt: skip


def print_collect(console: Console, report: dict[str, Any], path: Path) -> None:
    table = Table(title=f"collection report ({path})")
    table.add_column("figure")
    table.add_column("value")
    for key in COLLECT_FIGURES:
        value = report.get(key)
        shown = (
            json.dumps(value)
            if isinstance(value, dict | list)
            else f"{value:.3g}"
            if isinstance(value, float)
            else str(value)
        )
        table.add_row(key, shown)
    console.print(table)
    if report.get("truncated_turns"):
        console.print(
            f"[yellow]{report['truncated_turns']} turns were cut at the policy's max_tokens (finish_reason "
            "length); curate rejects their episodes as 'truncated': raise policy.max_tokens[/yellow]"
        )
    if report.get("failed"):
        console.print(f"[red]{len(report['failed'])} episodes failed (re-run to retry):[/red]")
        for line in report["failed"][:10]:
            console.print(f"  {line}")


def print_curate(console: Console, report: dict[str, Any]) -> None:
    for table in report_tables(report):
        console.print(table)
    skipped = report["skipped_lines"] + report["duplicate_episodes"] + report["invalid_episodes"]
    if skipped:
        console.print(f"[yellow]{len(skipped)} lines or episodes skipped:[/yellow]")
        for line in skipped[:10]:
            console.print(f"  {line}")
    console.print(f"dataset in [bold]{report['dataset']}[/bold]")


def print_eval(console: Console, report: dict[str, Any], output_dir: str) -> None:
    table = Table(title=f"evaluation ({output_dir}/report.md)")
    for column in ("system", "accuracy", "finished", "mean context", "peak context"):
        table.add_column(column)
    for name, f in report["systems"].items():
        table.add_row(
            name,
            f"{f['accuracy']:.0%}",
            f"{f.get('finish_rate', 0):.0%}",
            f"{f.get('mean_context_tokens', 0):.0f}",
            str(f.get("peak_context_tokens", "-")),
        )
    console.print(table)


def print_sft(console: Console, report: dict[str, Any], output_dir: str) -> None:
    table = Table(title=f"SFT report ({output_dir}/report.json)")
    for column in ("step", "loss"):
        table.add_column(column)
    for entry in report["losses"]:
        table.add_row(str(entry["step"]), f"{entry['loss']:.4g}")
    console.print(table)
    console.print(f"global step {report['global_step']}, {report['seconds']} s, model in {output_dir}")


def print_grpo(console: Console, report: dict[str, Any], output_dir: str) -> None:
    table = Table(title=f"GRPO report ({output_dir}/report.json)")
    for column in ("step", "reward", "accuracy", "malformed", "trained tokens"):
        table.add_column(column)
    for step in report["steps"]:
        table.add_row(
            str(step["step"]),
            f"{step.get('reward', 0):.3g}",
            f"{step.get('episodes/accuracy', 0):.0%}",
            f"{step.get('episodes/malformed', 0):.0%}",
            f"{step.get('tokens/trained', 0):.0f}",
        )
    console.print(table)


def report_tables(report: dict[str, Any]) -> list[Any]:
    """Rich tables of a curate report: figures, rejection reasons, action types before/after balancing."""

    figures = Table(title=f"curate report ({Path(report['dataset']).parent / 'report.json'})")
    figures.add_column("figure")
    figures.add_column("value", justify="right")
    for key in ("episodes_in", "episodes_kept", "rows", "tokens", "trained_tokens", "trained_turns"):
        figures.add_row(key, f"{report[key]:,}")
    figures.add_row("tokens as per-turn snapshots", f"{report['snapshot_tokens']:,}")
    figures.add_row("segments / snapshots (tokens)", f"{report['segment_to_snapshot_tokens']:.3f}")
    figures.add_row("turns the policy marked untrained", f"{report.get('masked_by_policy', 0):,}")
    figures.add_row("segment starts", json.dumps(report["segment_breaks"]))
    figures.add_row("seconds", str(report["seconds"]))

    rejected = Table(title="rejections (an episode may have several reasons)")
    rejected.add_column("reason")
    rejected.add_column("episodes", justify="right")
    for reason, count in report["rejections"].items():
        rejected.add_row(reason, str(count))
    if not report["rejections"]:
        rejected.add_row("(none)", "0")

    actions = Table(title="action types of trained turns, before and after balancing")
    for column in ("action", "cap", "before", "share", "after", "share "):
        actions.add_column(column, justify="left" if column == "action" else "right")
    balance = report["recipe"]["balance"]
    n_before, n_after = sum(report["actions_before"].values()), sum(report["actions_after"].values())
    for action, count in report["actions_before"].items():
        after = report["actions_after"].get(action, 0)
        actions.add_row(
            action,
            f"{balance['max_share_by_type'].get(action, balance['max_share']):.0%}",
            str(count),
            f"{count / n_before:.1%}" if n_before else "-",
            str(after),
            f"{after / n_after:.1%}" if n_after else "-",
        )
    return [figures, rejected, actions]
