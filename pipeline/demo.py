"""`statelm demo`: the whole pipeline on a CPU, end to end, with figures that say whether the tiny model learned.

Stages: tiny model -> tasks (training and held-out) -> scripted-teacher collection -> curation -> SFT -> GRPO ->
evaluation of the untrained, SFT and GRPO models beside the scripted expert and the no-tools baseline. The held-out
tasks come from generator seeds never used for training, and the demo checks that no held-out question was seen.
Every stage runs through the recipes and entry points a user runs by hand: its recipes are YAML files in
`recipes/demo/` (read by pipeline.settings.demo_recipes), and the demo writes them, paths filled in, to
`<out>/recipes/`, so any stage can be re-run alone (`statelm sft --config <out>/recipes/sft.yaml`). Stages resume
like their commands do: a re-run reuses the model, skips collected episodes and finished training.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from pipeline.reports.demo_report import SAMPLED, SYSTEMS, print_summary, summarize, write_summary
from pipeline.settings.demo_recipes import (
    LONG_HELDOUT_TOKENS,
    PROFILES,
    SHORT_HELDOUT_MAX_TOKENS,
    DemoProfile,
    fill_paths,
    write_recipes,
)

STAGES = ("base model", "tasks", "collect", "curate", "sft", "grpo", "eval")
__all__ = ["PROFILES", "SAMPLED", "STAGES", "SYSTEMS", "DemoProfile", "run_demo", "write_recipes"]


def make_tasks(out: Path, profile: DemoProfile) -> dict[str, Any]:
    """Training tasks (seed 0, training phrasings), GRPO tasks (seed 200, distractor needles) and held-out tasks
    (seeds 100, 101, held-out phrasings), lengths counted with the student's tokenizer."""
    from pipeline.data.task_sources import load_tokenizer
    from pipeline.tasks.generators import generate_niah
    from pipeline.tasks.schema import read_tasks, write_tasks

    tokenizer = load_tokenizer(str(out / "model"))
    train = generate_niah(profile.train_tasks, profile.min_tokens, profile.max_tokens, seed=0, tokenizer=tokenizer,
                          templates="train")  # fmt: skip
    grpo = generate_niah(profile.grpo_tasks, profile.min_tokens, profile.max_tokens, seed=200, tokenizer=tokenizer,
                         templates="train", n_distractors=profile.grpo_distractors, prefix="grpo")  # fmt: skip
    heldout = generate_niah(profile.heldout_short, profile.min_tokens, SHORT_HELDOUT_MAX_TOKENS, seed=100,
                            tokenizer=tokenizer, templates="heldout")  # fmt: skip
    heldout += generate_niah(profile.heldout_long, *LONG_HELDOUT_TOKENS, seed=101, tokenizer=tokenizer,
                             templates="heldout")  # fmt: skip
    written = {str(out / "tasks" / f"{name}.jsonl") for name in ("train", "grpo", "heldout")}
    external = [t for spec in fill_paths(profile.recipes["eval"]["tasks"], out) if spec["file"] not in written
                for t in read_tasks(spec["file"])[: spec.get("limit")]]  # fmt: skip
    seen = {(t.question, str(t.answer)) for t in train + grpo}
    leaked = [t.id for t in heldout + external if (t.question, str(t.answer)) in seen]
    if leaked:  # generator seeds collided: the held-out figures would not be held out
        raise RuntimeError(f"held-out tasks {leaked} also appear in the training tasks")
    write_tasks(train, out / "tasks" / "train.jsonl")
    write_tasks(grpo, out / "tasks" / "grpo.jsonl")
    write_tasks(heldout, out / "tasks" / "heldout.jsonl")
    return {"train": len(train), "grpo": len(grpo), "heldout": len(heldout), "external": len(external),
            "overlap": 0}  # fmt: skip


def build_base_model(out: Path, profile: DemoProfile) -> str:
    """The student before training: the packaged SmolLM2 imported once, or the tiny random model."""
    if profile.base == "tiny":
        from pipeline.models.tiny import build_tiny_model

        return str(build_tiny_model(out / "model", **profile.tiny_model))
    from pipeline.models.base_model import import_base_model

    return str(import_base_model(profile.base, out / "model"))


def run_demo(out: Path, profile: DemoProfile, console: Console | None = None) -> dict[str, Any]:
    """Run every stage in order and write `<out>/summary.json` and `<out>/summary.md`."""
    from pipeline.stages import run_stage

    console = console or Console()
    out.mkdir(parents=True, exist_ok=True)
    recipes, float32 = write_recipes(out, profile)
    if float32:
        fields = "; ".join(f"{stage}: {', '.join(names)}" for stage, names in float32.items())
        console.print(f"[yellow]this CPU has no native bf16 (AVX512-BF16/AMX; emulated it is ~20x slower): "
                      f"float32 for {fields} (see {out / 'recipes'})")  # fmt: skip
    seconds: dict[str, float] = {}
    results: dict[str, Any] = {}

    def stage(name: str, run: Callable[[], Any]) -> None:
        console.rule(f"[bold]{STAGES.index(name) + 1}/{len(STAGES)} {name}")
        started = time.time()
        results[name] = run()
        seconds[name] = round(time.time() - started, 1)
        console.print(f"[green]{name} done in {seconds[name]:.0f} s")

    stage("base model", lambda: build_base_model(out, profile))
    stage("tasks", lambda: make_tasks(out, profile))
    stage("collect", lambda: run_stage("collect", recipes["teacher"]))
    stage("curate", lambda: run_stage("curate", recipes["curate"]))
    stage("sft", lambda: run_stage("sft", recipes["sft"]))
    stage("grpo", lambda: run_stage("grpo", recipes["grpo"]))
    stage("eval", lambda: run_stage("eval", recipes["eval"]))

    summary = summarize(out, profile, results, seconds)
    write_summary(out, summary, results)
    print_summary(summary, console)
    console.print(f"summary in [bold]{out / 'summary.md'}[/bold]")
    return summary
