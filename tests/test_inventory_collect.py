"""`statelm collect` with the Inventory environment: the scripted expert at 20 chunks x 1000 words, a random
model that cannot crash a run, and the shipped recipes."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.collect import run_collect
from pipeline.data.segments import segment_trajectory
from pipeline.data.trajectory_files import iter_trajectories
from pipeline.settings.recipe import load_collect_recipe

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def write_recipe(path: Path, model_dir: Path, out: Path, tasks: list[dict], **extra) -> Path:
    recipe = {
        "output_dir": str(out),
        "student_tokenizer": str(model_dir),
        "tasks": tasks,
        "policy": {"kind": "scripted"},
        "environment": {"kind": "inventory"},
        "concurrency": 2,
        **extra,
    }
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_scripted_expert_scores_100_percent_at_20_chunks_of_1000_words(tiny_model_dir, tmp_path):
    tasks = [{"generator": "inventory", "n": 4, "n_chunks": 20, "words_per_chunk": 1000, "seed": 11}]
    recipe = write_recipe(tmp_path / "r.yaml", tiny_model_dir, tmp_path / "out", tasks)
    result = CliRunner().invoke(app, ["collect", "--recipe", str(recipe), "--no-progress"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["episodes"] == 4 and report["end_states"] == {"finished": 4} and report["accuracy"] == 1.0
    assert report["mean_reward"] == 1.0 and report["mean_rounds"] == 20 and report["format_errors"] == 0
    assert report["tool_calls"] == {"inventory": 4 * 19, "finish": 4}
    trajectories = list(iter_trajectories(tmp_path / "out" / "trajectories.jsonl"))
    for traj in trajectories:
        assert traj.env == "inventory" and traj.policy == "scripted"
        assert traj.metadata["n_chunks"] == 20 and traj.metadata["words_per_chunk"] == 1000
        assert traj.metadata["state_accuracy"] == 1.0 and traj.metadata["episode_length"] == 20
        assert all(len(t.context) == 2 for t in traj.turns)  # system prompt + one user message, every turn
    from transformers import AutoTokenizer

    segments = segment_trajectory(AutoTokenizer.from_pretrained(tiny_model_dir), trajectories[0])
    assert [s.turns for s in segments] == [[i] for i in range(20)]


def test_random_hf_model_ends_every_episode_without_exceptions(tiny_model_dir, tmp_path):
    tasks = [{"generator": "inventory", "n": 2, "n_chunks": 6, "words_per_chunk": 100}]
    policy = {"kind": "hf", "model": str(tiny_model_dir), "temperature": 1.0, "max_tokens": 24}
    recipe = write_recipe(tmp_path / "r.yaml", tiny_model_dir, tmp_path / "out", tasks, policy=policy)
    result = CliRunner().invoke(app, ["collect", "--recipe", str(recipe), "--no-progress"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["episodes"] == 2 and report["failed"] == [] and report["end_states"] == {"malformed": 2}
    assert report["mean_reward"] == -1.0 and report["format_errors"] == 6
    traj = next(iter(iter_trajectories(tmp_path / "out" / "trajectories.jsonl")))
    assert traj.policy.startswith("hf:") and traj.metadata["state_accuracy"] == 0.0
    assert "Error: your previous output had no inventory line" in traj.messages[traj.turns[1].context[1]].content


def test_shipped_recipes_validate_and_the_tiny_one_runs(tiny_model_dir, tmp_path):
    big = load_collect_recipe(RECIPES / "qwen3-8b" / "inventory_teacher.yaml")
    assert big.environment.kind == "inventory" and {t.generator for t in big.tasks} == {"inventory"}
    overrides = {"output_dir": str(tmp_path / "out"), "student_tokenizer": str(tiny_model_dir)}
    tiny = load_collect_recipe(RECIPES / "tiny" / "inventory_teacher.yaml", overrides)
    report = run_collect(tiny, progress=False)
    assert report["end_states"] == {"finished": 20} and report["accuracy"] == 1.0
