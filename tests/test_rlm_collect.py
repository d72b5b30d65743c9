"""`statelm collect` with the RLM environment: the scripted expert solves its tasks, a random model never crashes it."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.data.trajectory_files import iter_trajectories
from pipeline.settings.recipe import load_collect_recipe

RLM_ENV = {
    "kind": "rlm",
    "max_rounds": 10,
    "sub_model": {"kind": "scripted_rlm"},
    "max_parallel_sub_calls": 4,
    "sandbox": {"block_timeout_seconds": 20, "memory_mb": 1024},
}


def collect(tmp_path: Path, model_dir: Path, tasks: list[dict], policy: dict, env: dict) -> tuple[dict, list]:
    recipe = {
        "output_dir": str(tmp_path / "out"),
        "student_tokenizer": str(model_dir),
        "tasks": tasks,
        "policy": policy,
        "environment": env,
        "concurrency": 3,
    }
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "rlm.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = CliRunner().invoke(app, ["collect", "--recipe", str(path), "--no-progress"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    return report, list(iter_trajectories(tmp_path / "out" / "trajectories.jsonl"))


def test_scripted_expert_solves_generated_tasks_through_collect(tiny_model_dir, tmp_path):
    tasks = [
        {"generator": "niah", "n": 2, "min_tokens": 2000, "max_tokens": 12000, "seed": 4},
        {"generator": "niah", "n": 2, "min_tokens": 4000, "max_tokens": 24000, "n_needles": 3, "seed": 5},
        {"generator": "multihop", "n": 2, "min_tokens": 2000, "max_tokens": 8000, "seed": 6},
        {"generator": "aggregation", "n": 4, "min_tokens": 2000, "max_tokens": 24000, "seed": 7},
    ]
    report, trajectories = collect(tmp_path, tiny_model_dir, tasks, {"kind": "scripted_rlm"}, RLM_ENV)
    assert report["episodes"] == 10 and report["end_states"] == {"finished": 10} and report["accuracy"] == 1.0
    assert report["format_errors"] == 0 and report["tool_calls"] == {"python": 20, "finish": 10}
    for traj in trajectories:
        rlm = traj.metadata["rlm"]
        assert traj.env == "rlm" and traj.rounds == 3 and rlm["repl_restarts"] == 0 and rlm["sandbox"]["namespaces"]
        if traj.metadata["generator"] != "multihop":  # NIAH and aggregation go through sub-calls
            assert rlm["sub_call_count"] >= 1 and rlm["sub_call_prompt_tokens"] > 0 and rlm["sub_call_errors"] == 0
    longest = max(trajectories, key=lambda t: t.input_tokens or 0)
    assert longest.input_tokens > 15000 and longest.peak_context_tokens < 4000  # the input never enters the context
    # a rerun skips every written episode
    report, _ = collect(tmp_path, tiny_model_dir, tasks, {"kind": "scripted_rlm"}, RLM_ENV)
    assert report["played"] == 0 and report["skipped_existing"] == 10


def test_random_hf_model_as_root_or_sub_model_never_crashes_a_run(tiny_model_dir, tmp_path):
    tasks = [{"generator": "aggregation", "n": 2, "min_tokens": 1000, "max_tokens": 2000, "seed": 1}]
    random_model = {"kind": "hf", "model": str(tiny_model_dir), "temperature": 1.0, "max_tokens": 24}
    report, trajectories = collect(tmp_path / "root", tiny_model_dir, tasks, random_model, RLM_ENV)
    assert report["episodes"] == 2 and not report["failed"]
    assert set(report["end_states"]) <= {"malformed", "max_rounds", "finished"} and report["format_errors"] >= 3
    assert all(t.policy.startswith("hf:") for t in trajectories)

    # the scripted expert's sub-calls go to the random model: its replies are useless, the expert falls back
    env = {**RLM_ENV, "sub_model": {**random_model, "max_tokens": 8}}
    report, trajectories = collect(tmp_path / "sub", tiny_model_dir, tasks, {"kind": "scripted_rlm"}, env)
    assert report["end_states"] == {"finished": 2} and report["accuracy"] == 1.0
    for traj in trajectories:
        assert traj.metadata["rlm"]["sub_call_count"] >= 1 and traj.rounds == 4  # peek, sub-calls, direct, submit


def test_the_rlm_recipes_validate():
    for path in ("recipes/tiny/rlm_teacher.yaml", "recipes/qwen3-8b/rlm_teacher.yaml"):
        recipe = load_collect_recipe(path)
        assert recipe.environment.kind == "rlm" and recipe.environment.sub_model is not None
