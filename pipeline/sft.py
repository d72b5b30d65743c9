"""Stage 2: supervised fine-tuning on curated segments (SPEC 1, 5): TRL SFTTrainer, DeepSpeed ZeRO-2/3, LoRA.

    accelerate launch --config_file recipes/accelerate/zero3.yaml -m pipeline.sft --config recipes/qwen3-8b/sft.yaml
    accelerate launch --config_file recipes/accelerate/cpu_zero2.yaml -m pipeline.sft --config recipes/tiny/sft.yaml

The YAML sets fields of three dataclasses (ours, TRL's SFTConfig and ModelConfig); CLI flags override it.
Loss is on the tokens whose completion_mask is 1. A rerun with the same output_dir resumes from the last
complete checkpoint with the same data order, and does nothing if the run already finished.
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
from trl import ModelConfig, ScriptArguments, SFTConfig, TrlParser, get_peft_config

from pipeline.data.sft_data import describe, load_sft_dataset
from pipeline.settings.preflight import check_training
from pipeline.training import checkpoints
from pipeline.training.model_utils import get_tokenizer, model_init_kwargs, training_method
from pipeline.training.sft_trainer import StateLMSFTTrainer, shared_prefix_setup
from pipeline.training.shared_prefix_collator import (
    SHARED_PREFIX_COLUMNS,
    SharedPrefixError,
    loaded_attention,
    shared_prefix_fallback,
)

logger = logging.getLogger(__name__)


@dataclass
class SFTScriptArguments(ScriptArguments):
    """What to train on. `dataset_name` (inherited) names a hub dataset instead of a local directory."""

    dataset_path: str | None = field(
        default=None, metadata={"help": "Directory of the SFT dataset written by `statelm curate` (save_to_disk)."}
    )
    recipe: str | None = field(
        default=None, metadata={"help": "Recipe named in the model card; defaults to the --config file."}
    )
    shared_prefix: bool = field(
        default=False,
        metadata={
            "help": "Pack the segments of each episode into shared-prefix rows: their common prefix (system prompt, "
            "tool schemas, ...) once, then each segment's rest, under a 4D attention mask "
            "(pipeline/data/shared_prefix.py). "
            "Same loss and gradients, fewer tokens; needs attn_implementation sdpa or eager. Default: one row per "
            "segment."
        },
    )
    trainable_layers: int | None = field(
        default=None,
        metadata={
            "help": "Train only the top N decoder layers and the final norm (embeddings and lower layers frozen): "
            "a CPU speed lever for small students (pipeline/training/freezing.py). Default: every parameter."
        },
    )


def make_parser() -> TrlParser:
    parser = TrlParser((SFTScriptArguments, SFTConfig, ModelConfig))
    if not torch.cuda.is_available():
        # CPU defaults (the recipe and the CLI still win): no bf16 unless asked for (with `use_cpu: true` it is
        # CPU autocast with float32 master weights, ~2x faster on AVX512-BF16 CPUs), and with several
        # processes an explicit gloo backend, without which accelerate takes a DeepSpeed launch for one process
        # (with one process, gloo fails instead). Set before parsing: SFTConfig sets up the distributed state.
        multi_process = int(os.environ.get("WORLD_SIZE", "1")) > 1
        parser.set_defaults_with_config(bf16=False, **({"ddp_backend": "gloo"} if multi_process else {}))
    return parser


def main(script_args: SFTScriptArguments, training_args: SFTConfig, model_args: ModelConfig) -> dict:
    started = time.time()
    set_seed(training_args.seed)
    # Our messages at INFO on the main process; the libraries at the recipe's log_level (default: warnings)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    for name in (__name__, "pipeline.training.checkpoints", "pipeline.training.model_utils"):
        logging.getLogger(name).setLevel(logging.INFO if training_args.should_log else logging.WARNING)
    datasets.utils.logging.set_verbosity(training_args.get_process_log_level())
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())
    logger.info("script %s\nmodel %s", script_args, model_args)
    check_training(script_args.recipe, model_args.model_name_or_path, training_args)

    # Resume point: an explicit checkpoint, else the last complete one in output_dir
    start = checkpoints.resume_point(training_args)
    if start.report is not None:
        return start.report
    trainer, data_report = build_trainer(script_args, training_args, model_args)
    metrics = checkpoints.train_or_restore(trainer, start, training_args.output_dir)
    card = {"model_name": checkpoints.model_name(training_args), "dataset_name": script_args.dataset_name,
            "tags": ["statelm", "sft"]}  # fmt: skip
    checkpoints.save_card(trainer, card, training_args, model_args.use_peft)

    report = {
        "stage": "sft",
        "base_model": model_args.model_name_or_path,
        "dataset": script_args.dataset_path or script_args.dataset_name,
        "recipe": script_args.recipe,
        "resumed_from": start.checkpoint,
        "world_size": trainer.accelerator.num_processes,
        "data": data_report,
        "global_step": trainer.state.global_step or checkpoints.step_of(start.checkpoint),
        "train": metrics,
        "losses": [{"step": e["step"], "loss": e["loss"]} for e in trainer.state.log_history if "loss" in e],
        "seconds": round(time.time() - started, 1),
    }
    return checkpoints.write_report_and_end(trainer, report, training_args.output_dir)


def build_trainer(
    script_args: SFTScriptArguments, training_args: SFTConfig, model_args: ModelConfig
) -> tuple[StateLMSFTTrainer, dict]:
    """The trainer main() runs, and the dataset figures for the report."""
    # TRL turns completion_mask into labels only with completion_only_loss=True; with False it trains on
    # every token (documents, tool outputs) without a word, and None means False for a tokenized dataset.
    if training_args.completion_only_loss is False:
        raise ValueError("completion_only_loss=False would train on every token; SFT trains assistant tokens only")
    training_args.completion_only_loss = True
    shared_prefix = script_args.shared_prefix
    fallback = shared_prefix_fallback(model_args.attn_implementation) if shared_prefix else None
    if fallback:
        logger.warning("shared_prefix: training one row per segment instead (%s)", fallback)
        shared_prefix = False
    extra = ("episode_id",) if shared_prefix else ()
    dataset = load_sft_dataset(
        script_args.dataset_path, script_args.dataset_name, script_args.dataset_train_split, extra
    )
    data_report = describe(dataset, training_args.max_length)
    if fallback:
        data_report["shared_prefix"] = {"fallback": fallback}
    logger.info("dataset %s", data_report)

    tokenizer = get_tokenizer(model_args, training_args)
    collator = None
    if shared_prefix:
        dataset, data_report["shared_prefix"], collator = shared_prefix_setup(
            dataset, training_args, model_args.attn_implementation, tokenizer
        )
    # The trainer loads the model from the path once the DeepSpeed config exists (ZeRO-3 sharded loading)
    attention = model_args.attn_implementation
    training_args.model_init_kwargs = model_init_kwargs(
        model_args, training_args, loaded_attention(attention) if shared_prefix else attention
    )
    trainer = StateLMSFTTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
        data_collator=collator,
    )
    if collator is not None:
        trainer.extra_columns = SHARED_PREFIX_COLUMNS
        # The attention the model really loaded (a model_init_kwargs override could change it)
        loaded = trainer.model.config._attn_implementation
        if loaded != loaded_attention(attention):
            raise SharedPrefixError(
                f"the model loaded attention {loaded!r}; shared-prefix rows for {attention!r} need "
                f"{loaded_attention(attention)!r}"
            )
    method, counts = training_method(trainer.model, model_args, script_args.trainable_layers)
    if counts is not None:
        data_report["parameters"] = counts
    trainer.card_section = (
        "\n## statelm\n\n"
        f"- Base model: `{model_args.model_name_or_path}`\n"
        f"- Data: `{script_args.dataset_path or script_args.dataset_name}` ({data_report['rows']} segments, "
        f"{data_report['trained_tokens']} trained tokens of {data_report['tokens']})\n"
        f"- Recipe: `{script_args.recipe}` ({method} fine-tune, loss on assistant tokens only)\n"
    )
    return trainer, data_report


def _run_from_command_line() -> None:
    from pipeline.settings.trl_recipe import parse_recipe

    script_args, training_args, model_args = parse_recipe(make_parser(), sys.argv[1:])
    main(script_args, training_args, model_args)


if __name__ == "__main__":
    from pipeline.settings.errors import exit_cleanly

    exit_cleanly(_run_from_command_line)
