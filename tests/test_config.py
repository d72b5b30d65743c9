"""One override syntax for every stage (pipeline/settings/config.py): flags, nested keys, shared env file, --help."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.curate import load_curate_recipe
from pipeline.settings.config import load_recipe, parse_overrides
from pipeline.settings.errors import RecipeError
from pipeline.settings.recipe import CollectRecipe, EvalRecipe

ROOT = Path(__file__).resolve().parent.parent
TEACHER = ROOT / "recipes/tiny/teacher.yaml"


def test_flags_become_dotted_overrides():
    args = ["--recipe", "r.yaml", "--environment.search_top_k", "5", "--policy.temperature=1.0", "--output-dir", "o"]
    args += ["--input", "a", "--input", "b", "--push-to-hub", "--tasks", "[{file: t.jsonl}]"]
    config, overrides, rest = parse_overrides(args)
    assert config == "r.yaml" and rest == []
    assert overrides == {
        "environment.search_top_k": 5,
        "policy.temperature": 1.0,
        "output_dir": "o",
        "input": ["a", "b"],
        "push_to_hub": True,
        "tasks": [{"file": "t.jsonl"}],
    }


def test_shared_env_file_gives_every_stage_the_same_environment():
    teacher = load_recipe(CollectRecipe, ROOT / "recipes/qwen3-8b/teacher.yaml")
    evaluation = load_recipe(EvalRecipe, ROOT / "recipes/qwen3-8b/eval.yaml")
    curate = load_curate_recipe(ROOT / "recipes/qwen3-8b/curate.yaml")
    assert teacher.environment == evaluation.environment == curate.environment
    assert teacher.environment.max_output_tokens == 2048 and curate.max_rounds == 150
    assert teacher.policy.max_tokens == 8192  # the teacher's own cap (thinking) stays on its policy
    assert evaluation.models["statelm-8b"].max_tokens == 2048  # the student's: the environment's


def test_nested_override_is_validated_and_names_the_flag(tmp_path):
    recipe = load_recipe(CollectRecipe, TEACHER, {"environment.search_top_k": 5})
    assert recipe.environment.search_top_k == 5 and recipe.environment.max_rounds == 150
    with pytest.raises(RecipeError, match=r"teacher.yaml.*environment.search_top_k \(flag --environment.search_top_k"):
        load_recipe(CollectRecipe, TEACHER, {"environment.search_top_k": "many"})
    with pytest.raises(RecipeError, match=r"concurency.*did you mean concurrency"):
        load_recipe(CollectRecipe, TEACHER, {"concurency": 2})
    missing = tmp_path / "r.yaml"
    missing.write_text(yaml.safe_dump({**yaml.safe_load(TEACHER.read_text()), "environment": "nope.yaml"}))
    with pytest.raises(RecipeError, match="environment file not found"):
        load_recipe(CollectRecipe, missing)


@pytest.mark.parametrize(
    ("stage", "field"),
    [
        ("collect", "--policy.temperature"),
        ("curate", "--balance.max_share"),
        ("eval", "--environment.max_rounds"),
        ("sft", "--learning_rate"),
        ("grpo", "--environment.max_output_tokens"),
    ],
)
def test_help_lists_every_field(stage, field):
    result = CliRunner().invoke(app, [stage, "--help"])
    assert result.exit_code == 0, result.output
    assert field in result.output


def test_missing_config_is_a_usage_error():
    for stage in ("collect", "sft"):
        result = CliRunner().invoke(app, [stage])
        assert result.exit_code == 2 and "missing --config" in result.output


def test_grpo_per_turn_cap_is_set_only_in_the_environment(tmp_path):
    recipe = yaml.safe_load((ROOT / "recipes/tiny/grpo.yaml").read_text())
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({**recipe, "max_completion_length": 8}))
    result = CliRunner().invoke(app, ["grpo", "--config", str(path)])
    assert result.exit_code == 1 and "set environment.max_output_tokens instead" in result.output


def test_grpo_environment_given_whole_on_the_command_line_says_how_to_set_a_field():
    result = CliRunner().invoke(app, ["grpo", "--config", str(ROOT / "recipes/tiny/grpo.yaml"),
                                      "--environment", '{"max_rounds": 2}'])  # fmt: skip
    assert result.exit_code == 1 and "set one field with --environment.<field> value" in result.output
    assert "Traceback" not in result.output


def test_grpo_config_built_in_code_follows_the_environment_cap_or_says_why_not(tmp_path):
    from pipeline.training.grpo_config import StateLMGRPOConfig

    common = {"output_dir": str(tmp_path), "num_episodes_per_task": 2, "max_segments_per_episode": 1,
              "per_device_train_batch_size": 2, "report_to": "none", "use_cpu": True}  # fmt: skip
    config = StateLMGRPOConfig(**common, environment={"max_output_tokens": 96})
    assert config.max_completion_length == 96
    assert StateLMGRPOConfig(**common, environment={"max_output_tokens": 96}, max_completion_length=96)
    with pytest.raises(ValueError, match="per-turn cap once, as environment"):
        StateLMGRPOConfig(**common, environment={"max_output_tokens": 96}, max_completion_length=64)
