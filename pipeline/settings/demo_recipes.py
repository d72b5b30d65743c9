"""The demo's profiles, read from the YAML recipes in `recipes/demo/`.

The full profile is the folder's files as they stand (`demo.yaml`: the base model and the tasks; `env.yaml`: the
one environment; `teacher|curate|sft|grpo|eval.yaml`: the stage recipes). The quick profile is `quick.yaml`, an
overlay of what it changes, merged into those files: one set of recipes to read, and the two profiles cannot drift
apart on what they share. A run fills in the paths (`{out}`: the run folder, `{repo}`: this repository) and writes
the resolved recipes to `<out>/recipes/`, where a user reads and re-runs them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.settings.config import ENVIRONMENT, load_yaml
from pipeline.settings.cpu_bf16 import cpu_bf16_is_native, float32_where_bf16_is_slow

REPO = Path(__file__).resolve().parents[2]
DEMO_RECIPES = REPO / "recipes" / "demo"
STAGE_RECIPES = ("teacher", "curate", "sft", "grpo", "eval")
SHORT_HELDOUT_MAX_TOKENS = 2000  # the short held-out split: inputs from demo.yaml's min_tokens to this
LONG_HELDOUT_TOKENS = (4000, 32000)  # input lengths of the long held-out split


@dataclass(frozen=True)
class DemoProfile:
    """Sizes of one demo run: `demo.yaml`'s settings and the stage recipes (paths still as placeholders)."""

    name: str
    base: str  # "smollm2" (a packaged pretrained model) or "tiny" (pipeline.models.tiny, random weights)
    train_tasks: int
    min_tokens: int
    max_tokens: int
    heldout_short: int
    heldout_long: int
    grpo_tasks: int
    grpo_distractors: int
    tiny_model: dict[str, int] = field(default_factory=dict)  # build_tiny_model's sizes (base == "tiny")
    recipes: dict[str, dict[str, Any]] = field(default_factory=dict)  # stage -> recipe, environment inlined

    def __post_init__(self) -> None:
        if self.max_tokens >= LONG_HELDOUT_TOKENS[0]:  # the long split would no longer be longer than training's inputs
            raise ValueError(
                f"demo.yaml: max_tokens ({self.max_tokens}) must be below {LONG_HELDOUT_TOKENS[0]}, the shortest input "
                "of the long held-out split, which measures inputs longer than any training input"
            )

    def settings(self) -> dict[str, Any]:
        """The profile without its recipes (they are written beside the run's summary)."""
        return {k: v for k, v in self.__dict__.items() if k != "recipes"}


def merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """`base` with `overlay` merged in: mappings key by key, anything else replaced, null removes the key."""
    merged = dict(base)
    for key, value in overlay.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_profile(name: str, folder: Path = DEMO_RECIPES) -> DemoProfile:
    """The full profile (the folder's files) or another one (`<name>.yaml`, an overlay of them)."""
    overlay = {} if name == "full" else load_yaml(folder / f"{name}.yaml")
    files = {stem: merge(load_yaml(folder / f"{stem}.yaml"), overlay.get(stem) or {})
             for stem in ("demo", "env", *STAGE_RECIPES)}  # fmt: skip
    recipes = {}
    for stage in STAGE_RECIPES:
        recipe = files[stage]
        if isinstance(recipe.get(ENVIRONMENT), str):  # `environment: env.yaml`, the one environment
            recipe = {**recipe, ENVIRONMENT: files[Path(recipe[ENVIRONMENT]).stem]}
        recipes[stage] = recipe
    return DemoProfile(name=name, recipes=recipes, **files["demo"])


def fill_paths(value: Any, out: Path) -> Any:
    """`value` with `{out}` (the run folder) and `{repo}` (this repository) filled in, at any depth."""
    if isinstance(value, str):
        return value.replace("{out}", str(out)).replace("{repo}", str(REPO))
    if isinstance(value, dict):
        return {k: fill_paths(v, out) for k, v in value.items()}
    if isinstance(value, list):
        return [fill_paths(v, out) for v in value]
    return value


def write_recipes(
    out: Path, profile: DemoProfile, bf16_native: bool | None = None
) -> tuple[dict[str, Path], dict[str, list[str]]]:
    """The recipe of every stage, as YAML files a user can read and re-run (paths inside are under `out`), and
    per stage the fields written as float32 instead of bf16.

    On a CPU without native bf16 the recipes' bf16 settings are written as float32 (pipeline/settings/cpu_bf16.py:
    emulated bf16 was 20x slower), with a header line naming the fields; `bf16_native` overrides the CPU probe.
    """
    native = cpu_bf16_is_native() if bf16_native is None else bf16_native
    folder = out / "recipes"
    folder.mkdir(parents=True, exist_ok=True)
    paths, float32 = {}, {}
    for name, recipe in profile.recipes.items():
        paths[name] = folder / f"{name}.yaml"
        header = f"# statelm demo ({profile.name}): stage {name}\n"
        resolved = fill_paths(recipe, out)
        changed = float32_where_bf16_is_slow(resolved, native)
        if changed:
            float32[name] = changed
            header += f"# float32, not bf16, for {', '.join(changed)}: this CPU has no native bf16\n"
        paths[name].write_text(header + yaml.safe_dump(resolved, sort_keys=False))
    return paths, float32


PROFILES: dict[str, DemoProfile] = {name: load_profile(name) for name in ("full", "quick")}
