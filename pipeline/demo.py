"""`statelm demo`: the whole pipeline on a CPU, end to end, with figures that say whether the tiny model learned.

Stages: tiny model -> tasks (training and held-out) -> scripted-teacher collection -> curation -> SFT -> GRPO ->
evaluation of the untrained, SFT and GRPO models beside the scripted expert and the no-tools baseline. The held-out
tasks come from generator seeds never used for training, and the demo checks that no held-out question was seen.
Every stage runs through the recipes and entry points a user runs by hand: the demo writes those recipes to
`<out>/recipes/`, so any stage can be re-run alone (`statelm sft --config <out>/recipes/sft.yaml`). Stages resume
like their commands do: a re-run reuses the model, skips collected episodes and finished training.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from pipeline.demo_report import SAMPLED, SYSTEMS, print_summary, summarize, write_summary

STAGES = ("base model", "tasks", "collect", "curate", "sft", "grpo", "eval")
SAMPLED_MAX_INPUT_TOKENS = 2048  # sampled systems play the short split (and the external tasks): 2 samples each
EXTERNAL_TASKS = Path(__file__).resolve().parent.parent / "data" / "external_niah.jsonl"


@dataclass(frozen=True)
class DemoProfile:
    """Sizes of one demo run. `full` is the pretrained student (SmolLM2-135M) within ~30 minutes on 2 cores;
    `quick` is the tiny random model, a smoke run of every stage for CI."""

    name: str
    base: str  # "smollm2" (a packaged pretrained model) or "tiny" (pipeline.tiny, random weights)
    # data: single-needle NIAH, haystack lengths in tokens
    train_tasks: int
    min_tokens: int
    max_tokens: int
    expert_chunk_size: int  # the teacher reads chunks this long: shorter rows to train on
    recovery_share: float  # teacher episodes that rehearse recovering from a search that finds nothing
    heldout_short: int  # held-out tasks <= 2K tokens (the learning targets)
    heldout_long: int  # held-out tasks 4K-32K tokens (longer than any training input)
    external: int  # evaluate on the first N tasks of data/external_niah.jsonl (phrasings no generator here writes)
    # SFT
    sft_steps: int
    sft_learning_rate: float
    trainable_layers: int | None  # SFT: None trains every layer
    bf16: bool  # CPU autocast (fp32 master weights) for training, bf16 weights for generation
    # GRPO: a harder split than SFT's (distractor needles) so that groups disagree
    grpo_tasks: int
    grpo_distractors: int
    grpo_steps: int
    grpo_tasks_per_step: int
    grpo_group: int
    grpo_segments: int
    grpo_learning_rate: float
    grpo_trainable_layers: int | None  # GRPO's small updates: the top layers only, a cheaper backward pass
    # episodes
    max_context_tokens: int
    max_rounds: int
    turn_tokens: int  # the student's output cap per turn
    eval_samples: int  # episodes per task at temperature 1.0
    search_top_k: int = 20  # hits per search: fewer is a shorter observation to prefill and to train on
    # tiny model sizes (base == "tiny")
    tiny_sizes: tuple[int, int, int, int] = (4096, 64, 2, 192)  # vocab, hidden, layers, intermediate


PROFILES: dict[str, DemoProfile] = {
    "full": DemoProfile(
        name="full",
        base="smollm2",
        train_tasks=48,
        min_tokens=500,
        max_tokens=2000,
        expert_chunk_size=256,
        recovery_share=0.25,
        heldout_short=20,
        heldout_long=10,
        external=10,
        sft_steps=64,
        sft_learning_rate=1e-4,
        # every layer: with the top 12 of 30 trainable, 48 steps reached 0% held-out accuracy (it copied chunk ids
        # and values wrongly); all 30 layers, 64 steps: 90% on held-out NIAH <= 2K (measured)
        trainable_layers=None,
        bf16=True,
        grpo_tasks=16,
        grpo_distractors=1,
        grpo_steps=4,
        grpo_tasks_per_step=2,
        grpo_group=4,
        grpo_segments=2,
        grpo_learning_rate=1e-5,
        grpo_trainable_layers=12,
        max_context_tokens=8192,  # SmolLM2's positions; inputs are longer, that is the point of the loop
        max_rounds=24,
        turn_tokens=112,  # the longest teacher turn is 77 tokens (a note); junk turns stop here
        eval_samples=2,
        search_top_k=5,
    ),
    "quick": DemoProfile(
        name="quick",
        base="tiny",
        train_tasks=6,
        min_tokens=500,
        max_tokens=1500,
        expert_chunk_size=512,
        recovery_share=0.25,
        heldout_short=2,
        heldout_long=1,
        external=0,
        sft_steps=4,
        sft_learning_rate=2e-3,
        trainable_layers=None,
        bf16=False,
        grpo_tasks=2,
        grpo_distractors=1,
        grpo_steps=1,
        grpo_tasks_per_step=1,
        grpo_group=2,
        grpo_segments=2,
        grpo_learning_rate=5e-6,
        grpo_trainable_layers=None,
        max_context_tokens=32000,
        max_rounds=10,
        turn_tokens=32,
        eval_samples=1,
    ),
}


def env_block(profile: DemoProfile) -> dict[str, Any]:
    """The one environment every stage plays in (collect, GRPO, eval): the teacher plays in the student's."""
    return {
        "max_context_tokens": profile.max_context_tokens,
        "max_output_tokens": profile.turn_tokens,
        "max_rounds": profile.max_rounds,
        "compact_prompts": profile.base != "tiny",
        "search_top_k": profile.search_top_k,
    }


def collect_recipe(out: Path, profile: DemoProfile) -> dict[str, Any]:
    return {
        "output_dir": str(out / "collect"),
        "student_tokenizer": str(out / "model"),
        "seed": 0,
        "concurrency": 4,
        "tasks": [{"file": str(out / "tasks" / "train.jsonl")}],
        "policy": {
            "kind": "scripted",
            "chunk_size": profile.expert_chunk_size,
            "recovery_share": profile.recovery_share,
        },
        "environment": env_block(profile),
    }


def curate_recipe(out: Path, profile: DemoProfile) -> dict[str, Any]:
    return {
        "inputs": [str(out / "collect" / "trajectories.jsonl")],
        "output_dir": str(out / "curate"),
        "tokenizer": str(out / "model"),
        "seed": 0,
        "filters": {"require_finished": True, "require_correct": True, "max_format_errors": 0},
        "balance": {"max_share": 1.0, "max_share_by_type": {"deleteContext": 0.35}},
        "environment": env_block(profile),  # the one the episodes were played in (its max_rounds filters)
    }


def _trl_common(profile: DemoProfile, steps: int, learning_rate: float, layers: int | None) -> dict[str, Any]:
    """Settings the SFT and GRPO recipes share: CPU precision, the schedule, checkpoints, logging."""
    common = {
        "dtype": "float32",
        "attn_implementation": "sdpa",
        "seed": 42,
        "bf16": profile.bf16,
        "per_device_train_batch_size": 1,
        "max_steps": steps,
        "learning_rate": learning_rate,
        "activation_checkpointing": False,
        "save_strategy": "steps",
        "save_steps": max(1, steps // 2),
        "save_total_limit": 1,
        "dataloader_num_workers": 0,
        "report_to": "none",
    }
    if profile.bf16:
        common["use_cpu"] = True  # bf16 autocast on the CPU (TrainingArguments asks for a GPU otherwise)
    if layers:
        common["trainable_layers"] = layers
    return common


def sft_recipe(out: Path, profile: DemoProfile) -> dict[str, Any]:
    return {
        "model_name_or_path": str(out / "model"),
        "dataset_path": str(out / "curate" / "dataset"),
        "output_dir": str(out / "sft"),
        "max_length": 8192,
        "packing": False,
        "gradient_accumulation_steps": 1,
        "lr_scheduler_type": "cosine",
        "warmup_steps": max(1, profile.sft_steps // 20),
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "logging_steps": max(1, profile.sft_steps // 24),
        **_trl_common(profile, profile.sft_steps, profile.sft_learning_rate, profile.trainable_layers),
    }


def grpo_recipe(out: Path, profile: DemoProfile) -> dict[str, Any]:
    return {
        "model_name_or_path": str(out / "sft"),
        "tasks": [{"file": str(out / "tasks" / "grpo.jsonl")}],
        "num_episodes_per_task": profile.grpo_group,
        "tasks_per_generation": profile.grpo_tasks_per_step,
        "max_segments_per_episode": profile.grpo_segments,
        "advantage": "grpo",
        "environment": env_block(profile),  # its max_output_tokens is GRPO's max_completion_length
        "use_vllm": False,
        "prefix_cache": True,
        "temperature": 1.0,
        "top_p": 1.0,
        "output_dir": str(out / "grpo"),
        "lr_scheduler_type": "constant",
        "beta": 0.0,  # no reference model: one forward pass less per row on a CPU
        # a small cost per format error: episodes that end alike still differ in how cleanly they got there
        "rewards": {"correct": 1.0, "wrong": -0.5, "malformed": -1.0, "over_budget": -1.0, "format_errors": -0.1},
        "logging_steps": 1,
        **_trl_common(profile, profile.grpo_steps, profile.grpo_learning_rate, profile.grpo_trainable_layers),
    }


def eval_recipe(out: Path, profile: DemoProfile) -> dict[str, Any]:
    dtype = "bfloat16" if profile.bf16 else "auto"
    # the per-turn cap is environment.max_output_tokens; 16 per batch: 64 contexts of up to 5.5K tokens in one
    # batch took 18.7 GB, the OOM killer (measured)
    hf = {"kind": "hf", "dtype": dtype, "max_batch_size": 16}
    models = {
        name: {**hf, "model": str(out / folder), "temperature": 0.0}
        for name, folder in zip(SYSTEMS, ("model", "sft", "grpo"), strict=True)
    }
    for name, folder in zip(SAMPLED, ("sft", "grpo"), strict=True):
        models[name] = {**hf, "model": str(out / folder), "temperature": 1.0, "top_p": 1.0, "top_k": 0,
                        "samples": profile.eval_samples, "max_input_tokens": SAMPLED_MAX_INPUT_TOKENS}  # fmt: skip
    tasks = [{"file": str(out / "tasks" / "heldout.jsonl")}]
    if profile.external:
        tasks.append({"file": str(EXTERNAL_TASKS), "limit": profile.external})
    return {
        "output_dir": str(out / "eval"),
        "student_tokenizer": str(out / "model"),
        "tasks": tasks,
        "models": models,
        "baselines": ["scripted", "no_tools"],
        "expert": {"kind": "scripted", "chunk_size": profile.expert_chunk_size},  # the teacher, as in training
        "no_tools_model": "untrained",
        "no_tools_max_tokens": profile.max_context_tokens,
        "concurrency": 64,
        "imitation_episodes": 8,
        "environment": env_block(profile),
    }


RECIPES = {"teacher": collect_recipe, "curate": curate_recipe, "sft": sft_recipe, "grpo": grpo_recipe,
           "eval": eval_recipe}  # fmt: skip


def write_recipes(out: Path, profile: DemoProfile) -> dict[str, Path]:
    """The recipe of every stage, as YAML files a user can read and re-run; paths inside are under `out`."""
    folder = out / "recipes"
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, build in RECIPES.items():
        paths[name] = folder / f"{name}.yaml"
        header = f"# statelm demo ({profile.name}): stage {name}\n"
        paths[name].write_text(header + yaml.safe_dump(build(out, profile), sort_keys=False))
    return paths


def make_tasks(out: Path, profile: DemoProfile) -> dict[str, Any]:
    """Training tasks (seed 0, training phrasings), GRPO tasks (seed 200, distractor needles) and held-out tasks
    (seeds 100, 101, held-out phrasings), lengths counted with the student's tokenizer."""
    from pipeline.collect import load_tokenizer
    from pipeline.tasks.generators import generate_niah
    from pipeline.tasks.schema import read_tasks, write_tasks

    tokenizer = load_tokenizer(str(out / "model"))
    train = generate_niah(profile.train_tasks, profile.min_tokens, profile.max_tokens, seed=0, tokenizer=tokenizer,
                          templates="train")  # fmt: skip
    grpo = generate_niah(profile.grpo_tasks, profile.min_tokens, profile.max_tokens, seed=200, tokenizer=tokenizer,
                         templates="train", n_distractors=profile.grpo_distractors, prefix="grpo")  # fmt: skip
    heldout = generate_niah(profile.heldout_short, profile.min_tokens, 2000, seed=100, tokenizer=tokenizer,
                            templates="heldout")  # fmt: skip
    heldout += generate_niah(profile.heldout_long, 4000, 32000, seed=101, tokenizer=tokenizer, templates="heldout")
    external = read_tasks(EXTERNAL_TASKS)[: profile.external]
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
        from pipeline.tiny import build_tiny_model

        vocab, hidden, layers, intermediate = profile.tiny_sizes
        return str(build_tiny_model(out / "model", vocab_size=vocab, hidden_size=hidden, num_layers=layers,
                                    intermediate_size=intermediate))  # fmt: skip
    from pipeline.base_model import import_base_model

    return str(import_base_model(profile.base, out / "model"))


def run_trl_stage(module: str, recipe: Path) -> dict[str, Any]:
    """SFT or GRPO in this process, parsed from the recipe exactly as `accelerate launch -m <module>` would."""
    import importlib

    from pipeline.trl_recipe import parse_recipe

    stage = importlib.import_module(module)
    return stage.main(*parse_recipe(stage.make_parser(), ["--config", str(recipe)]))


def run_demo(out: Path, profile: DemoProfile, console: Console | None = None) -> dict[str, Any]:
    """Run every stage in order and write `<out>/summary.json` and `<out>/summary.md`."""
    from pipeline.collect import run_collect
    from pipeline.config import load_recipe
    from pipeline.curate import load_curate_recipe, run_curate
    from pipeline.evaluate import run_eval
    from pipeline.recipe import EvalRecipe, load_collect_recipe

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

    stage("base model", lambda: build_base_model(out, profile))
    stage("tasks", lambda: make_tasks(out, profile))
    stage("collect", lambda: run_collect(load_collect_recipe(recipes["teacher"], {})))
    stage("curate", lambda: run_curate(load_curate_recipe(recipes["curate"], {})))
    stage("sft", lambda: run_trl_stage("pipeline.sft", recipes["sft"]))
    stage("grpo", lambda: run_trl_stage("pipeline.grpo", recipes["grpo"]))
    stage("eval", lambda: run_eval(load_recipe(EvalRecipe, recipes["eval"], {})))

    summary = summarize(out, profile, results, seconds)
    write_summary(out, summary, results)
    print_summary(summary, console)
    console.print(f"summary in [bold]{out / 'summary.md'}[/bold]")
    return summary
