"""`statelm collect`: scripted-expert collection, report, resume after a kill, truncated lines."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.data.trajectory_files import iter_trajectories, scan_existing


def write_recipe(path: Path, model_dir: Path, out: Path, tasks: list[dict], **extra) -> Path:
    recipe = {
        "output_dir": str(out),
        "student_tokenizer": str(model_dir),
        "tasks": tasks,
        "policy": {"kind": "scripted"},
        "concurrency": 2,
        **extra,
    }
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.slow
def test_scripted_expert_solves_50_niah_tasks_from_4k_to_256k(tiny_model_dir, tmp_path):
    tasks = [{"generator": "niah", "n": 50, "min_tokens": 4000, "max_tokens": 256_000, "seed": 7}]
    recipe = write_recipe(tmp_path / "r.yaml", tiny_model_dir, tmp_path / "out", tasks)
    result = CliRunner().invoke(app, ["collect", "--recipe", str(recipe), "--no-progress"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["episodes"] == 50 and report["end_states"] == {"finished": 50} and report["accuracy"] == 1.0
    assert report["peak_context_tokens"] + 2048 <= 32000
    trajectories = list(iter_trajectories(tmp_path / "out" / "trajectories.jsonl"))
    lengths = sorted(t.input_tokens for t in trajectories)
    assert lengths[0] < 5000 and lengths[-1] > 200_000  # the lengths really span 4K..256K tokens
    for traj in trajectories:  # the sawtooth: every delete lowers the context
        deletes = [t for t in traj.turns if t.tool_calls and t.tool_calls[0]["name"] == "deleteContext"]
        reads = [t for t in traj.turns if t.tool_calls and t.tool_calls[0]["name"] == "readChunk"]
        assert deletes and reads
        assert all(t.context_tokens_after < t.context_tokens_before for t in deletes)
        assert all(t.context_tokens_after > t.context_tokens_before + 500 for t in reads)


def test_multi_needle_and_multihop_are_solved_and_rerun_skips_written_episodes(tiny_model_dir, tmp_path):
    tasks = [
        {"generator": "niah", "n": 3, "min_tokens": 2000, "max_tokens": 6000, "n_needles": 3, "seed": 1},
        {"generator": "multihop", "n": 3, "min_tokens": 2000, "max_tokens": 6000, "seed": 2},
    ]
    recipe = write_recipe(tmp_path / "r.yaml", tiny_model_dir, tmp_path / "out", tasks)
    runner = CliRunner()
    assert runner.invoke(app, ["collect", "--recipe", str(recipe), "--no-progress"]).exit_code == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["accuracy"] == 1.0 and report["played"] == 6
    result = runner.invoke(app, ["collect", "--recipe", str(recipe), "--no-progress"])
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert result.exit_code == 0 and report["played"] == 0 and report["skipped_existing"] == 6
    assert report["episodes"] == 6


def test_truncated_last_line_is_removed_and_rerun_and_corrupt_lines_are_reported(tiny_model_dir, tmp_path):
    tasks = [{"generator": "niah", "n": 4, "min_tokens": 1000, "max_tokens": 2000}]
    recipe = write_recipe(tmp_path / "r.yaml", tiny_model_dir, tmp_path / "out", tasks)
    runner = CliRunner()
    assert runner.invoke(app, ["collect", "--recipe", str(recipe), "--no-progress"]).exit_code == 0
    path = tmp_path / "out" / "trajectories.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    # a corrupt line in the middle, and the last episode cut half-way as a killed write leaves it
    path.write_text(lines[0] + "{not json\n" + "".join(lines[1:3]) + lines[3][: len(lines[3]) // 2])
    existing = scan_existing(path)
    assert existing.truncated_tail and len(existing.episode_ids) == 3
    assert existing.corrupt_lines and existing.corrupt_lines[0].startswith(f"{path}:2:")
    assert path.read_bytes().endswith(b"\n")  # the fragment is gone
    result = runner.invoke(app, ["collect", "--recipe", str(recipe), "--no-progress"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["played"] == 1 and report["episodes"] == 4
    assert report["invalid_lines"] and ":2:" in report["invalid_lines"][0]


def test_bad_recipe_names_the_file_and_field(tiny_model_dir, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_model_dir, tmp_path / "out", [{"generator": "niah", "n": 0}])
    result = CliRunner().invoke(app, ["collect", "--recipe", str(recipe)])
    assert result.exit_code != 0
    assert "r.yaml: invalid recipe" in result.output and "tasks.0" in result.output and "Traceback" not in result.output


@pytest.mark.slow
def test_collection_killed_mid_run_resumes_with_every_episode_exactly_once(tiny_model_dir, tmp_path):
    tasks = [{"generator": "niah", "n": 40, "min_tokens": 8000, "max_tokens": 64000, "seed": 3}]
    recipe = write_recipe(tmp_path / "r.yaml", tiny_model_dir, tmp_path / "out", tasks)
    path = tmp_path / "out" / "trajectories.jsonl"
    command = [sys.executable, "-m", "pipeline.cli", "collect", "--recipe", str(recipe), "--no-progress"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=os.getcwd())
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists() and path.read_bytes().count(b"\n") >= 5:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "collection ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written_before = path.read_bytes().count(b"\n")
    assert 5 <= written_before < 40
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ids = [json.loads(line)["episode_id"] for line in path.read_text().splitlines()]
    assert len(ids) == 40 and len(set(ids)) == 40
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["skipped_existing"] == written_before and report["accuracy"] == 1.0


def test_random_hf_model_plays_without_crashing_and_ends_malformed(tiny_model_dir, tmp_path):
    tasks = [{"generator": "niah", "n": 2, "min_tokens": 1000, "max_tokens": 1500}]
    policy = {"kind": "hf", "model": str(tiny_model_dir), "temperature": 1.0, "max_tokens": 24}
    recipe = write_recipe(tmp_path / "r.yaml", tiny_model_dir, tmp_path / "out", tasks, policy=policy)
    result = CliRunner().invoke(app, ["collect", "--recipe", str(recipe), "--no-progress"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["episodes"] == 2 and report["end_states"] == {"malformed": 2}
    assert report["format_errors"] >= 6 and report["mean_reward"] == -1.0
    traj = next(iter(iter_trajectories(tmp_path / "out" / "trajectories.jsonl")))
    assert traj.policy.startswith("hf:") and "Error" in traj.messages[traj.turns[0].tool_results[0]].content


def test_recipe_phrasing_options_reach_the_generators_and_the_cli(tmp_path):
    from pipeline.data.task_sources import build_tasks
    from pipeline.settings.recipe import GeneratedTasks
    from pipeline.tasks.schema import read_tasks

    source = {"generator": "niah", "n": 3, "min_tokens": 200, "max_tokens": 300, "seed": 1}
    tasks = build_tasks(
        [
            GeneratedTasks(**source, templates="heldout", key_shapes=["code"], value_shapes=["code"], n_distractors=2),
            GeneratedTasks(**{**source, "generator": "multihop"}, templates="train"),
        ],
        None,
    )
    niah, hop = tasks[:3], tasks[3:]
    assert all(t.metadata["templates"] == "heldout" and t.metadata["key_shape"] == "code" for t in niah)
    assert all(t.metadata["value_shape"] == "code" and len(t.metadata["distractor_keys"]) == 2 for t in niah)
    assert all(t.metadata["templates"] == "train" for t in hop)
    with pytest.raises(ValueError, match="n_distractors"):
        GeneratedTasks(**source, n_distractors=-1)

    out = tmp_path / "tasks.jsonl"
    args = ["tasks", "generate", "niah", "--out", str(out), "--n", "2", "--min-tokens", "200", "--max-tokens", "200"]
    result = CliRunner().invoke(app, [*args, "--templates", "train", "--distractors", "1"])
    assert result.exit_code == 0, result.output
    written = read_tasks(out)
    assert all(t.metadata["templates"] == "train" and len(t.metadata["distractor_keys"]) == 1 for t in written)
    result = CliRunner().invoke(app, [*args, "--templates", "test"])
    assert result.exit_code != 0 and "templates" in result.output
