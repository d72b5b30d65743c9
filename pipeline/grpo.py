"""Stage 3: GRPO on whole Pensieve episodes (SPEC 1, 6): TRL GRPOTrainer, vLLM or HF generation, DeepSpeed.

    accelerate launch --config_file recipes/accelerate/zero3.yaml -m pipeline.grpo --config recipes/qwen3-8b/grpo.yaml
    accelerate launch --config_file recipes/accelerate/cpu_zero2.yaml -m pipeline.grpo --config recipes/tiny/grpo.yaml
    statelm grpo --recipe recipes/tiny/grpo.yaml

The YAML sets fields of three dataclasses (ours, our StateLMGRPOConfig which extends TRL's GRPOConfig, and
TRL's ModelConfig); CLI flags override it. The episode loop, segments and snapshot sampling are in
pipeline/training/grpo_trainer.py. A rerun with the same output_dir resumes from the last complete checkpoint, and does
nothing if the run already finished.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field

import datasets
import torch
import transformers
from transformers import set_seed
from trl import ModelConfig, ScriptArguments, TrlParser, get_peft_config

from pipeline.data.task_sources import build_tasks, parse_task_sources
from pipeline.settings.preflight import check_training
from pipeline.training import checkpoints
from pipeline.training.grpo_config import StateLMGRPOConfig
from pipeline.training.grpo_trainer import StateLMGRPOTrainer, tasks_dataset
from pipeline.training.model_utils import get_tokenizer, model_init_kwargs, training_method

logger = logging.getLogger(__name__)
# Per-step figures copied from the log history into report.json
REPORTED = (
    "reward", "episodes/accuracy", "episodes/malformed", "episodes/finished", "tokens/trained", "loss",
    "curriculum/stage", "frac_reward_zero_std",
)  # fmt: skip


@dataclass
class GRPOScriptArguments(ScriptArguments):
    """Which tasks the episodes are played on: the same `tasks:` list as a collection recipe."""

    tasks: list[dict] | None = field(
        default=None,
        metadata={"help": "Task sources: {generator: niah|multihop|inventory|aggregation, n, ...} or {file, limit}."},
    )
    recipe: str | None = field(
        default=None, metadata={"help": "Recipe named in the model card; defaults to the --config file."}
    )
    trainable_layers: int | None = field(
        default=None,
        metadata={"help": "Train only the top N decoder layers and the final norm (pipeline/training/freezing.py)."},
    )


def make_parser() -> TrlParser:
    parser = TrlParser((GRPOScriptArguments, StateLMGRPOConfig, ModelConfig))
    # Trainer copies TrainingArguments.use_cache (default False) into the model config, and HF generate then
    # recomputes the whole episode context for every new token (tiny model, one step: 39 s -> 7 s with the cache)
    parser.set_defaults_with_config(use_cache=True)
    if not torch.cuda.is_available():
        # As in pipeline/sft.py: no bf16 on CPU, and gloo with several processes (set before parsing: the config
        # sets up the distributed state). No activation checkpointing by default either (TRL turns it on).
        multi_process = int(os.environ.get("WORLD_SIZE", "1")) > 1
        parser.set_defaults_with_config(
            bf16=False, activation_checkpointing=False, **({"ddp_backend": "gloo"} if multi_process else {})
        )
    return parser


def main(script_args: GRPOScriptArguments, training_args: StateLMGRPOConfig, model_args: ModelConfig) -> dict:
    started = time.time()
    set_seed(training_args.seed)
    log_level = training_args.get_process_log_level()
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=log_level, stream=sys.stdout)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    logger.info("script %s\nmodel %s", script_args, model_args)
    check_training(script_args.recipe, model_args.model_name_or_path, training_args)

    # Resume point: an explicit checkpoint, else the last complete one in output_dir
    start = checkpoints.resume_point(training_args)
    if start.report is not None:
        return start.report
    trainer = build_trainer(script_args, training_args, model_args)
    metrics = checkpoints.train_or_restore(trainer, start, training_args.output_dir)
    if start.finished:  # the curriculum's state at the final checkpoint, for the report
        trainer.load_curriculum(start.checkpoint)
    card = {"model_name": checkpoints.model_name(training_args), "tags": ["statelm", "grpo"]}
    checkpoints.save_card(trainer, card, training_args, model_args.use_peft)

    history = trainer.state.log_history
    report = {
        "stage": "grpo",
        "base_model": model_args.model_name_or_path,
        "recipe": script_args.recipe,
        "tasks": len(trainer.train_dataset),
        "resumed_from": start.checkpoint,
        "world_size": trainer.accelerator.num_processes,
        "episodes_per_step": training_args.tasks_per_generation * training_args.num_episodes_per_task,
        "global_step": trainer.state.global_step or checkpoints.step_of(start.checkpoint),
        "train": metrics,
        "steps": [{"step": e["step"], **{k: e[k] for k in REPORTED if k in e}} for e in history if "reward" in e],
        "curriculum": None if trainer.curriculum is None else trainer.curriculum.state_dict(),
        "seconds": round(time.time() - started, 1),
    }
    return checkpoints.write_report_and_end(trainer, report, training_args.output_dir)


def build_trainer(
    script_args: GRPOScriptArguments, training_args: StateLMGRPOConfig, model_args: ModelConfig
) -> StateLMGRPOTrainer:
    """The trainer main() runs: tasks, tokenizer, model path (loaded by TRL once the DeepSpeed config exists)."""
    sources = parse_task_sources(script_args.tasks, script_args.recipe)
    tokenizer = get_tokenizer(model_args, training_args)
    tasks = build_tasks(sources, tokenizer)
    if training_args.curriculum is not None and not any(t.metadata.get("generator") == "inventory" for t in tasks):
        raise ValueError("curriculum: it schedules inventory streams, but tasks has no {generator: inventory} source")
    logger.info(
        "%d tasks; %d episodes per step, %d training rows per process in %d micro-steps",
        len(tasks),
        training_args.tasks_per_generation * training_args.num_episodes_per_task,
        training_args.steps_per_generation * training_args.per_device_train_batch_size,
        training_args.steps_per_generation,
    )
    training_args.model_init_kwargs = model_init_kwargs(model_args, training_args, model_args.attn_implementation)
    trainer = StateLMGRPOTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=tasks_dataset(tasks),
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
    )
    method, _ = training_method(trainer.model, model_args, script_args.trainable_layers)
    trainer.card_section = (
        "\n## statelm\n\n"
        f"- Base model: `{model_args.model_name_or_path}`\n"
        f"- Tasks: {len(tasks)} ({', '.join(sorted({t.kind for t in tasks}))}); "
        f"{training_args.num_episodes_per_task} episodes per task, "
        f"at most {training_args.max_segments_per_episode} segments trained per episode\n"
        f"- Recipe: `{script_args.recipe}` ({method} GRPO, advantage {training_args.advantage}, "
        f"beta {training_args.beta}, rewards {training_args.rewards})\n"
    )
    return trainer


def _run_from_command_line() -> None:
    from pipeline.settings.trl_recipe import parse_recipe

    script_args, training_args, model_args = parse_recipe(make_parser(), sys.argv[1:])
    main(script_args, training_args, model_args)


if __name__ == "__main__":
    from pipeline.settings.errors import exit_cleanly

    exit_cleanly(_run_from_command_line)
