"""A TRL stage's output folder (SFT and GRPO alike): where a run stands, how it resumes, and how it ends.

A rerun with the same output_dir resumes from the last complete checkpoint (an explicit
`resume_from_checkpoint` wins), does nothing if the run already finished and wrote its report, and, killed
between its last checkpoint and the end, takes that checkpoint's model as the final one. Then both stages write
the model card, push if asked, write `report.json` and leave together.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from typing import Any

from accelerate import PartialState
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

logger = logging.getLogger(__name__)
REPORT = "report.json"
# What a checkpoint holds besides the model files save_model writes (DeepSpeed adds latest, global_step*/...)
TRAINING_STATE = re.compile(
    r"optimizer.*|scheduler\.pt|scaler\.pt|rng_state.*|trainer_state\.json|"
    r"training_args\.bin|latest|zero_to_.*\.py|global_step\d+"
)


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The newest checkpoint-<step> in output_dir that was fully written. A kill during a save leaves a
    checkpoint without trainer_state.json (the Trainer writes it last), which get_last_checkpoint would pick."""
    if not os.path.isdir(output_dir):
        return None
    complete = [
        name
        for name in os.listdir(output_dir)
        if re.fullmatch(rf"{PREFIX_CHECKPOINT_DIR}-\d+", name)
        and os.path.isfile(os.path.join(output_dir, name, TRAINER_STATE_NAME))
    ]
    return os.path.join(output_dir, max(complete, key=step_of)) if complete else None


def step_of(checkpoint: str | None) -> int:
    return int(checkpoint.rsplit("-", 1)[1]) if checkpoint else 0


def is_final(checkpoint: str | None, max_steps: int) -> bool:
    """Whether the checkpoint holds the run's last step (max_steps, or the total it planned by epochs)."""
    if checkpoint is None:
        return False
    state = trainer_state(checkpoint)
    return state["global_step"] >= (max_steps if max_steps > 0 else state["max_steps"])


def trainer_state(checkpoint: str) -> dict:
    with open(os.path.join(checkpoint, TRAINER_STATE_NAME), encoding="utf-8") as f:
        return json.load(f)


def copy_model_files(checkpoint: str, output_dir: str) -> None:
    for name in os.listdir(checkpoint):
        path = os.path.join(checkpoint, name)
        if os.path.isfile(path) and not TRAINING_STATE.fullmatch(name):
            shutil.copy2(path, os.path.join(output_dir, name))


def model_name(training_args: Any) -> str:
    """The name the model card gives the model, as TRL names it at checkpoints: the hub repo or the folder."""
    if training_args.hub_model_id:
        return training_args.hub_model_id.split("/")[-1]
    return os.path.basename(os.path.normpath(training_args.output_dir))


@dataclass(frozen=True)
class ResumePoint:
    """Where a (re)run starts: the checkpoint to resume from, whether it holds the last step, and the report of a
    run that already finished and wrote it (then there is nothing to do)."""

    checkpoint: str | None
    finished: bool
    report: dict | None


def resume_point(training_args: Any) -> ResumePoint:
    """An explicit `resume_from_checkpoint`, else the last complete checkpoint in output_dir."""
    output_dir = training_args.output_dir
    checkpoint = training_args.resume_from_checkpoint or last_complete_checkpoint(output_dir)
    finished = is_final(checkpoint, training_args.max_steps)
    path = os.path.join(output_dir, REPORT)
    if not (finished and os.path.isfile(path)):
        return ResumePoint(checkpoint, finished, None)
    logger.info("%s already finished at %s; nothing to do", output_dir, checkpoint)
    PartialState().destroy_process_group()
    with open(path, encoding="utf-8") as f:
        return ResumePoint(checkpoint, finished, json.load(f))


def train_or_restore(trainer: Any, start: ResumePoint, output_dir: str) -> dict:
    """Train (resumed: same data order, optimizer, scheduler and RNG state) and save the final model; its metrics.

    Killed between the last checkpoint and the end, that checkpoint holds the final model: copy it and its log.
    (Resuming there would train one step too many: Trainer checks max_steps only after a step.)"""
    checkpoint = start.checkpoint
    if start.finished:
        logger.info("training finished at %s; saving its model as the final one", checkpoint)
        trainer.state.log_history = trainer_state(checkpoint)["log_history"]
        if trainer.accelerator.is_main_process:
            copy_model_files(checkpoint, output_dir)
        return {}
    logger.info("training from %s", checkpoint or "step 0")
    metrics = trainer.train(resume_from_checkpoint=checkpoint).metrics
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    trainer.save_state()
    trainer.save_model(output_dir)
    return metrics


def save_card(trainer: Any, card: dict[str, Any], training_args: Any, use_peft: bool) -> None:
    """The model card (and the config with the cache back on: inference wants it), then the push if asked."""
    if trainer.accelerator.is_main_process:
        trainer.create_model_card(**card)
        if not use_peft:  # activation checkpointing turned the cache off
            trainer.model.config.use_cache = True
            trainer.model.config.save_pretrained(training_args.output_dir)
    if training_args.push_to_hub:
        trainer.push_to_hub(**card)


def write_report_and_end(trainer: Any, report: dict[str, Any], output_dir: str) -> dict[str, Any]:
    """Write report.json (main process), then finish trackers and destroy the process group together."""
    if trainer.accelerator.is_main_process:
        with open(os.path.join(output_dir, REPORT), "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
    # Without destroying the process group a multi-process run exits non-zero. Leave together: a rank that tears
    # down gloo and exits while another still writes the model can abort (`terminate called without an active
    # exception`, seen once in CI on a resumed ZeRO-3 run)
    trainer.accelerator.wait_for_everyone()
    trainer.end()
    return report
