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
    from pipeline.curate import report_tables

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
