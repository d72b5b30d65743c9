"""The GRPO stage's configuration: TRL's GRPOConfig plus the episode settings (open-r1's `configs.py` pattern).

Kept apart from the trainer (pipeline/training/grpo_trainer.py) so a recipe is parsed and checked, environment, rubric
weights and curriculum included, before any model or trainer code runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import ValidationError
from trl import GRPOConfig

from pipeline.data.curriculum import CurriculumConfig
from pipeline.env.registry import env_class, env_config
from pipeline.env.rubric import DEFAULT_REWARD_WEIGHTS
from pipeline.training.advantages import ADVANTAGE_TYPES

LOSS_TYPES = ("grpo", "dr_grpo")  # TRL losses whose normalisation the per-episode weights are built for
GENERATION_DTYPES = ("bfloat16", "float16", "float32")


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
        metadata={
            "help": f"Weight of each reward component (pipeline/env/rubric.py); default {DEFAULT_REWARD_WEIGHTS}."
        },
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
            "help": "Inventory curriculum {stages: [{n_chunks, words_per_chunk}, ...], window, threshold}: inventory "
            "tasks are played at the current stage's sizes (pipeline/data/curriculum.py)."
        },
    )
    prefix_cache: bool = field(
        default=True,
        metadata={
            "help": "HF generation (no vLLM): reuse the KV cache of each episode's prefix across its turns and decode "
            "all local episodes in one batch (pipeline/policies/prefix_cache.py); false: TRL's generate per round."
        },
    )
    generation_dtype: str | None = field(
        default=None,
        metadata={
            "help": "prefix_cache generation: play with a copy of the weights in this dtype (bfloat16: about half the "
            "decoding time on an AVX512-BF16 CPU), refreshed from the trained weights at every generation; the "
            "sampled tokens are trained as usual. Default: generate with the training weights themselves.",
        },
    )
    # TRL defaults that differ here: GRPO's per-sequence normalisation, and every step's figures in the log
    loss_type: str = field(
        default="grpo", metadata={"help": "TRL loss aggregation: grpo (mean over a segment's tokens) or dr_grpo."}
    )
    logging_steps: float = field(default=1, metadata={"help": "Log every X updates steps."})
    max_completion_length: int | None = field(
        default=None,
        metadata={"help": "Derived: environment.max_output_tokens, the student's per-turn cap (set it there)."},
    )

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
        if self.generation_dtype not in (None, *GENERATION_DTYPES):
            raise ValueError(f"generation_dtype must be one of {GENERATION_DTYPES}, got {self.generation_dtype!r}")
        if self.generation_dtype is not None and (self.use_vllm or not self.prefix_cache):
            raise ValueError("generation_dtype applies to the prefix_cache generation only (no vLLM)")
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
        # The sections ours reads later are checked now (each once), so a bad recipe fails before any model loads
        if isinstance(self.environment, str):  # `--environment <anything>`: only a recipe resolves an env file's path
            raise ValueError(
                f"environment: a mapping of fields is expected, got the string {self.environment!r}; on the command "
                "line set one field with --environment.<field> value"
            )
        env = _checked("environment", env_config, self.environment)
        if self.curriculum is not None:
            _checked("curriculum", CurriculumConfig.model_validate, self.curriculum)
        self._from_environment(env)
        super().__post_init__()
        if self.world_size != world_size:
            raise RuntimeError(f"WORLD_SIZE={world_size} but the distributed state has {self.world_size} processes")
        rubric = env_class(env).rubric
        self.rewards = dict(DEFAULT_REWARD_WEIGHTS if self.rewards is None else self.rewards)
        try:
            rubric.check_weights(self.rewards)
        except ValueError as exc:
            raise ValueError(f"rewards: {exc}") from exc
        self.reward_weights = None  # the reward is the episode's own (its env's rubric), never TRL's weighted sum

    def _from_environment(self, env: Any) -> None:
        """The student's per-turn cap and chat-template kwargs are the environment's (set once for every stage); a
        config built in code that sets another cap is an error, never silently overridden."""
        if self.max_completion_length not in (None, env.max_output_tokens):
            raise ValueError(
                f"max_completion_length={self.max_completion_length} differs from environment.max_output_tokens="
                f"{env.max_output_tokens}: set the student's per-turn cap once, as environment.max_output_tokens"
            )
        self.max_completion_length = env.max_output_tokens
        if getattr(env, "enable_thinking", None) is not None:
            self.chat_template_kwargs = {**(self.chat_template_kwargs or {}), "enable_thinking": env.enable_thinking}

    @property
    def episodes_per_process(self) -> int:
        return self.tasks_per_generation * self.num_episodes_per_task // self.world_size


def _checked(section: str, validate: Any, value: Any) -> Any:
    """A recipe section validated by pydantic, its problems in one line that names the section."""
    try:
        return validate(value)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"{section}: {problems}") from exc
