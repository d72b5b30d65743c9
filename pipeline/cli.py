"""The `statelm` command line: one sub-command per stage (SPEC 1)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    help="statelm: train chat LLMs to manage their own context.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
tasks_app = typer.Typer(
    help="Make task files: generate synthetic tasks or convert public benchmarks.", no_args_is_help=True
)
app.add_typer(tasks_app, name="tasks")
console = Console()


@app.callback()
def _setup(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("bm25s", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)


@app.command("tiny-model")
def tiny_model(
    out: Annotated[Path, typer.Option(help="Folder to write the model and tokenizer to.")] = Path("runs/tiny/model"),
    seed: Annotated[int, typer.Option(help="Seed of the tokenizer corpus and the weights.")] = 0,
    vocab_size: Annotated[int, typer.Option(help="Tokenizer vocabulary size.")] = 4096,
    hidden_size: Annotated[int, typer.Option(help="Model width.")] = 256,
    num_layers: Annotated[int, typer.Option(help="Transformer layers.")] = 4,
    overwrite: Annotated[bool, typer.Option(help="Rebuild even if the folder holds the same build.")] = False,
) -> None:
    """Build the tiny Qwen3-architecture model and tokenizer used by tests, the demo and CPU recipes."""
    from pipeline.tiny import build_tiny_model

    path = build_tiny_model(
        out, seed=seed, vocab_size=vocab_size, hidden_size=hidden_size, num_layers=num_layers, overwrite=overwrite
    )
    console.print(f"tiny model ready in [bold]{path}[/bold]")


@tasks_app.command("generate")
def tasks_generate(
    generator: Annotated[str, typer.Argument(help="niah or multihop.")],
    out: Annotated[Path, typer.Option(help="Task JSONL file to write.")],
    n: Annotated[int, typer.Option(help="Number of tasks.")] = 10,
    min_tokens: Annotated[int, typer.Option(help="Shortest input, in tokens.")] = 1000,
    max_tokens: Annotated[int, typer.Option(help="Longest input, in tokens.")] = 8000,
    needles: Annotated[int, typer.Option(help="niah: needles per haystack.")] = 1,
    seed: Annotated[int, typer.Option(help="Generator seed.")] = 0,
    tokenizer: Annotated[str | None, typer.Option(help="Tokenizer that lengths are measured in.")] = None,
) -> None:
    """Generate seeded synthetic tasks (NIAH single/multi needle, multi-hop)."""
    from pipeline.collect import load_tokenizer
    from pipeline.tasks.generators import GENERATORS
    from pipeline.tasks.schema import write_tasks

    if generator not in GENERATORS:
        raise typer.BadParameter(f"unknown generator {generator!r}; choose from {sorted(GENERATORS)}")
    kwargs = dict(
        n=n,
        min_tokens=min_tokens,
        max_tokens=max_tokens,
        seed=seed,
        tokenizer=load_tokenizer(tokenizer) if tokenizer else None,
    )
    if generator == "niah":
        kwargs["n_needles"] = needles
    count = write_tasks(GENERATORS[generator](**kwargs), out)
    console.print(f"wrote {count} {generator} tasks to [bold]{out}[/bold]")


@tasks_app.command("convert")
def tasks_convert(
    benchmark: Annotated[str, typer.Argument(help="novelqa, infinitebench, longmemeval, browsecomp_plus or ruler.")],
    source: Annotated[Path, typer.Argument(help="The benchmark's released file (NovelQA: question file/folder).")],
    out: Annotated[Path, typer.Argument(help="Task JSONL to write.")],
    books: Annotated[Path | None, typer.Option(help="NovelQA: folder of book .txt files.")] = None,
    corpus: Annotated[Path | None, typer.Option(help="BrowseComp-Plus: corpus JSONL (docid, text, url).")] = None,
    max_negatives: Annotated[int | None, typer.Option(help="BrowseComp-Plus: cap on negative docs.")] = None,
    kind: Annotated[str | None, typer.Option(help="BrowseComp-Plus: grader kind, judge or exact.")] = None,
    name: Annotated[str | None, typer.Option(help="RULER: task name used in ids (default: folder).")] = None,
    docs_dir: Annotated[Path | None, typer.Option(help="Where huge inputs go (default: <out stem>_docs).")] = None,
    inline_max_chars: Annotated[int | None, typer.Option(help="Inputs longer than this go to files.")] = None,
    skip_invalid: Annotated[bool, typer.Option(help="Skip and count corrupt records.")] = False,
) -> None:
    """Convert a public benchmark's local files into task records (data/README.md)."""
    from pipeline.tasks.loaders import LOADERS, convert

    if benchmark not in LOADERS:
        raise typer.BadParameter(f"unknown benchmark {benchmark!r}; choose from {sorted(LOADERS)}")
    options = {
        "books_dir": books,
        "corpus": corpus,
        "max_negatives": max_negatives,
        "kind": kind,
        "name": name,
        "docs_dir": docs_dir,
        "inline_max_chars": inline_max_chars,
        "skip_invalid": skip_invalid or None,
    }
    loaded = convert(benchmark, out, source, **{k: v for k, v in options.items() if v is not None})
    console.print(f"wrote {len(loaded)} tasks to [bold]{out}[/bold] (skipped {loaded.skipped} invalid records)")


@app.command("collect")
def collect_cmd(
    recipe: Annotated[Path, typer.Option(help="Teacher recipe YAML, e.g. recipes/tiny/teacher.yaml.")],
    output_dir: Annotated[str | None, typer.Option(help="Override the recipe's output_dir.")] = None,
    student_tokenizer: Annotated[str | None, typer.Option(help="Override the recipe's student_tokenizer.")] = None,
    concurrency: Annotated[int | None, typer.Option(help="Override the recipe's concurrency.")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Play teacher episodes in the environment; resumable, one JSONL line per finished episode."""
    from pipeline.collect import run_collect
    from pipeline.recipe import load_collect_recipe

    loaded = load_collect_recipe(
        recipe, {"output_dir": output_dir, "student_tokenizer": student_tokenizer, "concurrency": concurrency}
    )
    report = run_collect(loaded, progress=progress)
    _print_report(report, Path(loaded.output_dir) / "report.json")


def _print_report(report: dict, path: Path) -> None:
    table = Table(title=f"collection report ({path})")
    table.add_column("figure")
    table.add_column("value")
    for key in (
        "episodes",
        "played",
        "skipped_existing",
        "end_states",
        "accuracy",
        "mean_context_tokens",
        "peak_context_tokens",
        "mean_rounds",
        "format_errors",
        "tool_calls",
    ):
        value = report.get(key)
        table.add_row(
            key,
            json.dumps(value)
            if isinstance(value, dict | list)
            else f"{value:.3g}"
            if isinstance(value, float)
            else str(value),
        )
    console.print(table)
    if report.get("failed"):
        console.print(f"[red]{len(report['failed'])} episodes failed (re-run to retry):[/red]")
        for line in report["failed"][:10]:
            console.print(f"  {line}")


if __name__ == "__main__":
    app()
