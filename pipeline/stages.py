"""Every stage by name, run in this process from its recipe file exactly as its command reads it.

The one place that knows each stage's entry point and recipe loader, so an orchestrator (`statelm demo`) runs
the pipeline without reaching into the stages' modules. Imports are lazy: naming a stage loads only its code.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _collect(recipe: Path) -> dict[str, Any]:
    from pipeline.collect import run_collect
    from pipeline.settings.recipe import load_collect_recipe

    return run_collect(load_collect_recipe(recipe, {}))


def _curate(recipe: Path) -> dict[str, Any]:
    from pipeline.curate import load_curate_recipe, run_curate

    return run_curate(load_curate_recipe(recipe, {}))


def _trl(module: str) -> Callable[[Path], dict[str, Any]]:
    """SFT or GRPO, parsed from the recipe exactly as `accelerate launch -m <module>` would."""

    def run(recipe: Path) -> dict[str, Any]:
        from pipeline.settings.trl_recipe import parse_recipe

        stage = importlib.import_module(module)
        return stage.main(*parse_recipe(stage.make_parser(), ["--config", str(recipe)]))

    return run


def _eval(recipe: Path) -> dict[str, Any]:
    from pipeline.evaluate import run_eval
    from pipeline.settings.config import load_recipe
    from pipeline.settings.recipe import EvalRecipe

    return run_eval(load_recipe(EvalRecipe, recipe, {}))


STAGES: dict[str, Callable[[Path], dict[str, Any]]] = {
    "collect": _collect,
    "curate": _curate,
    "sft": _trl("pipeline.sft"),
    "grpo": _trl("pipeline.grpo"),
    "eval": _eval,
}


def run_stage(name: str, recipe: Path) -> dict[str, Any]:
    """Run stage `name` (collect, curate, sft, grpo, eval) from `recipe`; its report."""
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}; the stages are {', '.join(STAGES)}")
    return STAGES[name](recipe)
