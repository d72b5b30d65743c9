"""GRPO step speed: our episode trainer vs stock TRL GRPOTrainer, per trained token, in one run.

Usage: python benchmarks/grpo_bench.py [--model runs/tiny/model] [--steps 3] [--rounds 2] [--turns 1]

Same model, same prompt tokens (the environment's first context, rendered), same completion cap, same group size,
same loss (TRL's `grpo`, beta 0.001 with the reference model). Ours plays episodes of the random model, which
end `malformed` after `--turns` error turns (1: one generation per episode, as in single-turn TRL); TRL
generates one completion per prompt. The figure is wall time per optimizer step (generation included) divided by
the tokens trained in it, median over the measured steps (the first step of each run is a warm-up); the two
trainers alternate `--rounds` times so machine load hits both alike. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from clock import StepClock  # benchmarks/clock.py (scripts run from this folder)
from datasets import Dataset
from transformers import AutoTokenizer
from trl import GRPOConfig, GRPOTrainer

from pipeline.env.pensieve import EnvConfig, PensieveEnv
from pipeline.grpo import build_trainer, make_parser
from pipeline.models.tiny import build_tiny_model
from pipeline.settings.trl_recipe import parse_recipe
from pipeline.tasks.generators import generate_niah

ROOT = Path(__file__).resolve().parents[1]


def ours(model: str, out: Path, args: argparse.Namespace, clock: StepClock):
    flags = [
        "--config", str(ROOT / "recipes/tiny/grpo.yaml"), "--model_name_or_path", model, "--output_dir", str(out),
        "--num_episodes_per_task", str(args.group), "--tasks_per_generation", "1",
        "--max_segments_per_episode", str(args.max_segments), "--per_device_train_batch_size", "1",
        "--max_steps", str(args.steps), "--beta", "0.001",
        # the per-turn cap is the environment's (GRPO's max_completion_length follows it)
        "--environment.max_format_errors", str(args.turns), "--environment.max_rounds", str(args.turns),
        "--environment.max_output_tokens", str(args.completion),
        "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true", "--log_level", "error",
    ]  # fmt: skip
    trainer = build_trainer(*parse_recipe(make_parser(), flags))  # as `statelm grpo` parses its command line
    trainer.add_callback(clock)
    return trainer


def stock(model: str, out: Path, args: argparse.Namespace, clock: StepClock):
    tokenizer = AutoTokenizer.from_pretrained(model)
    tasks = generate_niah(8, 1000, 1500, seed=0, tokenizer=tokenizer)
    # The prompt the policy sees at an episode's first turn, as plain text: the same tokens as ours
    prompts = [PensieveEnv(t.question, t.load_input(), tokenizer, EnvConfig()).render() for t in tasks]
    config = GRPOConfig(
        output_dir=str(out), num_generations=args.group, per_device_train_batch_size=args.group,
        gradient_accumulation_steps=1, max_completion_length=args.completion, beta=0.001, loss_type="grpo",
        learning_rate=1e-5, bf16=False, activation_checkpointing=False, max_steps=args.steps, logging_steps=1,
        save_strategy="no", report_to="none", disable_tqdm=True, log_level="error", seed=42,
    )  # fmt: skip
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=lambda completions, **kwargs: [0.0] * len(completions),
        args=config,
        train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]),
        processing_class=tokenizer,
    )
    trainer.add_callback(clock)
    return trainer


def tokens_per_step(trainer, ours_trainer: bool) -> list[float]:
    logged = [e for e in trainer.state.log_history if "reward" in e]
    if ours_trainer:
        return [e["tokens/trained"] for e in logged]
    return [e["completions/mean_length"] * trainer.num_generations for e in logged]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/tiny/model")
    parser.add_argument("--steps", type=int, default=3, help="Steps per run; the first is a warm-up.")
    parser.add_argument("--rounds", type=int, default=2, help="Runs of each trainer, alternating.")
    parser.add_argument("--group", type=int, default=4, help="Episodes (completions) per task (prompt).")
    parser.add_argument("--completion", type=int, default=32, help="Tokens per turn (completion).")
    parser.add_argument("--turns", type=int, default=1, help="Our episodes: error turns until malformed.")
    parser.add_argument("--max-segments", type=int, default=8, help="Our max_segments_per_episode (empty rows).")
    args = parser.parse_args()
    if not Path(args.model, "config.json").exists():
        build_tiny_model(args.model)

    clocks = {"ours": StepClock(), "trl": StepClock()}
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {
            "ours": ours(args.model, Path(tmp, "ours"), args, clocks["ours"]),
            "trl": stock(args.model, Path(tmp, "trl"), args, clocks["trl"]),
        }
        per_token: dict[str, list[float]] = {"ours": [], "trl": []}
        tokens: dict[str, list[float]] = {"ours": [], "trl": []}
        seconds_per_step: dict[str, list[float]] = {"ours": [], "trl": []}
        for _ in range(args.rounds):
            for name, trainer in trainers.items():
                clocks[name].times.clear()
                trainer.train()
                counts = tokens_per_step(trainer, name == "ours")
                for seconds, count in list(zip(clocks[name].times, counts, strict=True))[1:]:
                    per_token[name].append(seconds / count)
                    tokens[name].append(count)
                    seconds_per_step[name].append(seconds)

    ours_ms, trl_ms = (1000 * statistics.median(per_token[k]) for k in ("ours", "trl"))
    mark = "target <= 1.3x"
    print(
        f"model {args.model}; group {args.group}; {args.completion} tokens per turn; our episodes: {args.turns} turn(s)"
    )
    for name, label in (("ours", "ours"), ("trl", "TRL: ")):
        ms = 1000 * statistics.median(per_token[name])
        step = statistics.median(seconds_per_step[name])
        print(
            f"{label} {ms:.2f} ms per trained token ({statistics.mean(tokens[name]):.0f} tokens, {step:.2f} s per step)"
        )
    print(f"ratio ours / TRL per trained token: {ours_ms / trl_ms:.2f}x ({mark})")


if __name__ == "__main__":
    main()
