"""Each environment owns its rubric (pipeline/env/rubric.py): components see the episode and the task, weights come
from the recipe, every component is stored; and the env package imports nothing from policies or training."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.data.trajectory import Trajectory
from pipeline.env.inventory import InventoryConfig, InventoryEnv
from pipeline.env.registry import ENVIRONMENTS, env_class
from pipeline.env.rubric import DEFAULT_REWARD_WEIGHTS, DEFAULT_RUBRIC
from pipeline.tasks.inventory import generate_inventory
from tests.test_layout import imports_of as _imported


def state_share(episode: Trajectory, task) -> float:
    """A dense component: the share of chunks whose carried state was right (the episode's own figures)."""
    return episode.metadata["state_accuracy"]


def gold_size(episode: Trajectory, task) -> float:
    """Reads the task: how many items the gold answer holds (0 for an env built without a task)."""
    return float(len(task.answer)) if task is not None else 0.0


def turns_used(episode: Trajectory, task) -> float:
    return float(len(episode.turns))


class ShapedInventoryEnv(InventoryEnv):
    rubric = DEFAULT_RUBRIC.extend(state_share=state_share, gold_size=gold_size, turns_used=turns_used)


def play(env: InventoryEnv, outputs: list[str]) -> InventoryEnv:
    for text in outputs:
        env.step(text)
    return env


def test_a_custom_component_reads_the_episode_and_the_task(tokenizer):
    task = generate_inventory(1, n_chunks=3, words_per_chunk=120, seed=2, command_density=0.05)[0]
    outputs = ["Inventory: []", "no inventory line", "Inventory: [x]"]
    plain = play(InventoryEnv.from_task(task, tokenizer, InventoryConfig()), outputs)
    shaped = play(ShapedInventoryEnv.from_task(task, tokenizer, InventoryConfig()), outputs)
    weights = {**DEFAULT_REWARD_WEIGHTS, "state_share": 0.5, "gold_size": 0.1, "turns_used": -0.01}
    base = plain.trajectory("e", task.id, "p", 0, correct=False, weights=DEFAULT_REWARD_WEIGHTS)
    traj = shaped.trajectory("e", task.id, "p", 0, correct=False, weights=weights)

    components = traj.reward_components
    assert {k: components[k] for k in base.reward_components} == base.reward_components  # defaults unchanged
    assert components["state_share"] == traj.metadata["state_accuracy"]
    assert components["gold_size"] == len(task.answer) and components["turns_used"] == 3
    expected = base.reward + 0.5 * components["state_share"] + 0.1 * len(task.answer) - 0.03
    assert traj.reward == pytest.approx(expected)
    assert Trajectory.model_validate_json(traj.model_dump_json()).reward_components == components  # stored


def test_weights_name_only_known_components_and_names_are_unique(tokenizer):
    env = play(InventoryEnv(["[GET a] x", "y"], tokenizer), ["Inventory: [a]", "Inventory: [a]"])
    with pytest.raises(ValueError, match=r"unknown reward components in weights: \['state_share'\]"):
        env.trajectory("e", "t", "p", 0, correct=True, weights={"correct": 1.0, "state_share": 1.0})
    assert env.trajectory("e", "t", "p", 0, correct=True).reward == 1.0  # default weights
    with pytest.raises(ValueError, match="already exist"):
        DEFAULT_RUBRIC.extend(correct=turns_used)
    shaped = play(ShapedInventoryEnv(["[GET a] x", "y"], tokenizer), ["Inventory: [a]", "Inventory: [a]"])
    assert shaped.trajectory("e", "t", "p", 0, correct=True).reward_components["gold_size"] == 0.0  # no task


def test_every_registered_env_has_the_default_components():
    for kind in ENVIRONMENTS:
        assert env_class({"kind": kind}).rubric.names[: len(DEFAULT_REWARD_WEIGHTS)] == list(DEFAULT_REWARD_WEIGHTS)


# ------------------------------------------------------------------ the env package's imports

ENV_DIR = Path(__file__).resolve().parents[2] / "pipeline" / "env"
FORBIDDEN = ("pipeline.policies", "pipeline.training", "pipeline.play", "pipeline.settings", "pipeline.grpo",
             "pipeline.sft", "pipeline.collect", "pipeline.evaluate", "pipeline.data.curriculum")  # fmt: skip


def test_no_env_module_imports_policies_or_training_code():
    files = sorted(ENV_DIR.glob("*.py"))
    assert len(files) > 5
    bad = {f.name: sorted(n for n in _imported(f) if n.startswith(FORBIDDEN)) for f in files}
    assert {name: names for name, names in bad.items() if names} == {}


def test_importing_every_env_module_loads_no_policy_or_training_module():
    modules = [f"pipeline.env.{f.stem}" for f in sorted(ENV_DIR.glob("*.py")) if f.stem != "repl_worker"]
    code = (
        f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
        f"print(sorted(m for m in sys.modules if m.startswith({FORBIDDEN!r})))"
    )
    root = ENV_DIR.parents[1]
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, check=True)
    assert done.stdout.strip() == "[]"
