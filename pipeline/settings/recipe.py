"""Collection recipes (`recipes/<model>/teacher.yaml`): which tasks, which policy, which budgets.

Validated with pydantic so a typo names the file and the field instead of failing mid-run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.env.pensieve import EnvConfig
from pipeline.env.registry import env_config
from pipeline.env.rubric import DEFAULT_REWARD_WEIGHTS
from pipeline.settings.config import load_recipe


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GeneratedTasks(_Strict):
    """Tasks made by a seeded generator (SPEC 3)."""

    generator: Literal["niah", "multihop", "inventory", "aggregation"]
    n: int = Field(gt=0)
    min_tokens: int = 1000
    max_tokens: int = 8000
    n_needles: int = Field(default=1, description="niah only: needles per haystack.")
    n_chunks: int | None = Field(default=None, gt=0, description="inventory only: chunks per stream.")
    words_per_chunk: int | None = Field(default=None, gt=0, description="inventory only: words per chunk.")
    templates: Literal["classic", "train", "heldout"] = Field(
        default="classic",
        description="niah, multihop: phrasing family (pipeline/tasks/phrasing.py); train and heldout share none.",
    )
    key_shapes: list[str] | None = Field(
        default=None, description="niah: key shapes to draw from (default: all of the family's; tasks/phrasing.py)."
    )
    value_shapes: list[str] | None = Field(default=None, description="niah: value shapes (number, code).")
    n_distractors: int = Field(default=0, ge=0, description="niah only: needles with near-identical keys.")
    seed: int = 0


class TaskFile(_Strict):
    """Tasks read from a JSONL file of task records (data/README.md)."""

    file: str
    limit: int | None = None


class PolicySpec(_Strict):
    """Which policy plays: the scripted expert, a local HF model, or an OpenAI-compatible endpoint."""

    kind: Literal["scripted", "scripted_rlm", "hf", "openai"]
    model: str | None = Field(default=None, description="hf: local model path; openai: served model name.")
    base_url: str | None = Field(default=None, description="openai: endpoint, e.g. http://host:8000/v1.")
    api_key: str = "EMPTY"
    temperature: float = 0.7
    top_p: float = 0.8
    top_k: int = 20
    max_tokens: int | None = Field(
        default=None,
        gt=0,
        description="Output cap per turn of this policy; default: environment.max_output_tokens (the student's cap). "
        "A teacher's own cap goes here, e.g. room for Qwen3's thinking.",
    )
    timeout: float = 600.0
    max_retries: int = 5
    enable_thinking: bool | None = Field(
        default=None, description="Chat-template enable_thinking of this policy; default: environment.enable_thinking."
    )
    chunk_size: int | None = Field(
        default=None, gt=0, description="scripted: chunk size the expert indexes with (smaller: shorter contexts)."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="hf: weights dtype (bfloat16 halves CPU generation time on AVX512-BF16 CPUs)."
    )
    prefix_cache: bool = Field(
        default=True, description="hf: reuse the KV cache of computed prefixes across turns, batch episodes' turns."
    )
    max_batch_size: int = Field(default=32, gt=0, description="hf: most episodes' turns generated in one batch.")
    samples: int | None = Field(
        default=None, gt=0, description="eval: episodes per task for this system (default: samples_per_task)."
    )
    max_input_tokens: int | None = Field(
        default=None,
        gt=0,
        description="eval: play only the tasks whose input has at most this many tokens (e.g. a sampled system on "
        "the short split, where its extra samples cost least).",
    )
    recovery_share: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="scripted: share of questions whose episode rehearses a recovery from a failed search"
        " (the failed search is not trained).",
    )
    note_retry_share: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="scripted: share of questions whose episode rehearses a note that fails (its key only, not "
        "trained) and is written again.",
    )


class JudgeSpec(_Strict):
    base_url: str
    model: str
    api_key: str = "EMPTY"


def env_section(value: Any) -> BaseModel:
    """A recipe's `env:` validated by its kind's config; an environment's own model (the RLM's `sub_model`) is a
    policy like `policy:`, validated here (the env package does not know policies) and built by the caller."""
    config = env_config(value)
    sub_model = getattr(config, "sub_model", None)
    if sub_model is not None and not isinstance(sub_model, PolicySpec):
        config.sub_model = PolicySpec.model_validate(sub_model)
    return config


class _PlaysEpisodes(_Strict):
    """What the recipes that play episodes (collect, eval) set alike: the output folder, the tasks, the
    environment they are played in, how often each task is played, the seed, the reward weights and the judge.
    Each policy's unset per-turn cap and enable_thinking come from the environment, where they are set once."""

    output_dir: str
    tasks: list[GeneratedTasks | TaskFile]
    environment: Any = Field(
        default_factory=EnvConfig,
        description="Environment kind and settings (env.registry), or the path of the shared env file "
        "(relative to this recipe).",
    )
    samples_per_task: int = Field(default=1, gt=0)
    seed: int = 0
    rewards: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_REWARD_WEIGHTS))
    judge: JudgeSpec | None = None

    @field_validator("environment", mode="before")
    @classmethod
    def _env(cls, value: Any) -> BaseModel:
        return env_section(value)

    @model_validator(mode="after")
    def _policy_defaults(self) -> Any:
        return _fill_policies(self)


class CollectRecipe(_PlaysEpisodes):
    """Everything `statelm collect` needs."""

    student_tokenizer: str = Field(description="Path or hub id of the student's tokenizer (budgets count with it).")
    policy: PolicySpec
    concurrency: int = Field(default=8, gt=0)
    max_failed_share: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Share of this run's episodes that may fail (server errors after every retry) before "
        "`statelm collect` exits non-zero (3); 0: any failed episode does.",
    )


def load_collect_recipe(path: str | Path, overrides: dict[str, Any] | None = None) -> CollectRecipe:
    """Read and validate a collection recipe; errors name the file and the field."""
    return load_recipe(CollectRecipe, path, overrides)


class EvalRecipe(_PlaysEpisodes):
    """Everything `statelm eval` needs: systems to compare, tasks, and the training-time environment."""

    student_tokenizer: str | None = Field(
        default=None, description="Tokenizer budgets count with; default: the first HF model's folder."
    )
    models: dict[str, PolicySpec] = Field(description="Label -> policy of each model under test.")
    baselines: list[Literal["scripted", "no_tools"]] = Field(default_factory=list)
    expert: PolicySpec | None = Field(
        default=None, description="The scripted baseline's policy, e.g. the teacher's chunk_size (default: defaults)."
    )
    no_tools_model: str | None = Field(default=None, description="Label of the model for the no-tools baseline.")
    no_tools_max_tokens: int = Field(default=32000, description="Prompt + output window of the no-tools baseline.")
    no_tools_max_output_tokens: int = 64
    concurrency: int = Field(default=4, gt=0)
    sawtooth_episodes: int = 4
    imitation: bool = Field(
        default=True,
        description="With the scripted baseline: teacher-forced per-turn imitation of the expert by each greedy HF "
        "model (a sampled system of the same model would repeat its figures).",
    )
    imitation_episodes: int | None = Field(
        default=None, gt=0, description="Score imitation on the first N expert episodes only (default: all)."
    )

    def tokenizer_path(self) -> str:
        if self.student_tokenizer:
            return self.student_tokenizer
        for spec in self.models.values():
            if spec.kind == "hf" and spec.model:
                return spec.model
        raise ValueError("eval recipe: set student_tokenizer (no HF model to take the tokenizer from)")


def _fill_policies(recipe: Any) -> Any:
    """Each policy's unset per-turn cap and enable_thinking come from the environment, where they are set once."""
    env = recipe.environment
    defaults = {
        "max_tokens": getattr(env, "max_output_tokens", None),
        "enable_thinking": getattr(env, "enable_thinking", None),
    }

    def fill(spec: PolicySpec | None) -> PolicySpec | None:
        if spec is None:
            return None
        update = {k: v for k, v in defaults.items() if getattr(spec, k) is None and v is not None}
        return spec.model_copy(update=update) if update else spec

    for name in ("policy", "expert"):
        if hasattr(recipe, name):
            setattr(recipe, name, fill(getattr(recipe, name)))
    if hasattr(recipe, "models"):
        recipe.models = {label: fill(spec) for label, spec in recipe.models.items()}
    return recipe
