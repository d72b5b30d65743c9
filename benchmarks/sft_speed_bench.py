"""SFT step time of the CPU levers on the demo's student (SmolLM2-135M) and data, against today's path.

Rows: scripted-expert episodes over NIAH tasks of 500-2,000 tokens, read in 256-token chunks, cut into segments
exactly as `statelm curate` does, rendered with the full or compact tool schemas (env `compact_prompts`). Each
variant is pipeline/sft.py's trainer (TRL SFTTrainer, AdamW, completion mask) on the same rows, one row per
step; the figure is the median step time after a warm-up step. Variants:

- fp32 full fine-tuning, full prompts: the path before this change (the baseline of every ratio);
- compact prompts; bf16 autocast with fp32 master weights (`bf16: true, use_cpu: true`); only the top N layers
  trainable (`trainable_layers`); LoRA r16 on all linear layers; and the demo's combination.

Each line also prints the loss after the steps, so a lever that stops learning shows.

`--lm-head` instead times the demo's SFT settings (compact prompts, every layer, bf16 autocast) with TRL's LM head
scoring every position on the CPU against scoring only the trained ones (pipeline/training/lm_head.py), each twice
in alternation, and prints the ratio.

    python benchmarks/sft_speed_bench.py --model runs/demo/model --threads 2
    python benchmarks/sft_speed_bench.py --model runs/demo/model --threads 2 --lm-head
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch
from clock import StepClock  # benchmarks/clock.py (scripts run from this folder)
from transformers import AutoTokenizer, PrinterCallback

from pipeline.data.segments import segment_trajectory
from pipeline.env.pensieve import EnvConfig, PensieveEnv
from pipeline.policies.scripted import ScriptedExpert
from pipeline.tasks.generators import generate_niah

SFT_RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "tiny" / "sft.yaml"


def demo_rows(model: str, compact: bool, n_tasks: int) -> list[dict[str, Any]]:
    tokenizer = AutoTokenizer.from_pretrained(model)
    config = EnvConfig(max_context_tokens=8192, max_output_tokens=256, max_rounds=24, compact_prompts=compact)
    expert, rows = ScriptedExpert(chunk_size=256), []
    for task in generate_niah(n_tasks, 500, 2000, seed=7, tokenizer=tokenizer):
        env = PensieveEnv.from_task(task, tokenizer, config)
        while not env.done:
            env.step(expert.decide(env.messages()))
        traj = env.trajectory(task.id, task.id, "scripted", 0, True)
        rows += [s.to_row() for s in segment_trajectory(tokenizer, traj)]
    return rows


def time_variant(
    model: str, rows: list[dict[str, Any]], flags: list[str], steps: int, every_position: bool = False
) -> tuple[float, float]:
    import datasets
    import transformers

    from pipeline.sft import build_trainer, make_parser
    from pipeline.training.lm_head import score_trained_positions_only

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    with tempfile.TemporaryDirectory(prefix="sft_speed_") as tmp:
        datasets.Dataset.from_list(rows).save_to_disk(f"{tmp}/data")
        args = [
            "--config", str(SFT_RECIPE), "--model_name_or_path", model, "--dataset_path", f"{tmp}/data",
            "--output_dir", f"{tmp}/out", "--max_length", "8192", "--per_device_train_batch_size", "1",
            "--gradient_accumulation_steps", "1", "--save_strategy", "no", "--report_to", "none",
            "--disable_tqdm", "true", "--log_level", "error", "--max_steps", str(steps + 1),
            "--learning_rate", "1e-4", "--logging_steps", "1", "--dataloader_pin_memory", "false", *flags,
        ]  # fmt: skip
        trainer, _ = build_trainer(*make_parser().parse_args_and_config(args))
        score_trained_positions_only(not every_position)  # the trainer turned it on; the stock path turns it off
        trainer.remove_callback(PrinterCallback)
        clock = StepClock()
        trainer.add_callback(clock)
        trainer.train()
        losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return statistics.median(clock.times[1:]), losses[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="runs/demo/model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--trainable-layers", type=int, default=10)
    parser.add_argument("--lm-head", action="store_true", help="only the LM head comparison (see the docstring)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.lm_head:
        compare_lm_head(args.model, args.steps)
        return
    full, compact = demo_rows(args.model, False, 4), demo_rows(args.model, True, 4)
    rows = {"full": full[: args.steps + 1], "compact": compact[: args.steps + 1]}
    for name, r in rows.items():
        tokens = [len(x["input_ids"]) for x in r]
        trained = sum(sum(x["completion_mask"]) for x in r) / sum(tokens)
        print(f"{name} prompts: mean row {statistics.mean(tokens):.0f} tokens, {trained:.1%} trained")
    top = ["--trainable_layers", str(args.trainable_layers)]
    bf16 = ["--bf16", "true", "--use_cpu", "true"]
    lora = ["--use_peft", "--lora_r", "16", "--lora_target_modules", "all-linear"]
    variants = [
        ("fp32 full, full prompts (before)", "full", []),
        ("fp32 full, compact prompts", "compact", []),
        ("bf16 autocast, compact", "compact", bf16),
        (f"top {args.trainable_layers} layers fp32, compact", "compact", top),
        ("LoRA r16 all-linear fp32, compact", "compact", lora),
        (f"top {args.trainable_layers} layers + bf16, compact (demo)", "compact", top + bf16),
    ]
    baseline = None
    for label, prompts, flags in variants:
        seconds, loss = time_variant(args.model, rows[prompts], flags, args.steps)
        baseline = baseline or seconds
        ratio = baseline / seconds
        print(f"{label}: {seconds:.2f} s/step ({ratio:.2f}x), loss after {args.steps + 1} steps {loss:.3f}", flush=True)


def compare_lm_head(model: str, steps: int) -> None:
    """The demo's SFT settings, LM head at every position (TRL on the CPU) vs at trained positions only."""
    rows = demo_rows(model, True, 4)[: steps + 1]
    tokens = [len(x["input_ids"]) for x in rows]
    trained = sum(sum(x["completion_mask"]) for x in rows) / sum(tokens)
    print(f"demo rows: mean {statistics.mean(tokens):.0f} tokens, {trained:.1%} trained")
    demo = ["--bf16", "true", "--use_cpu", "true"]
    times: dict[bool, list[float]] = {True: [], False: []}
    for every_position in (True, False, True, False):
        seconds, loss = time_variant(model, rows, demo, steps, every_position=every_position)
        times[every_position].append(seconds)
        label = "every position (TRL on CPU)" if every_position else "trained positions only"
        print(f"LM head at {label}: {seconds:.2f} s/step, loss after {steps + 1} steps {loss:.4f}", flush=True)
    every, trained_only = statistics.median(times[True]), statistics.median(times[False])
    print(f"sft step: every position {every:.2f} s, trained positions only {trained_only:.2f} s "
          f"({every / trained_only:.2f}x)")  # fmt: skip


if __name__ == "__main__":
    main()
