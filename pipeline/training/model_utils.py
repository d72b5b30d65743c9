"""What SFT and GRPO load alike (as open-r1's utils/model_utils.py): the tokenizer, the keyword arguments TRL
loads the model with (once the DeepSpeed config exists: ZeRO-3 sharded loading), and the training method the
model card names, freezing all but the top layers when the recipe asks."""

from __future__ import annotations

import logging
from typing import Any

from transformers import AutoTokenizer
from trl import ModelConfig

from pipeline.training.freezing import freeze_all_but_top_layers

logger = logging.getLogger(__name__)


def get_tokenizer(model_args: ModelConfig, training_args: Any) -> Any:
    return AutoTokenizer.from_pretrained(
        model_args.model_name_or_path,
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
    )


def model_init_kwargs(model_args: ModelConfig, training_args: Any, attention: str | None) -> dict[str, Any]:
    """The recipe's model settings, under whatever `model_init_kwargs` it sets itself (those win)."""
    return {
        "revision": model_args.model_revision,
        "trust_remote_code": training_args.trust_remote_code,
        "attn_implementation": attention,
        "dtype": model_args.dtype,
        **(training_args.model_init_kwargs or {}),
    }


def training_method(model: Any, model_args: ModelConfig, trainable_layers: int | None) -> tuple[str, dict | None]:
    """The method the model card names (`LoRA r=.. alpha=..` or `full`, then `, top N layers` when only those
    train), and the parameter counts of the freezing (None without it)."""
    method = f"LoRA r={model_args.lora_r} alpha={model_args.lora_alpha}" if model_args.use_peft else "full"
    if trainable_layers is None:
        return method, None
    counts = freeze_all_but_top_layers(model, trainable_layers)
    logger.info("training the top %d layers: %s", trainable_layers, counts)
    return f"{method}, top {trainable_layers} layers", counts
