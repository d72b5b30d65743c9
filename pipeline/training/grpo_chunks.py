"""GRPO's rows as TRL's micro-batches (SPEC 6): fixed-shape chunks, old and reference logprobs, vLLM's correction.

Every process trains `steps_per_generation` chunks of `per_device_train_batch_size` rows per generation, so TRL's
collectives see equal shapes; episodes with fewer segments leave empty rows (one token, mask 0). Old logprobs are
computed only when the loss needs them (several passes per generation, or vLLM's importance-sampling correction,
whose ratio uses the sampler's logprob of every trained token: token-in/token-out, `grpo_rows.py`).

A mixin of `StateLMGRPOTrainer`: it calls TRL's `_get_per_token_logps_and_entropies` on the trainer's models.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from accelerate.utils import gather
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import pad, use_adapter


class RowChunks:
    """Rows -> TRL's micro-batches (mixed into StateLMGRPOTrainer)."""

    def _chunks(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """`steps_per_generation` chunks of `per_device_train_batch_size` rows, padded with empty rows."""
        args, device = self.args, self.accelerator.device
        size, steps = args.per_device_train_batch_size, args.steps_per_generation
        total = size * steps
        if len(rows) > total:  # cannot happen: at most max_segments_per_episode rows per episode
            raise RuntimeError(f"{len(rows)} rows for {total} slots")
        # Empty rows first, then real rows longest first: the last micro-step (the optimizer step) trains rows
        # whenever there are any, and leading chunks that are empty on every process are skipped
        rows = sorted(rows, key=lambda r: len(r["prompt"]) + len(r["completion"]), reverse=True)
        pad_id = self._tokenizer.pad_token_id
        empty = {"prompt": [pad_id], "completion": [pad_id], "tool_mask": [0], "advantage": 0.0, "empty": True}
        if self.use_vllm:
            empty["sampling_logps"] = [float("nan")]
        rows = [empty] * (total - len(rows)) + rows
        real = torch.tensor([sum(not r.get("empty") for r in rows[k * size : (k + 1) * size]) for k in range(steps)])
        real_anywhere = gather(real[None].to(device)).sum(dim=0).tolist()
        num_items = gather(torch.tensor(sum(sum(r["tool_mask"]) for r in rows), device=device)).sum()
        chunks = []
        for k in range(steps):
            part = rows[k * size : (k + 1) * size]
            chunk = {
                "skip": real_anywhere[k] == 0 and k < steps - 1,
                "empty": real_anywhere[k] == 0,
                "prompt_ids": pad([torch.tensor(r["prompt"]) for r in part], pad_id, "left").to(device),
                "prompt_mask": pad([torch.ones(len(r["prompt"]), dtype=torch.long) for r in part], 0, "left").to(
                    device
                ),
                "completion_ids": pad([torch.tensor(r["completion"]) for r in part], pad_id, "right").to(device),
                "completion_mask": pad(
                    [torch.full((len(r["completion"]),), 0 if r.get("empty") else 1) for r in part], 0, "right"
                ).to(device),
                "tool_mask": pad([torch.tensor(r["tool_mask"]) for r in part], 0, "right").to(device),
                "advantages": torch.tensor([r["advantage"] for r in part], dtype=torch.float32, device=device),
                "num_items_in_batch": num_items,
            }
            if self.use_vllm:
                chunk["sampling_per_token_logps"] = pad(
                    [torch.tensor(r["sampling_logps"], dtype=torch.float32) for r in part], 0.0, "right"
                ).to(device)
            if chunk["skip"]:
                chunks.append(chunk)
                continue
            self._add_logps(chunk)
            chunks.append(chunk)
        return chunks

    @torch.no_grad()
    def _add_logps(self, chunk: dict[str, Any]) -> None:
        """Old (rollout-time) and reference logprobs, when TRL's loss needs them (as in TRL)."""
        ids = torch.cat([chunk["prompt_ids"], chunk["completion_ids"]], dim=1)
        attention = torch.cat([chunk["prompt_mask"], chunk["completion_mask"]], dim=1)
        keep, size = chunk["completion_ids"].size(1), self.args.per_device_train_batch_size
        vllm_correction = self.use_vllm and self.vllm_importance_sampling_correction
        with disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
            # The policy moves between generation and use only with several passes (num_iterations > 1), or the
            # sampler is another engine (vLLM): then the ratio needs the rollout-time logprobs.
            if self.num_iterations > 1 or vllm_correction:
                chunk["old_per_token_logps"] = self._get_per_token_logps_and_entropies(
                    self.model, ids, attention, keep, batch_size=size
                )[0]
            if self.beta != 0.0:
                if self.ref_model is not None:
                    ref = self._get_per_token_logps_and_entropies(self.ref_model, ids, attention, keep, size)[0]
                else:  # PEFT: the base model (adapters off) or the "ref" adapter
                    model = self.accelerator.unwrap_model(self.model)
                    with use_adapter(model, adapter_name="ref" if "ref" in model.peft_config else None):
                        ref = self._get_per_token_logps_and_entropies(self.model, ids, attention, keep, size)[0]
                chunk["ref_per_token_logps"] = ref
        if vllm_correction:
            chunk["importance_sampling_ratio"] = self._importance_sampling_ratio(chunk)

    def _importance_sampling_ratio(self, chunk: dict[str, Any]) -> torch.Tensor:
        """TRL's vLLM importance-sampling correction (its `_generate_and_score_completions`), on our rows."""
        mask = chunk["completion_mask"] * chunk["tool_mask"]
        diff = torch.nan_to_num((chunk["old_per_token_logps"] - chunk["sampling_per_token_logps"]) * mask, nan=0.0)
        mode = self.vllm_importance_sampling_mode
        ratio = torch.exp(diff.sum(dim=-1, keepdim=True) if mode.startswith("sequence") else diff)
        low = self.vllm_importance_sampling_clip_min
        high = self.vllm_importance_sampling_clip_max
        if mode.endswith("truncate"):
            return torch.clamp(ratio, min=low, max=high)
        if mode.endswith("mask"):
            low, high = -math.inf if low is None else low, math.inf if high is None else high
            return ratio.masked_fill((ratio < low) | (ratio > high), 0.0)
        raise ValueError(f"unknown vllm_importance_sampling_mode {mode!r}")
