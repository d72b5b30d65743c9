"""GRPO over whole Pensieve episodes (SPEC 6): TRL's GRPOTrainer with our episode loop, segments and sampling.

TRL owns the model, optimizer, DeepSpeed/FSDP, checkpoints, the clipped-ratio loss with the KL term, the
reference model, vLLM (server and colocate, weight sync) and HF generation. This subclass replaces what one
row means: in TRL a row is one completion of one prompt; here the dataset rows are tasks, each played as
`G` episodes (multi-turn, with context edits) and each episode becomes up to `max_segments_per_episode`
training rows (segments, `pipeline/data/segments.py`), every one carrying its episode's advantage.

One generation (every `steps_per_generation` micro-steps):

1. play (`pipeline/training/grpo_generation.py`, through the one episode loop `pipeline/play/episodes.py`): all local
   episodes advance in rounds; a round renders every live context, generates one assistant message each
   (batched: the prefix-cached generator, TRL's `_generate_single_turn`, i.e. HF `generate` under
   `unwrap_model_for_generation`, or vLLM colocate; vLLM server through TRL's client), and steps the
   environments. Budgets and end states are the environment's (`max_completion_length` is the per-turn cap).
2. score: each episode's reward is its record's, scored once by its environment's rubric with the recipe's
   weights (`pipeline/env/rubric.py`); rewards and components (TRL reward functions, for the logs) are gathered
   across processes; group advantages (`pipeline/training/advantages.py`).
3. cut and sample: segments of each episode, at most `max_segments_per_episode` picked
   (`pipeline/data/snapshots.py`), weights 1/k per episode.
4. rows (`pipeline/training/grpo_rows.py`): token-in/token-out, every assistant turn's trained tokens are the ids it
   sampled (each with its sampling logprob under vLLM), never a re-encoding of its text; the share of turns
   whose re-encoding would have differed is logged as `reencode_mismatch_share`. A segment's tokens split at
   its first trained token into TRL's prompt / completion, with
   `tool_mask` = the segment's assistant mask, so TRL's loss sees assistant tokens only. The per-row weight
   is folded into the advantage (the clipped surrogate is positively homogeneous in it).

Curriculum (optional, `curriculum:` in the recipe, pipeline/data/curriculum.py): Inventory tasks are played at the
current stage's sizes, every episode's grade (gathered over processes, so all agree) updates the rolling success
rate, the stage is logged as `curriculum/stage`, and each checkpoint holds `curriculum.json`, from which a resumed
run continues at the same stage.

Shapes (`pipeline/training/grpo_chunks.py`). Every process trains `E_local * max_segments_per_episode` rows per
generation in fixed chunks of `per_device_train_batch_size` rows (`steps_per_generation` chunks), so TRL's
collectives see equal shapes.
Episodes with fewer segments leave empty rows: one-token rows with an all-zero mask that cost almost
nothing; real rows go first, longest first, so padding inside a chunk is small.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import torch
from accelerate.utils import gather, gather_object
from datasets import Dataset
from pydantic import ValidationError
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint
from trl import GRPOTrainer
from trl.trainer.utils import RepeatSampler

from pipeline.data.curriculum import Curriculum, CurriculumConfig, staged_task
from pipeline.data.task_sources import make_grader
from pipeline.env.registry import env_class, env_config
from pipeline.policies.hf import dropped_ids
from pipeline.policies.prefix_cache import PrefixCachingGenerator
from pipeline.settings.recipe import JudgeSpec
from pipeline.tasks.schema import Task
from pipeline.training.advantages import group_advantages
from pipeline.training.grpo_chunks import RowChunks
from pipeline.training.grpo_config import StateLMGRPOConfig
from pipeline.training.grpo_generation import EpisodeGeneration, PlayedEpisode
from pipeline.training.grpo_metrics import GenerationMetrics
from pipeline.training.grpo_rows import episode_rows
from pipeline.training.lm_head import score_trained_positions_only

logger = logging.getLogger(__name__)

CURRICULUM_FILE = "curriculum.json"  # in each checkpoint: the curriculum's position at that step


def component_reward(name: str):
    """A TRL reward function returning one named component per episode (the episodes' values arrive as kwargs)."""

    def reward(prompts, completions, reward_components, **kwargs) -> list[float]:
        return [components[name] for components in reward_components]

    reward.__name__ = name  # TRL logs rewards/<name>/mean
    return reward


def tasks_dataset(tasks: list[Task]) -> Dataset:
    """One row per task: the question (TRL's `prompt`, for its logs) and the task record."""
    return Dataset.from_list([{"prompt": t.question, "task": t.model_dump_json()} for t in tasks])


class StateLMGRPOTrainer(EpisodeGeneration, RowChunks, GenerationMetrics, GRPOTrainer):
    """GRPOTrainer whose generation step plays Pensieve episodes and emits sampled segments as rows. Its jobs live
    in mixins: playing (`grpo_generation.py`), chunks and logprobs (`grpo_chunks.py`), the log (`grpo_metrics.py`)."""

    card_section = ""

    def __init__(self, model, args: StateLMGRPOConfig, train_dataset: Dataset, processing_class, **kwargs):
        if args.eval_strategy != "no":
            raise ValueError("evaluation during GRPO is not supported; evaluate checkpoints with `statelm eval`")
        score_trained_positions_only()  # the LM head at the completion's positions only, on the CPU too (exact)
        super().__init__(
            model=model,
            reward_funcs=[component_reward(name) for name in env_class(args.environment).rubric.names],
            args=args,
            train_dataset=train_dataset,
            processing_class=processing_class,
            **kwargs,
        )
        if self.use_vllm and self.vllm_mode == "colocate" and self.vllm_tensor_parallel_size > 1:
            raise ValueError("vLLM colocate with tensor parallelism > 1 is not supported by the episode loop")
        self.env_config = self._env_config(args)
        try:
            judge = None if args.judge is None else JudgeSpec.model_validate(args.judge)
        except ValidationError as exc:
            raise ValueError(f"judge: {exc}") from exc
        self.grader = make_grader(judge)
        self.curriculum = (
            None if args.curriculum is None else Curriculum(CurriculumConfig.model_validate(args.curriculum))
        )
        self.segment_kwargs = dict(self.chat_template_kwargs)
        if getattr(self.env_config, "enable_thinking", None) is not None:
            self.segment_kwargs["enable_thinking"] = self.env_config.enable_thinking
        self._drop_ids = dropped_ids(self._tokenizer)
        self._generated_at = -1  # the micro-step (self._step) whose generation is buffered
        self._generator: PrefixCachingGenerator | None = None  # set while a generation plays (prefix_cache)

    # -- curriculum: saved in every checkpoint, restored on resume --------------------------------------------
    def _save_checkpoint(self, model, trial):
        """Write curriculum.json before TRL's save, which writes trainer_state.json last: a checkpoint counted as
        complete (pipeline.training.checkpoints.last_complete_checkpoint) always has the curriculum of its step."""
        if self.curriculum is not None and self.args.should_save:
            step = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            folder = os.path.join(self._get_output_dir(trial=trial), step)
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, CURRICULUM_FILE), "w", encoding="utf-8") as f:
                json.dump(self.curriculum.state_dict(), f, indent=2)
        super()._save_checkpoint(model, trial)

    def load_curriculum(self, checkpoint: str | None) -> None:
        """Continue the curriculum where `checkpoint` left it (every process reads the same file)."""
        if self.curriculum is None or checkpoint is None:
            return
        path = os.path.join(checkpoint, CURRICULUM_FILE)
        if not os.path.isfile(path):
            logger.warning("%s has no %s (saved without a curriculum): the curriculum starts at stage 0", checkpoint,
                           CURRICULUM_FILE)  # fmt: skip
            return
        with open(path, encoding="utf-8") as f:
            try:
                self.curriculum.load_state_dict(json.load(f))
            except (ValueError, json.JSONDecodeError) as exc:
                raise ValueError(f"{path}: {exc}") from exc
        logger.info("curriculum resumed at stage %d from %s", self.curriculum.stage_index, path)

    def train(self, resume_from_checkpoint=None, trial=None, **kwargs):
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)  # as the Trainer resolves it
        if resume_from_checkpoint:
            self.load_curriculum(resume_from_checkpoint)
        return super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial, **kwargs)

    def create_model_card(self, *args, **kwargs):
        """TRL's card (written with each checkpoint and on push), plus base model, tasks and recipe."""
        super().create_model_card(*args, **kwargs)
        if self.is_world_process_zero() and self.card_section:
            with open(os.path.join(self.args.output_dir, "README.md"), "a", encoding="utf-8") as card:
                card.write(self.card_section)

    def _env_config(self, args: StateLMGRPOConfig):
        config = env_config(args.environment)  # its max_output_tokens is max_completion_length (StateLMGRPOConfig)
        limit = args.vllm_max_model_length
        if self.use_vllm and limit is not None and limit < getattr(config, "max_context_tokens", 0):
            raise ValueError(f"vllm_max_model_length={limit} is below environment.max_context_tokens")
        return config

    # -- data: G copies of each task per generation, `episodes_per_process` rows per process -------------------
    def get_train_dataloader(self):
        return self._get_dataloader(
            dataset=self.train_dataset,
            description="Training",
            batch_size=self.args.episodes_per_process,
            sampler_fn=self._get_train_sampler,
            is_training=True,
        )

    def _get_train_sampler(self, dataset=None):
        dataset = self.train_dataset if dataset is None else dataset
        if len(dataset) < self.args.tasks_per_generation:
            raise ValueError(f"{len(dataset)} tasks, fewer than tasks_per_generation={self.args.tasks_per_generation}")
        return RepeatSampler(
            data_source=dataset,
            mini_repeat_count=self.num_generations,
            batch_size=self.args.tasks_per_generation,
            repeat_count=self.num_iterations * self.args.steps_per_generation,
            shuffle=self.shuffle_dataset,
            seed=self.args.seed,
        )

    def _prepare_inputs(self, generation_batch: list[dict[str, Any]]) -> dict[str, Any]:
        generate_every = self.args.steps_per_generation * self.num_iterations
        due = self._step % generate_every == 0 and self._generated_at != self._step
        if due or self._buffered_inputs is None:
            self._buffered_inputs = self._generate_and_score_completions(generation_batch)
            self._generated_at = self._step
        return self._buffered_inputs[self._step % self.args.steps_per_generation]

    def training_step(self, model, inputs, num_items_in_batch=None):
        """A micro-step whose rows are empty on every process is skipped (no forward, no backward, on all
        processes alike); the last micro-step of a generation always runs, it carries the optimizer step."""
        if self._prepare_inputs(inputs)["skip"]:
            self._step += 1
            return torch.tensor(0.0, device=self.accelerator.device)
        return super().training_step(model, inputs, num_items_in_batch)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not inputs["empty"]:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        # Nothing to train anywhere (it runs for the optimizer step): keep its zeros out of the step's figures
        sizes = {key: len(values) for key, values in self._metrics["train"].items()}
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        for key, values in self._metrics["train"].items():
            del values[sizes.get(key, 0) :]
        return loss

    # -- one generation: play, score, cut, sample, build the chunks ------------------------------------------
    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Play the episodes of this process's rows; return `steps_per_generation` chunks of training rows."""
        args, rank = self.args, self.accelerator.process_index
        tasks = [Task.model_validate_json(row["task"]) for row in inputs]
        if self.curriculum is not None:  # every process agrees on the stage: it is updated from gathered grades
            tasks = [staged_task(task, self.curriculum.stage) for task in tasks]
        first = rank * len(tasks)  # position of this process's first episode in the global generation batch
        ids = [f"{t.id}#{self.state.global_step}.{(first + i) % self.num_generations}" for i, t in enumerate(tasks)]
        episodes = self._play(tasks, ids)

        # Rewards: each episode's own (scored once, by its env's rubric), gathered over processes; the components
        # go through TRL's reward functions only to be gathered and logged. Then group advantages.
        components = [e.trajectory.reward_components for e in episodes]
        rows_in = [{"reward_components": c} for c in components]
        answers = [e.trajectory.answer or "" for e in episodes]
        rewards_per_func = self._calculate_rewards(rows_in, [t.question for t in tasks], answers, [[]] * len(tasks))
        local_rewards = [e.trajectory.reward for e in episodes]
        rewards = gather(torch.tensor(local_rewards, dtype=torch.float32, device=rewards_per_func.device))
        advantages = group_advantages(rewards.cpu(), self.num_generations, args.advantage)
        local_advantages = advantages[first : first + len(tasks)].tolist()

        # Segments, sampling, rows
        rows, stats = episode_rows(
            self._tokenizer, [e.trajectory for e in episodes], local_advantages, args, self.state.global_step,
            self.segment_kwargs, sampling_logps=self.use_vllm,
        )  # fmt: skip
        chunks = self._chunks(rows)
        self._log_generation(episodes, rewards_per_func, rewards, advantages, stats, chunks)
        self._update_curriculum(episodes)
        return chunks

    def _update_curriculum(self, episodes: list[PlayedEpisode]) -> None:
        """Each episode of the generation (all processes, in process order) is one success or failure; logs the
        stage the episodes were played at and the rolling success rate of the stage that is current now."""
        if self.curriculum is None:
            return
        played = self.curriculum.stage_index
        for correct in gather_object([e.trajectory.correct for e in episodes]):
            if self.curriculum.update(correct):
                logger.info("curriculum: stage %d (%s) from now on", self.curriculum.stage_index,
                            self.curriculum.stage.generator_kwargs())  # fmt: skip
        self._metrics["train"]["curriculum/stage"].append(played)
        self._metrics["train"]["curriculum/success_rate"].append(self.curriculum.success_rate)
