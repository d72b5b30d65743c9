"""The command line as users meet it (pipeline/cli.py, pipeline/settings/errors.py and preflight.py): every bad
input gives a short error naming the file and field, a non-zero exit, no traceback, and loses nothing written."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner, Result

from pipeline.cli import app
from pipeline.settings.errors import EXIT_EPISODES_FAILED

ROOT = Path(__file__).resolve().parents[1]
NIAH = {"generator": "niah", "n": 2, "min_tokens": 600, "max_tokens": 900, "seed": 0}


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def assert_short_error(result: Result, *named: str, exit_code: int = 1) -> None:
    """Exit code, the named things in the message, no traceback, a few lines at most."""
    text = result.output
    assert result.exit_code == exit_code, text
    assert "Traceback" not in text and "──" not in text, text  # neither Python's nor Rich's traceback
    for name in named:
        assert name in text, f"{name!r} not in:\n{text}"
    assert len(text.strip().splitlines()) <= 6, text


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def collect_recipe(tiny_model_dir: Path, tmp_path: Path) -> dict[str, Any]:
    return {
        "output_dir": str(tmp_path / "out"),
        "student_tokenizer": str(tiny_model_dir),
        "tasks": [NIAH],
        "policy": {"kind": "scripted"},
        "concurrency": 2,
    }


# ------------------------------------------------------------------------------------------------
# Recipes: missing, unknown key, wrong type, missing field, corrupt task line


def test_missing_recipe_is_one_line_for_every_stage(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.yaml")
    for stage in ("collect", "curate", "eval", "sft", "grpo"):
        assert_short_error(invoke(stage, "--recipe", missing), "recipe not found", "nope.yaml")


def test_collect_recipe_errors_name_the_file_and_field(collect_recipe: dict, tmp_path: Path) -> None:
    typo = write_yaml(tmp_path / "typo.yaml", {**collect_recipe, "concurency": 2})
    assert_short_error(invoke("collect", "--recipe", str(typo)), "typo.yaml", "concurency", "Extra inputs")
    wrong = write_yaml(tmp_path / "wrong.yaml", {**collect_recipe, "concurrency": "lots"})
    assert_short_error(invoke("collect", "--recipe", str(wrong)), "wrong.yaml", "concurrency", "integer")
    missing = write_yaml(tmp_path / "missing.yaml", {**collect_recipe, "policy": {"model": "x"}})
    assert_short_error(invoke("collect", "--recipe", str(missing)), "missing.yaml", "policy.kind", "Field required")
    assert not (tmp_path / "out").exists()  # nothing was started


def test_corrupt_task_line_names_file_and_line(collect_recipe: dict, tmp_path: Path) -> None:
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text('{"id": "t1", "kind": "exact", "question": "q", "documents": ["x"], "answer": "a"}\n{oops\n')
    recipe = write_yaml(tmp_path / "r.yaml", {**collect_recipe, "tasks": [{"file": str(tasks)}]})
    assert_short_error(invoke("collect", "--recipe", str(recipe)), "tasks.jsonl:2", "invalid task record")
    absent = write_yaml(tmp_path / "absent.yaml", {**collect_recipe, "tasks": [{"file": str(tmp_path / "no.jsonl")}]})
    assert_short_error(invoke("collect", "--recipe", str(absent)), "tasks.0.file", "no.jsonl")


def test_sft_recipe_errors_name_the_recipe_and_key(tmp_path: Path) -> None:
    base = yaml.safe_load((ROOT / "recipes/tiny/sft.yaml").read_text())
    typo = write_yaml(tmp_path / "typo.yaml", {**base, "learnin_rate": 1e-3})
    assert_short_error(invoke("sft", "--recipe", str(typo)), "typo.yaml", "learnin_rate", "learning_rate?")
    wrong = write_yaml(tmp_path / "wrong.yaml", {**base, "max_steps": "lots"})
    assert_short_error(invoke("sft", "--recipe", str(wrong)), "wrong.yaml: max_steps", "invalid int value")
    flag = invoke("sft", "--recipe", str(ROOT / "recipes/tiny/sft.yaml"), "--max_stepz", "3")
    assert_short_error(flag, "--max_stepz", "--max_steps?")


def test_grpo_recipe_errors_name_the_recipe_and_key(tmp_path: Path) -> None:
    base = yaml.safe_load((ROOT / "recipes/tiny/grpo.yaml").read_text())
    typo = write_yaml(tmp_path / "typo.yaml", {**base, "num_episodes_per_tsk": 4})
    assert_short_error(invoke("grpo", "--recipe", str(typo)), "typo.yaml", "num_episodes_per_tsk")
    wrong = write_yaml(tmp_path / "wrong.yaml", {**base, "beta": "a little"})
    assert_short_error(invoke("grpo", "--recipe", str(wrong)), "wrong.yaml: beta", "invalid float value")


def test_module_entry_point_gives_the_same_short_error(tmp_path: Path) -> None:
    """`accelerate launch -m pipeline.sft` (the README's multi-GPU command and the launchers) starts the module."""
    base = yaml.safe_load((ROOT / "recipes/tiny/sft.yaml").read_text())
    typo = write_yaml(tmp_path / "typo.yaml", {**base, "learnin_rate": 1e-3})
    env = {**os.environ, "PYTHONPATH": str(ROOT), "STATELM_DEBUG": ""}
    run = subprocess.run([sys.executable, "-m", "pipeline.sft", "--config", str(typo)], capture_output=True, text=True,
                         env=env, cwd=tmp_path, timeout=600)  # fmt: skip
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr and "typo.yaml" in run.stderr and "learnin_rate" in run.stderr
    assert len(run.stderr.strip().splitlines()) <= 6, run.stderr


def test_grpo_bad_task_generator_names_recipe_entry_and_field(tiny_model_dir: Path, tmp_path: Path) -> None:
    base = yaml.safe_load((ROOT / "recipes/tiny/grpo.yaml").read_text())
    recipe = write_yaml(
        tmp_path / "g.yaml",
        {**base, "model_name_or_path": str(tiny_model_dir), "output_dir": str(tmp_path / "grpo"),
         "tasks": [{"generator": "needles", "n": 2}]},
    )  # fmt: skip
    assert_short_error(invoke("grpo", "--recipe", str(recipe)), "g.yaml: tasks.0", "generator")


# ------------------------------------------------------------------------------------------------
# Paths and the Hub: fail in one line, before any work, and fast


def test_missing_tokenizer_path_fails_before_the_hub(collect_recipe: dict, tmp_path: Path) -> None:
    folder = write_yaml(tmp_path / "a.yaml", {**collect_recipe, "student_tokenizer": "runs/none/model"})
    assert_short_error(invoke("collect", "--recipe", str(folder)), "student_tokenizer", "runs/none/model")
    assert not (tmp_path / "out").exists()


def test_hub_id_lookalike_offline_fails_at_once(collect_recipe: dict, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    recipe = write_yaml(tmp_path / "a.yaml", {**collect_recipe, "student_tokenizer": "nobody/no-such-model"})
    assert_short_error(invoke("collect", "--recipe", str(recipe)), "student_tokenizer", "HF_HUB_OFFLINE")


def test_sft_missing_model_path_names_the_recipe_key(tmp_path: Path) -> None:
    base = yaml.safe_load((ROOT / "recipes/tiny/sft.yaml").read_text())
    recipe = write_yaml(tmp_path / "s.yaml", {**base, "model_name_or_path": str(tmp_path / "no-model")})
    assert_short_error(invoke("sft", "--recipe", str(recipe)), "s.yaml: model_name_or_path", "no-model")


def test_curate_push_without_a_token_fails_first_and_keeps_the_old_dataset(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    trajectories = tmp_path / "t.jsonl"
    trajectories.write_text("")
    old = tmp_path / "out" / "dataset"
    old.mkdir(parents=True)
    (old / "keep.txt").write_text("an earlier dataset")
    recipe = write_yaml(
        tmp_path / "c.yaml",
        {"inputs": [str(trajectories)], "output_dir": str(tmp_path / "out"), "tokenizer": str(tmp_path)},
    )
    result = invoke("curate", "--recipe", str(recipe), "--push-to-hub", "--hub-id", "me/data", "--no-progress")
    assert_short_error(result, "hub_id", "me/data", "token")
    assert (old / "keep.txt").read_text() == "an earlier dataset"
    assert not (tmp_path / "out" / "report.json").exists()


def _no_network(*args: Any, **kwargs: Any) -> None:
    import requests

    raise requests.exceptions.ConnectionError("[Errno 111] Connection refused")


def test_sft_push_to_hub_without_network_fails_before_training(tiny_model_dir: Path, tmp_path: Path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: "hf_not_checked_offline")
    monkeypatch.setattr("huggingface_hub.HfApi.whoami", _no_network)
    earlier = tmp_path / "sft" / "checkpoint-2"
    earlier.mkdir(parents=True)
    (earlier / "trainer_state.json").write_text("{}")
    sft = ("sft", "--recipe", str(ROOT / "recipes/tiny/sft.yaml"), "--model", str(tiny_model_dir))
    result = invoke(*sft, "--output-dir", str(tmp_path / "sft"), "--push_to_hub", "--hub_model_id", "me/statelm-sft")
    assert_short_error(result, "sft.yaml: push_to_hub", "me/statelm-sft", "cannot be reached", "ConnectionError")
    assert sorted(p.name for p in (tmp_path / "sft").iterdir()) == ["checkpoint-2"]  # nothing trained or removed
    assert (earlier / "trainer_state.json").read_text() == "{}"


def test_curate_push_that_fails_keeps_the_dataset_and_report(
    collect_recipe: dict, tiny_model_dir, tmp_path, monkeypatch
):
    assert (
        invoke("collect", "--recipe", str(write_yaml(tmp_path / "r.yaml", collect_recipe)), "--no-progress").exit_code
        == 0
    )
    monkeypatch.setattr("pipeline.curate.check_hub_push", lambda *a: None)  # the token check passed; the push fails
    monkeypatch.setattr("datasets.Dataset.push_to_hub", _no_network)
    recipe = write_yaml(
        tmp_path / "c.yaml",
        {"inputs": [str(tmp_path / "out" / "trajectories.jsonl")], "output_dir": str(tmp_path / "cur"),
         "tokenizer": str(tiny_model_dir)},
    )  # fmt: skip
    result = invoke("curate", "--recipe", str(recipe), "--push-to-hub", "--hub-id", "me/data", "--no-progress")
    assert_short_error(result, "cannot reach the network service", "Connection refused")
    assert json.loads((tmp_path / "cur" / "report.json").read_text())["hub_id"] == "me/data"
    assert (tmp_path / "cur" / "dataset" / "dataset_info.json").is_file()


# ------------------------------------------------------------------------------------------------
# Endpoints and exit codes a scheduler can use


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again when the block ends: nothing listens


@pytest.fixture
def failing_server() -> Iterator[str]:
    """Up (GET /models answers) but every completion is a 500: episodes fail after the SDK's retries."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._send(200, {"object": "list", "data": []})

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", 0)))
            self._send(500, {"error": {"message": "overloaded"}})

        def _send(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    finally:
        httpd.shutdown()
        httpd.server_close()


def openai_policy(base_url: str) -> dict[str, Any]:
    return {"kind": "openai", "base_url": base_url, "model": "m", "max_retries": 0, "timeout": 5}


def test_dead_endpoint_fails_before_any_episode(collect_recipe: dict, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    recipe = write_yaml(tmp_path / "r.yaml", {**collect_recipe, "policy": openai_policy(url)})
    assert_short_error(invoke("collect", "--recipe", str(recipe)), "policy.base_url", url, "nothing answers")
    assert not (tmp_path / "out").exists()


def test_collect_exits_3_with_counts_when_episodes_fail(collect_recipe: dict, failing_server: str, tmp_path) -> None:
    recipe = write_yaml(tmp_path / "r.yaml", {**collect_recipe, "policy": openai_policy(failing_server)})
    result = invoke("collect", "--recipe", str(recipe), "--no-progress")
    assert result.exit_code == EXIT_EPISODES_FAILED, result.output
    assert "2 of 2 episodes failed" in result.output and "HTTP 500" in result.output
    assert "Traceback" not in result.output
    assert json.loads((tmp_path / "out" / "report.json").read_text())["failed"]  # the report is still written

    tolerant = write_yaml(tmp_path / "t.yaml", {**collect_recipe, "policy": openai_policy(failing_server),
                                                "max_failed_share": 1.0})  # fmt: skip
    assert invoke("collect", "--recipe", str(tolerant), "--no-progress").exit_code == 0


def test_collect_rerun_with_everything_written_exits_0(collect_recipe: dict, tmp_path: Path) -> None:
    recipe = write_yaml(tmp_path / "r.yaml", collect_recipe)
    assert invoke("collect", "--recipe", str(recipe), "--no-progress").exit_code == 0
    written = (tmp_path / "out" / "trajectories.jsonl").read_text()
    again = invoke("collect", "--recipe", str(recipe), "--no-progress")
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "out" / "report.json").read_text())["skipped_existing"] == 2
    assert (tmp_path / "out" / "trajectories.jsonl").read_text() == written


def test_eval_checks_every_model_before_the_first_episode(tiny_model_dir: Path, tmp_path: Path) -> None:
    recipe = write_yaml(
        tmp_path / "e.yaml",
        {
            "output_dir": str(tmp_path / "eval"),
            "student_tokenizer": str(tiny_model_dir),
            "tasks": [NIAH],
            "models": {"good": {"kind": "hf", "model": str(tiny_model_dir)},
                       "gone": {"kind": "hf", "model": str(tmp_path / "gone")}},
            "baselines": ["scripted"],
        },
    )  # fmt: skip
    assert_short_error(invoke("eval", "--recipe", str(recipe)), "models.gone.model", "gone")
    assert not (tmp_path / "eval").exists()  # the scripted baseline never started
    missing = invoke("eval", "--recipe", str(ROOT / "recipes/tiny/eval.yaml"), "--model", str(tmp_path / "ckpt"))
    assert_short_error(missing, "model", "ckpt")


# ------------------------------------------------------------------------------------------------
# The traceback, when asked for


def test_debug_shows_the_real_exception(tmp_path: Path, monkeypatch) -> None:
    missing = str(tmp_path / "nope.yaml")
    result = invoke("--debug", "collect", "--recipe", missing)
    assert result.exit_code == 1 and isinstance(result.exception, FileNotFoundError)
    monkeypatch.setenv("STATELM_DEBUG", "1")
    result = invoke("collect", "--recipe", missing)
    assert isinstance(result.exception, FileNotFoundError)


def test_report_to_a_missing_tracker_names_the_extra(tmp_path: Path, monkeypatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    result = invoke("sft", "--recipe", str(ROOT / "recipes/tiny/sft.yaml"), "--model", str(ROOT / "pipeline"),
                    "--report_to", "tensorboard")  # fmt: skip
    assert_short_error(result, "sft.yaml: report_to: tensorboard", "statelm[tensorboard]")
