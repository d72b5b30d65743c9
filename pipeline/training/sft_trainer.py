"""The SFT stage's trainer (SPEC 5): TRL's SFTTrainer with our model card and, optionally, shared-prefix rows.

Kept apart from the stage (pipeline/sft.py, a linear `main()`): what is ours about training, not about running."""

from __future__ import annotations

import logging
import os
from typing import Any

import datasets
from trl import SFTConfig, SFTTrainer

from pipeline.data.shared_prefix import shared_prefix_dataset
from pipeline.training.lm_head import score_trained_positions_only
from pipeline.training.shared_prefix_collator import NUM_TOKENS, SharedPrefixCollator, SharedPrefixError, mask_format

logger = logging.getLogger(__name__)


class StateLMSFTTrainer(SFTTrainer):
    """SFTTrainer whose model card (written with each checkpoint and on push) also names base model, data, recipe.
    With shared-prefix rows it keeps their tree columns for the collator and counts real tokens in `num_tokens`
    (TRL sums the attention mask, which is 4D here)."""

    card_section = ""
    extra_columns: tuple[str, ...] = ()  # dataset columns the collator reads besides TRL's

    def __init__(self, *args, **kwargs):
        score_trained_positions_only()  # the LM head's loss at trained positions only, on the CPU too (exact)
        super().__init__(*args, **kwargs)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        self._signature_columns = [*self._signature_columns, *(c for c in self.extra_columns
                                                               if c not in self._signature_columns)]  # fmt: skip

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        real_tokens = inputs.pop(NUM_TOKENS, None)
        if real_tokens is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        counted = self._total_train_tokens
        result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if self.model.training:
            gathered = self.accelerator.gather_for_metrics(real_tokens.reshape(1)).sum().item()
            self._total_train_tokens = counted + gathered // self._tp_size
            self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
        return result

    def create_model_card(self, *args, **kwargs):
        super().create_model_card(*args, **kwargs)
        if self.is_world_process_zero() and self.card_section:
            with open(os.path.join(self.args.output_dir, "README.md"), "a", encoding="utf-8") as card:
                card.write(self.card_section)


def shared_prefix_setup(
    dataset: datasets.Dataset, training_args: SFTConfig, attn_implementation: str | None, tokenizer: Any
) -> tuple[datasets.Dataset, dict, SharedPrefixCollator]:
    """Segment rows -> shared-prefix rows (each fits max_length), their figures, and the collator that builds
    their 4D masks. Errors before any model loads when the attention or TRL's packing cannot take them."""
    if training_args.packing or training_args.padding_free:
        raise SharedPrefixError(
            "shared_prefix builds its own rows and masks: set packing: false and padding_free: false"
        )
    form = mask_format(attn_implementation)
    packed, figures = shared_prefix_dataset(dataset, training_args.max_length)
    logger.info("shared-prefix rows %s", figures)
    # The pad token TRL's own collator would take (padding is never read: label -100, it attends only to itself)
    pad = training_args.pad_token or tokenizer.pad_token or tokenizer.eos_token
    collator = SharedPrefixCollator(
        pad_token_id=tokenizer.convert_tokens_to_ids(pad),
        mask_format=form,
        pad_to_multiple_of=training_args.pad_to_multiple_of,
    )
    return packed, figures, collator
