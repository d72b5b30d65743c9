"""GRPO over whole Pensieve episodes (SPEC 6): TRL's GRPOTrainer with our episode loop, segments and sampling.

TRL owns the model, optimizer, DeepSpeed/FSDP, checkpoints, the clipped-ratio loss with the KL term, the
reference model, vLLM (server and colocate, weight sync) and HF generation. This subclass replaces what one
row means: in TRL a row is one completion of one prompt; here the dataset rows are tasks, each played as
`G` episodes (multi-turn, with context edits) and each episode becomes up to `max_segments_per_episode`
training rows (segments, `pipeline/segments.py`), every one carrying its episode's advantage.

One generation (every `steps_per_generation` micro-steps):

1. play: all local episodes advance in rounds; a round renders every live context, generates one
   assistant message each (batched: TRL's `_generate_single_turn`, i.e. HF `generate` under
   `unwrap_model_for_generation`, or vLLM colocate; vLLM server through TRL's client), and steps the
   environments. Budgets and end states are the environment's (`max_completion_length` is the per-turn cap).
2. score: reward components per episode (`pipeline/rewards.py`) are TRL reward functions with the recipe's
   weights, gathered across processes; group advantages (`pipeline/advantages.py`).
3. cut and sample: segments of each episode, at most `max_segments_per_episode` picked
   (`pipeline/snapshots.py`), weights 1/k per episode.
4. rows: a segment's tokens split at its first trained token into TRL's prompt / completion, with
   `tool_mask` = the segment's assistant mask, so TRL's loss sees assistant tokens only. The per-row weight
   is folded into the advantage (the clipped surrogate is positively homogeneous in it).

Curriculum (optional, `curriculum:` in the recipe, pipeline/env/curriculum.py): Inventory tasks are played at the
current stage's sizes, every episode's grade (gathered over processes, so all agree) updates the rolling success
rate, the stage is logged as `curriculum/stage`, and each checkpoint holds `curriculum.json`, from which a resumed
run continues at the same stage.

Shapes. Every process trains `E_local * max_segments_per_episode` rows per generation in fixed chunks of
`per_device_train_batch_size` rows (`steps_per_generation` chunks), so TRL's collectives see equal shapes.
Episodes with fewer segments leave empty rows: one-token rows with an all-zero mask that cost almost
nothing; real rows go first, longest first, so padding inside a chunk is small.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from accelerate.utils import broadcast_object_list, gather, gather_object
from datasets import Dataset
from pydantic import ValidationError
from tqdm.auto import tqdm
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint
from trl import GRPOConfig, GRPOTrainer
from trl.models import unwrap_model_for_generation
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import RepeatSampler, nanstd, pad, use_adapter

from pipeline.advantages import ADVANTAGE_TYPES, group_advantages
from pipeline.env.curriculum import Curriculum, CurriculumConfig, staged_task
from pipeline.env.registry import env_config, make_env
from pipeline.policies.hf import KEEP_MARKUP
from pipeline.policies.prefix_cache import PrefixCachingGenerator, SamplingSettings
from pipeline.recipe import JudgeSpec
from pipeline.rewards import DEFAULT_REWARD_WEIGHTS, REWARD_COMPONENTS, weighted_reward
from pipeline.segments import SegmentError, segment_trajectory
from pipeline.snapshots import episode_rng, sample_segments
from pipeline.task_sources import make_grader
from pipeline.tasks.schema import Task
from pipeline.trajectory import END_STATES, Trajectory

logger = logging.getLogger(__name__)

LOSS_TYPES = ("grpo", "dr_grpo")  # TRL losses whose normalisation the per-episode weights are built for
CURRICULUM_FILE = "curriculum.json"  # in each checkpoint: the curriculum's position at that step


@dataclass
class StateLMGRPOConfig(GRPOConfig):
    """TRL's GRPOConfig plus the episode settings. Derived: `num_generations = num_episodes_per_task`, and
    `steps_per_generation = gradient_accumulation_steps = rows per process / per_device_train_batch_size`
    (one optimizer step per generation), where rows per process = episodes per process * max_segments_per_episode.
    """

    num_episodes_per_task: int = field(
        default=8, metadata={"help": "G: episodes played per task; their rewards form one group."}
    )
    tasks_per_generation: int = field(
        default=1, metadata={"help": "Tasks played per generation (over all processes); G episodes each."}
    )
    max_segments_per_episode: int = field(
        default=8, metadata={"help": "Most segments trained per episode: last, edit-adjacent, then random."}
    )
    max_tokens_per_segment: int | None = field(
        default=None, metadata={"help": "Start a new segment before a row grows longer than this (memory)."}
    )
    advantage: str = field(
        default="grpo", metadata={"help": "grpo: (r - group mean) / group std; dr_grpo: r - group mean."}
    )
    rewards: dict | str | None = field(
        default=None,
        metadata={"help": f"Weight of each reward component (pipeline/rewards.py); default {DEFAULT_REWARD_WEIGHTS}."},
    )
    environment: dict | str | None = field(
        default=None,
        metadata={"help": "Environment kind and budgets (EnvConfig: max_context_tokens, max_rounds, ...)."},
    )
    judge: dict | str | None = field(
        default=None, metadata={"help": "LLM judge {base_url, model, api_key} for `judge` tasks."}
    )
    curriculum: dict | str | None = field(
        default=None,
        metadata={
            "help": "Inventory curriculum {stages: [{n_chunks, chunk_size}, ...], window, threshold}: inventory "
            "tasks are played at the current stage's sizes (pipeline/env/curriculum.py)."
        },
    )
    prefix_cache: bool = field(
        default=True,
        metadata={
            "help": "HF generation (no vLLM): reuse the KV cache of each episode's prefix across its turns and decode "
            "all local episodes in one batch (pipeline/policies/prefix_cache.py); false: TRL's generate per round."
        },
    )
    # TRL defaults that differ here: GRPO's per-sequence normalisation, and every step's figures in the log
    loss_type: str = field(
        default="grpo", metadata={"help": "TRL loss aggregation: grpo (mean over a segment's tokens) or dr_grpo."}
    )
    logging_steps: float = field(default=1, metadata={"help": "Log every X updates steps."})

    _VALID_DICT_FIELDS: ClassVar[list[str]] = [
        *GRPOConfig._VALID_DICT_FIELDS, "rewards", "environment", "judge", "curriculum",
    ]  # fmt: skip

    def __post_init__(self) -> None:
        if self.advantage not in ADVANTAGE_TYPES:
            raise ValueError(f"advantage must be one of {ADVANTAGE_TYPES}, got {self.advantage!r}")
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(
                f"loss_type {self.loss_type!r} is not supported: the per-episode segment weights assume a loss "
                f"normalised per sequence; choose one of {LOSS_TYPES}"
            )
        if self.num_episodes_per_task < 2:
            raise ValueError(f"num_episodes_per_task must be >= 2 (a group), got {self.num_episodes_per_task}")
        if self.tasks_per_generation < 1:
            raise ValueError(f"tasks_per_generation must be >= 1, got {self.tasks_per_generation}")
        if self.max_segments_per_episode < 1:
            raise ValueError(f"max_segments_per_episode must be >= 1, got {self.max_segments_per_episode}")
        if self.generation_batch_size is not None:
            raise ValueError("generation_batch_size is derived here; set tasks_per_generation instead")
        self.num_generations = self.num_episodes_per_task
        # The process count is needed before the parent sets up the distributed state (GA feeds DeepSpeed)
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        episodes = self.tasks_per_generation * self.num_episodes_per_task
        if episodes % world_size:
            raise ValueError(
                f"tasks_per_generation * num_episodes_per_task = {episodes} episodes do not split over "
                f"{world_size} processes"
            )
        rows = episodes // world_size * self.max_segments_per_episode
        if rows % self.per_device_train_batch_size:
            raise ValueError(
                f"{rows} rows per process per generation ({episodes // world_size} episodes x "
                f"max_segments_per_episode={self.max_segments_per_episode}) are not a multiple of "
                f"per_device_train_batch_size={self.per_device_train_batch_size}"
            )
        steps = rows // self.per_device_train_batch_size
        if self.steps_per_generation not in (None, steps) or self.gradient_accumulation_steps not in (1, steps):
            raise ValueError(
                f"steps_per_generation and gradient_accumulation_steps are derived ({steps}: one optimizer step per "
                "generation); leave them unset"
            )
        self.steps_per_generation = self.gradient_accumulation_steps = steps
        super().__post_init__()
        self._from_environment()
        if self.world_size != world_size:
            raise RuntimeError(f"WORLD_SIZE={world_size} but the distributed state has {self.world_size} processes")
        self.rewards = dict(DEFAULT_REWARD_WEIGHTS if self.rewards is None else self.rewards)
        unknown = set(self.rewards) - set(REWARD_COMPONENTS)
        if unknown:
            raise ValueError(f"rewards: unknown components {sorted(unknown)}; known: {list(REWARD_COMPONENTS)}")
        self.reward_weights = [float(self.rewards.get(name, 0.0)) for name in REWARD_COMPONENTS]
        # The sections ours reads later are checked now, so a bad recipe fails before any model loads
        try:
            env_config(self.environment)
            if self.curriculum is not None:
                CurriculumConfig.model_validate(self.curriculum)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
            raise ValueError(f"environment / curriculum: {problems}") from exc

    def _from_environment(self) -> None:
        """The student's per-turn cap and chat-template kwargs are the environment's (set once for every stage)."""
        try:
            env = env_config(self.environment)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
            raise ValueError(f"environment: {problems}") from exc
        self.max_completion_length = getattr(env, "max_output_tokens", self.max_completion_length)
        if getattr(env, "enable_thinking", None) is not None:
            self.chat_template_kwargs = {**(self.chat_template_kwargs or {}), "enable_thinking": env.enable_thinking}

    @property
    def episodes_per_process(self) -> int:
        return self.tasks_per_generation * self.num_episodes_per_task // self.world_size


def component_reward(name: str):
    """A TRL reward function returning one named component per episode (the episodes' values arrive as kwargs)."""

    def reward(prompts, completions, reward_components, **kwargs) -> list[float]:
        return [components[name] for components in reward_components]

    reward.__name__ = name  # TRL logs rewards/<name>/mean
    return reward


def tasks_dataset(tasks: list[Task]) -> Dataset:
    """One row per task: the question (TRL's `prompt`, for its logs) and the task record."""
    return Dataset.from_list([{"prompt": t.question, "task": t.model_dump_json()} for t in tasks])


@dataclass
class PlayedEpisode:
    """One played episode and what training needs from it."""

    trajectory: Trajectory
    sampled: list[tuple[list[int], list[float] | None]]  # per turn: generated ids and their sampler logprobs


class StateLMGRPOTrainer(GRPOTrainer):
    """GRPOTrainer whose generation step plays Pensieve episodes and emits sampled segments as rows."""

    card_section = ""

    def __init__(self, model, args: StateLMGRPOConfig, train_dataset: Dataset, processing_class, **kwargs):
        if args.eval_strategy != "no":
            raise ValueError("evaluation during GRPO is not supported; evaluate checkpoints with `statelm eval`")
        super().__init__(
            model=model,
            reward_funcs=[component_reward(name) for name in REWARD_COMPONENTS],
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
        keep = {self._tokenizer.convert_tokens_to_ids(t) for t in KEEP_MARKUP if t in self._tokenizer.get_vocab()}
        self._drop_ids = set(self._tokenizer.all_special_ids) - keep
        self._generated_at = -1  # the micro-step (self._step) whose generation is buffered
        self._generator: PrefixCachingGenerator | None = None  # set while a generation plays (prefix_cache)

    # -- curriculum: saved in every checkpoint, restored on resume --------------------------------------------
    def _save_checkpoint(self, model, trial):
        """Write curriculum.json before TRL's save, which writes trainer_state.json last: a checkpoint counted as
        complete (pipeline.checkpoints.last_complete_checkpoint) always has the curriculum of its step."""
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
        config = env_config(args.environment)
        cap = args.max_completion_length
        if "max_output_tokens" in config.model_fields_set and config.max_output_tokens != cap:
            raise ValueError(
                f"environment.max_output_tokens={config.max_output_tokens} differs from max_completion_length={cap}, "
                "the per-turn cap generation uses; set only max_completion_length"
            )
        if hasattr(config, "max_output_tokens"):
            config = config.model_copy(update={"max_output_tokens": cap})
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

        # Rewards (TRL reward functions, gathered over processes) and group advantages
        components = [e.trajectory.reward_components for e in episodes]
        rows_in = [{"reward_components": c} for c in components]
        answers = [e.trajectory.answer or "" for e in episodes]
        rewards_per_func = self._calculate_rewards(rows_in, [t.question for t in tasks], answers, [[]] * len(tasks))
        rewards = (rewards_per_func * self.reward_weights.to(rewards_per_func.device)).nansum(dim=1)
        advantages = group_advantages(rewards.cpu(), self.num_generations, args.advantage)
        local_advantages = advantages[first : first + len(tasks)].tolist()
        for episode, reward in zip(episodes, rewards[first : first + len(tasks)].tolist(), strict=True):
            expected = weighted_reward(episode.trajectory.reward_components, args.rewards)
            if not math.isclose(reward, expected, abs_tol=1e-5):
                raise RuntimeError(f"episode {episode.trajectory.episode_id}: reward {reward} != {expected}")

        # Segments, sampling, rows
        rows, stats = self._rows(episodes, local_advantages)
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

    def _play(self, tasks: list[Task], episode_ids: list[str]) -> list[PlayedEpisode]:
        """All local episodes in lockstep rounds of batched generation, until every environment is done."""
        if self.use_vllm and self.state.global_step != self._last_loaded_step:
            self.vllm_generation.sync_weights()  # collective: every process, once per generation
            self._last_loaded_step = self.state.global_step
        envs = [make_env(task, self._tokenizer, self.env_config) for task in tasks]
        sampled: list[list[tuple[list[int], list[float] | None]]] = [[] for _ in envs]
        with self._prefix_cached_generation():
            self._play_rounds(envs, sampled)
        episodes = []
        for task, env, episode_id, turns in zip(tasks, envs, episode_ids, sampled, strict=True):
            correct = env.end_state == "finished" and self.grader(task, env.answer)
            metadata = {"task_kind": task.kind, "global_step": self.state.global_step}
            trajectory = env.trajectory(
                episode_id, task.id, "grpo", self.args.seed, correct, self.args.rewards, metadata
            )
            episodes.append(PlayedEpisode(trajectory, turns))
        return episodes

    @contextlib.contextmanager
    def _prefix_cached_generation(self):
        """With HF generation and `prefix_cache`, one unwrapped model (ZeRO-3: gathered once) generates every round
        of this generation through a fresh prefix cache (the weights changed since the last one)."""
        self._generator = None
        if self.use_vllm or not self.args.prefix_cache:
            yield
            return
        with (
            unwrap_model_for_generation(
                self.model_wrapped, self.accelerator, gather_deepspeed3_params=self.args.ds3_gather_for_generation,
                generation_kwargs=self.generation_kwargs,
                gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs,
            ) as unwrapped,
            torch.no_grad(),
        ):  # fmt: skip
            pad_id = self._tokenizer.pad_token_id
            entries = 2 * self.args.episodes_per_process + 8
            self._generator = PrefixCachingGenerator(unwrapped, pad_id, self.eos_token_ids, max_entries=entries)
            try:
                yield
            finally:
                self._generator.clear()
                self._generator = None

    def _play_rounds(self, envs: list, sampled: list) -> None:
        """Lockstep rounds until every local environment is done (all processes, when generation is collective)."""
        lockstep = self._generation_is_collective() and self._generator is None
        bar = tqdm(
            total=len(envs),
            desc=f"episodes (step {self.state.global_step + 1})",
            disable=not self.accelerator.is_local_main_process or self.args.disable_tqdm,
            leave=False,
        )
        while True:
            live = [i for i, env in enumerate(envs) if not env.done]
            if lockstep:
                if gather(torch.tensor([len(live)], device=self.accelerator.device)).sum().item() == 0:
                    break
            elif not live:
                break
            prompts = [self._prompt_ids(envs[i]) for i in live]
            completions, logprobs = self._generate_round(prompts, lockstep)
            for j, i in enumerate(live):
                envs[i].step(self._decode(completions[j]))
                sampled[i].append((list(completions[j]), None if logprobs is None else list(logprobs[j])))
                if envs[i].done:
                    bar.update(1)
                    bar.set_postfix(end=envs[i].end_state, refresh=False)
        bar.close()

    def _generation_is_collective(self) -> bool:
        """Whether a generation call needs every process (then all processes run the same number of rounds)."""
        if self.accelerator.num_processes == 1:
            return False
        if self.use_vllm:
            return self.vllm_mode == "server"
        zero3 = self.is_deepspeed_enabled and self.accelerator.state.deepspeed_plugin.zero_stage == 3
        return zero3 or self.is_fsdp_enabled

    def _prompt_ids(self, env) -> list[int]:
        return self._tokenizer.apply_chat_template(
            env.messages(), tools=env.tools or None, add_generation_prompt=True, tokenize=True,
            return_dict=True, **self.segment_kwargs,
        )["input_ids"]  # fmt: skip

    def _generate_round(self, prompts: list[list[int]], lockstep: bool) -> tuple[list[list[int]], list | None]:
        """One assistant message per prompt, through TRL's generation backends."""
        if self.use_vllm and self.vllm_mode == "server":
            return self._generate_vllm_server(prompts)
        if self._generator is not None:
            settings = SamplingSettings(self.max_completion_length, self.temperature, self.top_p, self.top_k)
            return self._generator.generate(prompts, settings), None
        if not prompts:
            if not lockstep:
                return [], None
            # A process with no live episode still takes part (ZeRO-3 gathers weights for generate)
            self._generate_single_turn([[self._tokenizer.eos_token_id]], None, {}, 1)
            return [], None
        return self._generate_single_turn(prompts, None, {}, 1)

    def _generate_vllm_server(self, prompts: list[list[int]]) -> tuple[list[list[int]], list]:
        """TRL's vLLM server client with per-process prompt counts that differ (episodes end at different rounds).
        Untested here: vLLM does not install on this CPU-only machine."""
        gen = self.vllm_generation
        per_process = gather_object([prompts])
        payload = None
        if self.accelerator.is_main_process:
            flat = [p for chunk in per_process for p in chunk]
            output = {"completion_ids": [], "logprobs": []}
            if flat:
                output = gen.vllm_client.generate(
                    prompts=flat, n=1, repetition_penalty=gen.repetition_penalty, temperature=gen.temperature,
                    top_p=gen.top_p, top_k=gen.top_k, min_p=0.0 if gen.min_p is None else gen.min_p,
                    max_tokens=gen.max_completion_length, logprobs=gen.logprobs,
                    structured_outputs_regex=gen.structured_outputs_regex, generation_kwargs=gen.generation_kwargs,
                )  # fmt: skip
            payload = (output["completion_ids"], output["logprobs"])
        payload = broadcast_object_list([payload], from_process=0)[0]
        start = sum(len(chunk) for chunk in per_process[: self.accelerator.process_index])
        completions = payload[0][start : start + len(prompts)]
        logprobs = [[lp[0] for lp in seq] for seq in payload[1][start : start + len(prompts)]]
        return completions, logprobs

    def _decode(self, token_ids: list[int]) -> str:
        """The raw assistant text: tool-call and think markup kept, end-of-turn and padding dropped."""
        return self._tokenizer.decode([t for t in token_ids if t not in self._drop_ids], skip_special_tokens=False)

    # -- rows and chunks -------------------------------------------------------------------------------------
    def _rows(self, episodes: list[PlayedEpisode], advantages: list[float]) -> tuple[list[dict[str, Any]], list[int]]:
        """The sampled segments of every episode as rows: prompt / completion split, mask, weighted advantage."""
        args = self.args
        rows_per_process = args.steps_per_generation * args.per_device_train_batch_size
        rows, stats = [], [0, 0, 0, 0]  # segments cut, trained, unsegmentable episodes, edit-adjacent picks
        for episode, advantage in zip(episodes, advantages, strict=True):
            traj = episode.trajectory
            try:
                segments = segment_trajectory(
                    self._tokenizer, traj, max_tokens_per_segment=args.max_tokens_per_segment,
                    chat_template_kwargs=self.segment_kwargs,
                )  # fmt: skip
            except SegmentError as exc:  # e.g. garbage text that merges with the template: no rows, still scored
                logger.warning("episode %s is not trained: %s", traj.episode_id, exc)
                segments = []
            picks = sample_segments(
                [s.ends_with_edit for s in segments],
                [s.starts_after_edit for s in segments],
                args.max_segments_per_episode,
                episode_rng(args.seed, self.state.global_step, traj.episode_id),
            )
            stats[0] += len(segments)
            stats[1] += len(picks)
            stats[2] += int(bool(traj.turns) and not segments)
            stats[3] += sum(pick.reason == "edit" for pick in picks)
            for pick in picks:
                segment = segments[pick.index]
                # Each episode's row weights sum to rows_per_process / episodes: with TRL's per-row mean over the
                # chunk and the division by the accumulation steps, every episode weighs 1 / episodes.
                weight = pick.weight * rows_per_process / len(episodes)
                rows.append(self._row(episode, segment, advantage * weight))
        return rows, stats

    def _row(self, episode: PlayedEpisode, segment, advantage: float) -> dict[str, Any]:
        ids, mask = segment.input_ids, segment.completion_mask
        start = mask.index(1)  # segments always hold a trained token: every turn of an episode is trained
        row = {
            "prompt": ids[:start],
            "completion": ids[start:],
            "tool_mask": mask[start:],
            "advantage": advantage,
        }
        if self.use_vllm:
            # The sampler's logprobs where the segment's trained tokens are the sampled ones; NaN elsewhere (no
            # correction there: TRL turns NaN into ratio 1)
            logps = [float("nan")] * len(ids)
            for turn, (lo, hi) in zip(segment.turns, segment.spans, strict=True):
                generated, generated_logps = episode.sampled[turn]
                n = min(len(generated), hi - lo)
                if generated_logps is not None and ids[lo : lo + n] == generated[:n]:
                    logps[lo : lo + n] = generated_logps[:n]
            row["sampling_logps"] = logps[start:]
        return row

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

    # -- metrics ---------------------------------------------------------------------------------------------
    def _log_generation(self, episodes, rewards_per_func, rewards, advantages, stats, chunks) -> None:
        """Every step: reward and each component, end states, accuracy, context use, deletions, segments, tokens."""
        metrics = self._metrics["train"]
        for i, name in enumerate(self.reward_func_names):
            metrics[f"rewards/{name}/mean"].append(torch.nanmean(rewards_per_func[:, i]).item())
            metrics[f"rewards/{name}/std"].append(nanstd(rewards_per_func[:, i]).item())
        metrics["reward"].append(rewards.mean().item())
        metrics["reward_std"].append(rewards.std().item() if rewards.numel() > 1 else 0.0)
        groups = rewards.view(-1, self.num_generations)
        metrics["frac_reward_zero_std"].append((groups.std(dim=1) < 1e-8).float().mean().item())
        metrics["advantage_abs_mean"].append(advantages.abs().mean().item())

        tokens = sum(int(c["tool_mask"].sum()) for c in chunks)
        local = [
            {
                "end_state": e.trajectory.end_state,
                "correct": e.trajectory.correct,
                "mean_context": e.trajectory.mean_context_tokens,
                "peak_context": e.trajectory.peak_context_tokens,
                "deletions": sum(c["name"] == "deleteContext" for t in e.trajectory.turns for c in t.tool_calls),
                "rounds": e.trajectory.rounds,
                "format_errors": e.trajectory.format_errors,
            }
            for e in episodes
        ]
        everything = gather_object(local)
        n = len(everything)
        ends = Counter(e["end_state"] for e in everything)
        for state in END_STATES:
            metrics[f"episodes/{state}"].append(ends[state] / n)
        metrics["episodes/accuracy"].append(sum(e["correct"] for e in everything) / n)
        metrics["episodes/context_tokens_mean"].append(sum(e["mean_context"] for e in everything) / n)
        metrics["episodes/context_tokens_peak"].append(max(e["peak_context"] for e in everything))
        metrics["episodes/context_tokens_peak_mean"].append(sum(e["peak_context"] for e in everything) / n)
        metrics["episodes/deletions"].append(sum(e["deletions"] for e in everything) / n)
        metrics["episodes/rounds"].append(sum(e["rounds"] for e in everything) / n)
        metrics["episodes/format_errors"].append(sum(e["format_errors"] for e in everything) / n)

        # stats: per-episode sums [segments cut, segments trained, unsegmentable, edit-adjacent picks], episodes
        totals = torch.tensor([*stats, len(episodes)], dtype=torch.float64, device=self.accelerator.device)
        cut, picked, unsegmentable, edit_picks, n_episodes = gather(totals[None]).sum(dim=0).tolist()
        metrics["segments/per_episode"].append(cut / n_episodes)
        metrics["segments/trained_per_episode"].append(picked / n_episodes)
        metrics["segments/edit_adjacent_share"].append(edit_picks / max(picked, 1))
        metrics["episodes/unsegmentable"].append(unsegmentable / n_episodes)
        trained = gather(torch.tensor([tokens], device=self.accelerator.device)).sum().item()
        metrics["tokens/trained"].append(trained)
        self.state.num_input_tokens_seen += trained
        metrics["num_tokens"] = [self.state.num_input_tokens_seen]
