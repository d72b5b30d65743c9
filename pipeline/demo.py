"""`statelm demo`: the whole pipeline on a CPU, end to end, with figures that say whether the tiny model learned.

Stages: tiny model -> tasks (training and held-out) -> scripted-teacher collection -> curation -> SFT -> GRPO ->
evaluation of the untrained, SFT and GRPO models beside the scripted expert and the no-tools baseline. The held-out
tasks come from generator seeds never used for training, and the demo checks that no held-out question was seen.
Every stage runs through the recipes and entry points a user runs by hand: the demo writes those recipes to
`<out>/recipes/`, so any stage can be re-run alone (`statelm sft --recipe <out>/recipes/sft.yaml`). Stages resume
like their commands do: a re-run reuses the model, skips collected episodes and finished training.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

STAGES = ("tiny model", "tasks", "collect", "curate", "sft", "grpo", "eval")
SYSTEMS = ("untrained", "sft", "grpo")  # the models evaluated, in training order
SHORT = "<=2K"  # the input-length bucket the learning targets are measured on


@dataclass(frozen=True)
class DemoProfile:
    """Sizes of one demo run. `full` is tuned to learn within ~15 minutes on 2 cores; `quick` is a smoke run."""

    name: str
    # model (pipeline.tiny.build_tiny_model)
    vocab_size: int
    hidden_size: int
    num_layers: int
    intermediate_size: int
    # data: single-needle NIAH, haystack lengths in tokens
    train_tasks: int
    min_tokens: int
    max_tokens: int
    expert_chunk_size: int  # the teacher reads chunks this long: shorter rows to train on
    heldout_short: int  # held-out tasks <= 2K tokens (the learning targets)
    heldout_long: int  # held-out tasks 4K-8K tokens (context use vs input length)
    # SFT
    sft_steps: int
    sft_learning_rate: float
    # GRPO
    grpo_steps: int
    grpo_group: int
    grpo_learning_rate: float
    # episodes
    max_rounds: int
    turn_tokens: int  # output cap per turn for the tiny model (the longest teacher turn is ~70 tokens)


PROFILES: dict[str, DemoProfile] = {
    "full": DemoProfile(
        name="full",
        vocab_size=4096,
        hidden_size=192,
        num_layers=3,
        intermediate_size=576,
        train_tasks=160,
        min_tokens=500,
        max_tokens=2000,
        expert_chunk_size=512,
        heldout_short=16,
        heldout_long=4,
        sft_steps=960,  # two epochs: every structural turn imitated exactly on held-out episodes (measured)
        sft_learning_rate=2e-3,
        grpo_steps=6,
        grpo_group=4,
        grpo_learning_rate=5e-6,
        max_rounds=16,
        turn_tokens=128,
    ),
    "quick": DemoProfile(
        name="quick",
        vocab_size=4096,
        hidden_size=64,
        num_layers=2,
        intermediate_size=192,
        train_tasks=6,
        min_tokens=500,
        max_tokens=1500,
        expert_chunk_size=512,
        heldout_short=2,
        heldout_long=1,
        sft_steps=4,
        sft_learning_rate=2e-3,
        grpo_steps=1,
        grpo_group=2,
        grpo_learning_rate=5e-6,
        max_rounds=10,
        turn_tokens=32,
    ),
}


def write_recipes(out: Path, profile: DemoProfile) -> dict[str, Path]:
    """The recipe of every stage, as YAML files a user can read and re-run; paths inside are under `out`."""
    model, tasks = str(out / "model"), out / "tasks"
    # The student's per-turn cap is also the output budget its environment reserves (GRPO checks they agree)
    env = {"max_context_tokens": 32000, "max_output_tokens": profile.turn_tokens, "max_rounds": profile.max_rounds}
    recipes: dict[str, dict[str, Any]] = {
        "teacher": {
            "output_dir": str(out / "collect"),
            "student_tokenizer": model,
            "seed": 0,
            "concurrency": 4,
            "tasks": [{"file": str(tasks / "train.jsonl")}],
            "policy": {"kind": "scripted", "chunk_size": profile.expert_chunk_size},
            # The teacher plays in the student's environment: budgets show up in tool results (checkBudget),
            # and a tiny student imitates them literally, so any difference is a shift between SFT and eval
            "env": env,
        },
        "curate": {
            "inputs": [str(out / "collect" / "trajectories.jsonl")],
            "output_dir": str(out / "curate"),
            "tokenizer": model,
            "seed": 0,
            "filters": {"require_finished": True, "require_correct": True, "max_format_errors": 0},
            "balance": {"max_share": 1.0, "max_share_by_type": {"deleteContext": 0.35}},
        },
        "sft": {
            "model_name_or_path": model,
            "dtype": "float32",
            "attn_implementation": "sdpa",
            "dataset_path": str(out / "curate" / "dataset"),
            "output_dir": str(out / "sft"),
            "seed": 42,
            "bf16": False,
            "max_length": 8192,
            "packing": False,
            "per_device_train_batch_size": 1,
            "gradient_accumulation_steps": 1,
            "max_steps": profile.sft_steps,
            "learning_rate": profile.sft_learning_rate,
            "lr_scheduler_type": "cosine",
            "warmup_steps": max(1, profile.sft_steps // 20),
            "weight_decay": 0.0,
            "max_grad_norm": 1.0,
            "activation_checkpointing": False,
            "logging_steps": max(1, profile.sft_steps // 40),
            "save_strategy": "steps",
            "save_steps": max(2, profile.sft_steps // 4),
            "save_total_limit": 1,
            "dataloader_num_workers": 0,
            "report_to": "none",
        },
        "grpo": {
            "model_name_or_path": str(out / "sft"),
            "dtype": "float32",
            "attn_implementation": "sdpa",
            "tasks": [{"file": str(tasks / "train.jsonl")}],
            "num_episodes_per_task": profile.grpo_group,
            "tasks_per_generation": 1,
            "max_segments_per_episode": 8,
            "advantage": "grpo",
            "environment": {k: v for k, v in env.items() if k != "max_output_tokens"},
            "use_vllm": False,
            "max_completion_length": profile.turn_tokens,
            "temperature": 1.0,
            "top_p": 1.0,
            "output_dir": str(out / "grpo"),
            "seed": 42,
            "bf16": False,
            "per_device_train_batch_size": 1,
            "max_steps": profile.grpo_steps,
            "learning_rate": profile.grpo_learning_rate,
            "lr_scheduler_type": "constant",
            "beta": 0.001,
            "activation_checkpointing": False,
            "logging_steps": 1,
            "save_strategy": "steps",
            "save_steps": max(1, profile.grpo_steps // 2),
            "save_total_limit": 1,
            "dataloader_num_workers": 0,
            "report_to": "none",
        },
        "eval": {
            "output_dir": str(out / "eval"),
            "student_tokenizer": model,
            "tasks": [{"file": str(tasks / "heldout.jsonl")}],
            "models": {
                name: {"kind": "hf", "model": str(out / folder), "temperature": 0.0, "max_tokens": profile.turn_tokens}
                for name, folder in zip(SYSTEMS, ("model", "sft", "grpo"), strict=True)
            },
            "baselines": ["scripted", "no_tools"],
            "expert": {"kind": "scripted", "chunk_size": profile.expert_chunk_size},  # the teacher, as in training
            "no_tools_model": "untrained",
            "no_tools_max_tokens": 4096,
            "env": env,
        },
    }
    folder = out / "recipes"
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, recipe in recipes.items():
        paths[name] = folder / f"{name}.yaml"
        header = f"# statelm demo ({profile.name}): stage {name}\n"
        paths[name].write_text(header + yaml.safe_dump(recipe, sort_keys=False))
    return paths


def make_tasks(out: Path, profile: DemoProfile) -> dict[str, Any]:
    """Training tasks (seed 0) and held-out tasks (seeds 100, 101), lengths counted with the tiny tokenizer."""
    from pipeline.collect import load_tokenizer
    from pipeline.tasks.generators import generate_niah
    from pipeline.tasks.schema import write_tasks

    tokenizer = load_tokenizer(str(out / "model"))
    train = generate_niah(profile.train_tasks, profile.min_tokens, profile.max_tokens, seed=0, tokenizer=tokenizer)
    heldout = generate_niah(profile.heldout_short, profile.min_tokens, 2000, seed=100, tokenizer=tokenizer)
    heldout += generate_niah(profile.heldout_long, 4000, 8000, seed=101, tokenizer=tokenizer)
    seen = {(t.question, t.answer) for t in train}
    leaked = [t.id for t in heldout if (t.question, t.answer) in seen]
    if leaked:  # generator seeds collided: the held-out figures would not be held out
        raise RuntimeError(f"held-out tasks {leaked} also appear in the training tasks")
    write_tasks(train, out / "tasks" / "train.jsonl")
    write_tasks(heldout, out / "tasks" / "heldout.jsonl")
    return {"train": len(train), "heldout": len(heldout), "overlap": 0}


def run_trl_stage(module: str, recipe: Path) -> dict[str, Any]:
    """SFT or GRPO in this process, parsed from the recipe exactly as `accelerate launch -m <module>` would."""
    import importlib

    stage = importlib.import_module(module)
    script_args, training_args, model_args = stage.make_parser().parse_args_and_config(["--config", str(recipe)])
    script_args.recipe = str(recipe)
    return stage.main(script_args, training_args, model_args)


def run_demo(out: Path, profile: DemoProfile, console: Console | None = None) -> dict[str, Any]:
    """Run every stage in order and write `<out>/summary.json` and `<out>/summary.md`."""
    from pipeline.collect import run_collect
    from pipeline.curate import load_curate_recipe, run_curate
    from pipeline.evaluate import run_eval
    from pipeline.recipe import EvalRecipe, load_collect_recipe, load_recipe
    from pipeline.tiny import build_tiny_model

    console = console or Console()
    out.mkdir(parents=True, exist_ok=True)
    recipes = write_recipes(out, profile)
    seconds: dict[str, float] = {}
    results: dict[str, Any] = {}

    def stage(name: str, run: Callable[[], Any]) -> None:
        console.rule(f"[bold]{STAGES.index(name) + 1}/{len(STAGES)} {name}")
        started = time.time()
        results[name] = run()
        seconds[name] = round(time.time() - started, 1)
        console.print(f"[green]{name} done in {seconds[name]:.0f} s")

    sizes = ("vocab_size", "hidden_size", "num_layers", "intermediate_size")
    stage("tiny model", lambda: str(build_tiny_model(out / "model", **{k: getattr(profile, k) for k in sizes})))
    stage("tasks", lambda: make_tasks(out, profile))
    stage("collect", lambda: run_collect(load_collect_recipe(recipes["teacher"], {})))
    stage("curate", lambda: run_curate(load_curate_recipe(recipes["curate"], {})))
    stage("sft", lambda: run_trl_stage("pipeline.sft", recipes["sft"]))
    stage("grpo", lambda: run_trl_stage("pipeline.grpo", recipes["grpo"]))
    stage("eval", lambda: run_eval(load_recipe(EvalRecipe, recipes["eval"], {})))

    summary = summarize(profile, results, seconds)
    write_summary(out, summary, results)
    print_summary(summary, console)
    console.print(f"summary in [bold]{out / 'summary.md'}[/bold]")
    return summary


def summarize(profile: DemoProfile, results: dict[str, Any], seconds: dict[str, float]) -> dict[str, Any]:
    """The figures the demo is judged by, from the stage reports (nothing recomputed, nothing assumed)."""
    collect, curate, sft, grpo, ev = (results[k] for k in ("collect", "curate", "sft", "grpo", "eval"))
    systems = {}
    for name, figures in ev["systems"].items():
        row = {"accuracy": figures["accuracy"], "accuracy_by_length": figures["accuracy_by_length"]}
        for key in ("finish_rate", "well_formed_finish_rate", "mean_reward", "mean_context_tokens"):
            if key in figures:
                row[key] = figures[key]
        if "mean_context_by_length" in figures:
            row["mean_context_by_length"] = figures["mean_context_by_length"]
        if "imitation" in figures:
            row["imitation"] = figures["imitation"]
        row["episodes"] = figures["episodes"]
        systems[name] = row
    after_sft, after_grpo = systems["sft"], systems["grpo"]
    targets = {
        "sft_well_formed_finish_rate_at_least_0.8": after_sft["well_formed_finish_rate"] >= 0.8,
        "sft_short_accuracy_at_least_0.3": after_sft["accuracy_by_length"].get(SHORT, 0.0) >= 0.3,
        "grpo_mean_reward_not_below_sft": after_grpo["mean_reward"] >= after_sft["mean_reward"],
    }
    return {
        "profile": asdict(profile),
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
        "grpo": {
            "steps": grpo["global_step"],
            "episodes_per_step": grpo["episodes_per_step"],
            "rewards": [s.get("reward") for s in grpo["steps"]],
        },
        "eval": {"tasks": ev["tasks"], "systems": systems},
        "targets": targets,
    }


def write_summary(out: Path, summary: dict[str, Any], results: dict[str, Any]) -> None:
    """summary.json (for tests and scripts) and summary.md (for people), with the plots embedded."""
    from pipeline.plots import training_curves_plot

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
        f"Held-out tasks: {summary['eval']['tasks']} single-needle NIAH (generator seeds never used in training).",
        "",
        "| system | accuracy (<=2K) | accuracy (all) | finished | well-formed finished | mean reward | mean context |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in systems.items():
        lines.append(
            f"| {name} | {_pct(s['accuracy_by_length'].get(SHORT))} | {_pct(s['accuracy'])} | "
            f"{_pct(s.get('finish_rate'))} | {_pct(s.get('well_formed_finish_rate'))} | "
            f"{s['mean_reward']:.2f} | {s['mean_context_tokens']:.0f} |"
            if "mean_reward" in s
            else f"| {name} | {_pct(s['accuracy_by_length'].get(SHORT))} | {_pct(s['accuracy'])} | - | - | - | - |"
        )
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
        f"- GRPO: {g['steps']} steps x {g['episodes_per_step']} episodes, mean reward per step: {rewards}",
        "",
        "![training curves](training.png)",
        "",
        "## Context use",
        "",
        "Mean active context (tokens) by input length:",
        "",
    ]
    from pipeline.evaluate import BUCKETS

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
    for column in ("acc<=2K", "acc", "fin", "wf fin", "reward", "ctx", "imit"):  # fits 80 columns
        table.add_column(column, no_wrap=True)
    for name, s in summary["eval"]["systems"].items():
        table.add_row(
            name,
            _pct(s["accuracy_by_length"].get(SHORT)),
            _pct(s["accuracy"]),
            _pct(s.get("finish_rate")),
            _pct(s.get("well_formed_finish_rate")),
            f"{s['mean_reward']:.2f}" if "mean_reward" in s else "-",
            f"{s['mean_context_tokens']:.0f}" if "mean_context_tokens" in s else "-",
            _pct(s["imitation"]["exact_turn_rate"]) if "imitation" in s else "-",
        )
    console.print(table)
    console.print("fin: finished; wf fin: finished with no format error; ctx: mean active context (tokens); "
                  "imit: expert turns imitated exactly under teacher forcing")  # fmt: skip
    console.print("stage seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in summary["seconds"].items()))
    for name, ok in summary["targets"].items():
        console.print(f"{'[green]met' if ok else '[yellow]NOT met'}[/]: {name}")
