"""Environment kinds by name: a recipe's `env: {kind: ..., ...}` picks the class and its config.

A new environment adds one entry here: its config model (pydantic, with a `kind` field) and its class
(with `from_task(task, tokenizer, config)`); it then plays through collect, GRPO and eval.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from pipeline.env.base import Environment
from pipeline.env.inventory import InventoryConfig, InventoryEnv
from pipeline.env.pensieve import EnvConfig, PensieveEnv
from pipeline.env.rlm import RLMConfig, RLMEnv
from pipeline.tasks.schema import Task

ENVIRONMENTS: dict[str, tuple[type[BaseModel], type]] = {
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


def make_env(task: Task, tokenizer: Any, config: Any) -> Environment:
    """Build the environment named by `config.kind` for one episode of `task`."""
    return ENVIRONMENTS[env_config(config).kind][1].from_task(task, tokenizer, config)  # type: ignore[attr-defined]
