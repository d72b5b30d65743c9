"""Environment kinds by name: a recipe's `env: {kind: ..., ...}` picks the class and its config.

A new environment adds one entry here: its config model (pydantic, with a `kind` field) and its class
(a `BaseEnv` with `from_task(task, tokenizer, config)`, its rubric and its `eval_figures`); it then plays
through collect, GRPO and eval. Models an environment needs (the RLM's sub-model) are built by the
caller and passed to `make_env`: this package imports nothing from pipeline.policies or training.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from pipeline.data.trajectory import Trajectory
from pipeline.env.base import BaseEnv
from pipeline.env.inventory import InventoryConfig, InventoryEnv
from pipeline.env.pensieve import EnvConfig, PensieveEnv
from pipeline.env.rlm import RLMConfig, RLMEnv
from pipeline.tasks.schema import Task

ENVIRONMENTS: dict[str, tuple[type[BaseModel], type[BaseEnv]]] = {
    "pensieve": (EnvConfig, PensieveEnv),
    "inventory": (InventoryConfig, InventoryEnv),
    "rlm": (RLMConfig, RLMEnv),
}


def env_config(data: Any) -> BaseModel:
    """Validate a recipe's `env:` section with the config model of its `kind` (default pensieve)."""
    if isinstance(data, BaseModel):
        return data
    data = dict(data or {})
    kind = data.setdefault("kind", "pensieve")
    if kind not in ENVIRONMENTS:
        raise ValueError(f"unknown environment kind {kind!r}; known: {sorted(ENVIRONMENTS)}")
    return ENVIRONMENTS[kind][0].model_validate(data)


def env_class(config: Any) -> type[BaseEnv]:
    """The environment class of an `env:` section (its rubric names the reward components a recipe may weight)."""
    return ENVIRONMENTS[env_config(config).kind][1]  # type: ignore[attr-defined]


def make_env(task: Task, tokenizer: Any, config: Any, sub_policy: Any = None) -> BaseEnv:
    """Build the environment named by `config.kind` for one episode of `task`.

    `sub_policy`: the model behind an RLM's `llm_query` (pipeline.policies.factory.sub_policy_for builds it
    from `config.sub_model`); only environments with a sub-model take one.
    """
    extra = {} if sub_policy is None else {"sub_policy": sub_policy}
    return env_class(config).from_task(task, tokenizer, config, **extra)  # type: ignore[attr-defined]


def eval_figures(trajectories: list[Trajectory]) -> dict[str, Any]:
    """Each environment's own report sections over its episodes, in registry order (pipeline/evaluate.py)."""
    figures: dict[str, Any] = {}
    for _, cls in ENVIRONMENTS.values():
        played = [t for t in trajectories if t.env == cls.name]
        if played:
            figures.update(cls.eval_figures(played))
    return figures
