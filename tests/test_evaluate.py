"""`statelm eval`: report figures, baselines and plots on the tiny model."""

from __future__ import annotations

import json

import yaml
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.evaluate import length_bucket


def test_length_buckets():
    assert [length_bucket(n) for n in (500, 2000, 2001, 40_000, 3_000_000)] == [
        "<=2K",
        "<=2K",
        "2K-8K",
        "32K-128K",
        ">512K",
    ]


def test_eval_reports_model_and_baselines_with_plots(tiny_model_dir, tmp_path):
    recipe = {
        "output_dir": str(tmp_path / "eval"),
        "tasks": [
            {"generator": "niah", "n": 2, "min_tokens": 1000, "max_tokens": 1500, "seed": 100},
            {"generator": "multihop", "n": 1, "min_tokens": 3000, "max_tokens": 3000, "seed": 101},
        ],
        "models": {"random": {"kind": "hf", "model": str(tiny_model_dir), "temperature": 0.0, "max_tokens": 16}},
        "baselines": ["scripted", "no_tools"],
        "no_tools_max_tokens": 2600,
        "no_tools_max_output_tokens": 8,
        "env": {"max_rounds": 14},
    }
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump(recipe))
    result = CliRunner().invoke(app, ["eval", "--recipe", str(tmp_path / "eval.yaml"), "--no-progress"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    systems = report["systems"]
    assert set(systems) == {"random", "scripted_expert", "no_tools"}
    assert systems["scripted_expert"]["accuracy"] == 1.0
    assert systems["scripted_expert"]["accuracy_by_task"] == {"niah": 1.0, "multihop": 1.0}
    assert systems["random"]["episodes"] == 3 and systems["random"]["accuracy"] == 0.0
    assert set(systems["random"]["end_states"]) <= {"malformed", "max_rounds", "over_budget"}
    assert systems["no_tools"]["episodes"] == 3 and systems["no_tools"]["fits"] == 2  # the 3K input does not fit
    for name in ("accuracy_by_length.png", "sawtooth_random.png", "sawtooth_scripted_expert.png"):
        data = (tmp_path / "eval" / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 10_000
    markdown = (tmp_path / "eval" / "report.md").read_text()
    assert "| scripted_expert | 100% |" in markdown and "![sawtooth scripted_expert]" in markdown
