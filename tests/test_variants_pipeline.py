"""The Inventory and RLM environments through the whole pipeline on the tiny model (SPEC 2 "Variants", issue 6):
scripted-expert collection -> curate -> SFT (2 steps, in process) -> GRPO (HF generation, in process) -> eval, each
stage driven by the shipped variant recipes with small overrides. Inventory's GRPO run also schedules its streams
with the curriculum (threshold 0: one stage per step) and is resumed from a checkpoint at the saved stage. The
models stay near random, so their episodes end malformed: a bad output is an observation, never a crash.
Every variant recipe parses with the stage's own loader."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from datasets import load_from_disk
from pydantic import TypeAdapter
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipeline import grpo, sft
from pipeline.collect import run_collect
from pipeline.curate import load_curate_recipe, run_curate
from pipeline.data.curriculum import CurriculumConfig
from pipeline.data.trajectory import END_STATES
from pipeline.env.registry import env_config
from pipeline.evaluate import run_eval
from pipeline.settings.recipe import EvalRecipe, GeneratedTasks, TaskFile, load_collect_recipe, load_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
VARIANT_RECIPES = sorted(p.relative_to(RECIPES) for p in RECIPES.glob("*/*.yaml") if p.stem.split("_")[0] in
                         ("inventory", "rlm"))  # fmt: skip

RLM_ENV = {
    "kind": "rlm",
    "max_rounds": 4,
    "max_format_errors": 2,
    "sub_model": {"kind": "scripted_rlm"},
    "max_parallel_sub_calls": 4,
    "sandbox": {"block_timeout_seconds": 20, "memory_mb": 1024},
}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The tiny model's matrices are too small for a second thread to pay off, and two OpenMP threads slow down
    ten-fold when another process holds one of the two cores: one thread keeps this file quick on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def one_end_state_each(figures: dict) -> bool:
    """Logged end-state shares of a GRPO step sum to 1: every episode ended, in exactly one state."""
    return math.isclose(sum(figures[f"episodes/{s}"] for s in END_STATES), 1.0)


def write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def collect(tmp_path: Path, model: Path, tasks: list[dict], policy: str, env: dict) -> dict:
    recipe = {"output_dir": str(tmp_path / "collect"), "student_tokenizer": str(model), "tasks": tasks,
              "policy": {"kind": policy}, "environment": env, "concurrency": 2}  # fmt: skip
    return run_collect(load_collect_recipe(write(tmp_path / "collect.yaml", recipe)), progress=False)


def curate(tmp_path: Path, model: Path, variant: str) -> tuple[dict, object]:
    overrides = {"inputs": [str(tmp_path / "collect" / "trajectories.jsonl")], "output_dir": str(tmp_path / "curate"),
                 "tokenizer": str(model)}  # fmt: skip
    report = run_curate(load_curate_recipe(RECIPES / "tiny" / f"{variant}_curate.yaml", overrides), progress=False)
    return report, load_from_disk(str(tmp_path / "curate" / "dataset"))


def train_sft(tmp_path: Path, model: Path, variant: str) -> Path:
    """2 optimizer steps of the shipped SFT recipe, in process; returns the trained model's folder."""
    out = tmp_path / "sft"
    args = sft.make_parser().parse_args_and_config([
        "--config", str(RECIPES / "tiny" / f"{variant}_sft.yaml"), "--model_name_or_path", str(model),
        "--dataset_path", str(tmp_path / "curate" / "dataset"), "--output_dir", str(out),
        "--max_steps", "2", "--gradient_accumulation_steps", "1", "--save_steps", "2",
    ])  # fmt: skip
    report = sft.main(*args)
    assert report["global_step"] == 2 and len(report["losses"]) == 2
    assert all(math.isfinite(e["loss"]) and e["loss"] > 0 for e in report["losses"])
    trained = AutoModelForCausalLM.from_pretrained(out).state_dict()
    base = AutoModelForCausalLM.from_pretrained(model).state_dict()
    moved = [k for k in base if not torch.equal(trained[k], base[k])]
    assert len(moved) > len(base) // 2, "SFT changed the parameters"
    return out


def run_grpo(recipe: Path, **flags: object) -> dict:
    argv = ["--config", str(recipe), *[str(x) for k, v in flags.items() for x in (f"--{k}", v)]]
    return grpo.main(*grpo.make_parser().parse_args_and_config(argv))


def grpo_recipe(tmp_path: Path, variant: str, model: Path, **fields) -> Path:
    recipe = yaml.safe_load((RECIPES / "tiny" / f"{variant}_grpo.yaml").read_text())
    recipe.update(model_name_or_path=str(model), output_dir=str(tmp_path / "grpo"), num_episodes_per_task=2,
                  max_segments_per_episode=2, save_steps=1, **fields)  # fmt: skip
    recipe["environment"] = {**recipe["environment"], "max_output_tokens": 16}  # the per-turn cap
    return write(tmp_path / "grpo.yaml", recipe)


def logged_steps(output_dir: Path) -> list[dict]:
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    return [e for e in history if "reward" in e]


def evaluate(tmp_path: Path, model: Path, tasks: list[dict], env: dict) -> dict:
    recipe = {"output_dir": str(tmp_path / "eval"), "student_tokenizer": str(model), "tasks": tasks,
              "models": {"trained": {"kind": "hf", "model": str(tmp_path / "grpo"), "temperature": 0.0,
                                     "max_tokens": 16}},
              "baselines": ["scripted"], "environment": {**env, "max_output_tokens": 16}, "concurrency": 2}  # fmt: skip
    return run_eval(load_recipe(EvalRecipe, write(tmp_path / "eval.yaml", recipe)), progress=False)


# -- Inventory --------------------------------------------------------------------------------------------------


def test_inventory_collect_curate_sft_grpo_with_curriculum_and_eval(tiny_model_dir, tmp_path):
    env = {"kind": "inventory", "max_format_errors": 5}
    tasks = [{"generator": "inventory", "n": 3, "n_chunks": 3, "words_per_chunk": 60, "seed": 0}]
    report = collect(tmp_path, tiny_model_dir, tasks, "scripted", env)
    assert report["end_states"] == {"finished": 3} and report["accuracy"] == 1.0

    # Curate: the wipe makes every turn its own row, trained on the turn's whole reply
    report, dataset = curate(tmp_path, tiny_model_dir, "inventory")
    assert report["episodes_kept"] == 3 and report["rows"] == len(dataset) == 9
    assert report["segment_breaks"] == {"start": 3, "edit": 6}
    assert report["actions_after"] == {"inventory": 6, "finish": 3}
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    for row in dataset:
        assert len(row["turns"]) == 1 and row["trained"] == [True]
        start, end = row["spans"][0]
        trained = [i for i, m in enumerate(row["completion_mask"]) if m]
        assert trained == list(range(start, end)) and end == len(row["input_ids"]) - 1  # the reply, its EOS; not "\n"
        reply = tokenizer.decode(row["input_ids"][start:end])
        assert reply.startswith("Inventory: [") and reply.endswith(tokenizer.eos_token)
        assert tokenizer.decode(row["input_ids"][:start]).count("<|im_start|>user") == 1  # nothing but one chunk

    model = train_sft(tmp_path, tiny_model_dir, "inventory")

    # GRPO: threshold 0 moves one stage per step (2 episodes = the window). With 5 format errors allowed, every
    # episode plays every chunk whatever the model writes, so its rounds are the n_chunks of the stage it played.
    stages = [
        {"n_chunks": 2, "words_per_chunk": 30},
        {"n_chunks": 3, "words_per_chunk": 30},
        {"n_chunks": 4, "words_per_chunk": 30},
    ]
    recipe = grpo_recipe(
        tmp_path, "inventory", model, tasks=[{"generator": "inventory", "n": 2, "seed": 10}],
        curriculum={"stages": stages, "window": 2, "threshold": 0.0},
        environment={"kind": "inventory", "max_context_tokens": 32000, "max_rounds": 20, "max_format_errors": 5},
    )  # fmt: skip
    report = run_grpo(recipe, max_steps=2)
    out = tmp_path / "grpo"
    steps = logged_steps(out)
    assert [(e["curriculum/stage"], e["episodes/rounds"]) for e in steps] == [(0, 2.0), (1, 3.0)]
    assert all(one_end_state_each(e) and -1.0 <= e["reward"] <= 1.0 and e["tokens/trained"] > 0 for e in steps)
    assert report["curriculum"]["stage_index"] == 2
    assert report["curriculum"]["history"] == [{"stage": 1, "episode": 2}, {"stage": 2, "episode": 4}]
    assert json.loads((out / "checkpoint-1" / "curriculum.json").read_text())["stage_index"] == 1

    # Resumed with one more step: checkpoint-2's curriculum says stage 2 (4 chunks), not a fresh stage 0
    report = run_grpo(recipe, max_steps=3)
    assert report["resumed_from"].endswith("checkpoint-2") and report["global_step"] == 3
    last = logged_steps(out)[-1]
    assert (last["step"], last["curriculum/stage"], last["episodes/rounds"]) == (3, 2, 4.0)

    # Eval: the expert carries every state; the (near-random) trained model is scored, not crashed
    tasks = [{"generator": "inventory", "n": 2, "n_chunks": 2, "words_per_chunk": 40, "seed": 100}]
    report = evaluate(tmp_path, tiny_model_dir, tasks, env)
    expert, trained = report["systems"]["scripted_expert"], report["systems"]["trained"]
    assert expert["accuracy"] == 1.0 and expert["end_states"] == {"finished": 2}
    assert expert["inventory"]["state_accuracy"] == 1.0 and expert["accuracy_by_task"] == {"inventory": 1.0}
    assert trained["episodes"] == sum(trained["end_states"].values()) == 2 and trained["failed"] == []
    assert 0.0 <= trained["inventory"]["state_accuracy"] <= 1.0 and trained["mean_rounds"] == 2
    assert "inventory state accuracy" in (tmp_path / "eval" / "report.md").read_text()


# -- RLM --------------------------------------------------------------------------------------------------------


def test_rlm_collect_curate_sft_grpo_and_eval_with_repl_statistics(tiny_model_dir, tmp_path):
    tasks = [
        {"generator": "niah", "n": 2, "min_tokens": 1000, "max_tokens": 1500, "seed": 0},
        {"generator": "aggregation", "n": 1, "min_tokens": 1000, "max_tokens": 1500, "seed": 3},
    ]
    report = collect(tmp_path, tiny_model_dir, tasks, "scripted_rlm", RLM_ENV)
    assert report["end_states"] == {"finished": 3} and report["accuracy"] == 1.0

    # Curate: nothing is ever deleted from an RLM context, so each episode is one row training every code block
    report, dataset = curate(tmp_path, tiny_model_dir, "rlm")
    assert report["episodes_kept"] == 3 and report["rows"] == len(dataset) == 3
    assert report["segment_breaks"] == {"start": 3} and set(report["actions_after"]) == {"python", "finish"}
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    for row in dataset:
        assert row["action_types"][-1] == "finish" and all(row["trained"])
        for start, end in row["spans"]:
            assert "```python" in tokenizer.decode(row["input_ids"][start:end])
            assert all(row["completion_mask"][start:end])

    model = train_sft(tmp_path, tiny_model_dir, "rlm")

    # GRPO: a near-random model writes no runnable code (episodes end malformed after 2 turns, or at max_rounds
    # if a block happens to run); whatever it writes, the step scores and trains
    recipe = grpo_recipe(
        tmp_path, "rlm", model, tasks=[{"generator": "niah", "n": 1, "min_tokens": 1000, "max_tokens": 1500}],
        environment={**RLM_ENV, "max_context_tokens": 32000},
    )  # fmt: skip
    report = run_grpo(recipe, max_steps=1)
    (step,) = logged_steps(tmp_path / "grpo")
    assert one_end_state_each(step) and 2.0 <= step["episodes/rounds"] <= 4.0 and step["reward"] <= 0.0
    assert step["tokens/trained"] > 0 and report["global_step"] == 1 and report["curriculum"] is None

    # Eval: the scripted baseline is the RLM expert; REPL and sub-call figures per system
    held_out = [{**tasks[0], "seed": 100}, {**tasks[1], "seed": 101}]
    report = evaluate(tmp_path, tiny_model_dir, held_out, RLM_ENV)
    expert, trained = report["systems"]["scripted_expert"], report["systems"]["trained"]
    assert expert["accuracy"] == 1.0 and expert["end_states"] == {"finished": 3}
    assert expert["tool_calls"]["finish"] == 3 and expert["repl"]["blocks"] == expert["tool_calls"]["python"] + 3
    assert expert["repl"]["sub_calls"] >= 2 and expert["repl"]["sub_call_errors"] == 0
    assert expert["repl"]["block_error_rate"] == 0.0 and expert["repl"]["repl_restarts"] == 0
    assert trained["episodes"] == sum(trained["end_states"].values()) == 3 and trained["failed"] == []
    written = trained["tool_calls"].get("python", 0) + trained["tool_calls"].get("finish", 0)
    assert trained["repl"]["blocks"] <= written  # blocks after a syntax error are written but never run
    assert "REPL blocks / episode" in (tmp_path / "eval" / "report.md").read_text()


# -- recipes ----------------------------------------------------------------------------------------------------


def test_the_variant_recipes_are_all_there():
    names = {str(p) for p in VARIANT_RECIPES}
    for variant in ("inventory", "rlm"):
        for stage in ("teacher", "curate", "sft", "grpo", "eval"):
            assert f"tiny/{variant}_{stage}.yaml" in names
        for stage in ("teacher", "curate", "sft", "grpo"):
            assert f"qwen3-8b/{variant}_{stage}.yaml" in names


@pytest.mark.parametrize("name", VARIANT_RECIPES, ids=str)
def test_variant_recipe_loads(name):
    """Each recipe through its stage's loader (no training). Flags override what a CPU cannot do (bf16)."""
    path = RECIPES / name
    variant, stage = path.stem.split("_", 1)
    if stage == "teacher":
        assert load_collect_recipe(path).environment.kind == variant
    elif stage == "curate":
        recipe = load_curate_recipe(path)
        assert recipe.inputs and all(f"{variant}_collect" in i for i in recipe.inputs)
    elif stage == "sft":
        script_args, training_args, _ = sft.make_parser().parse_args_and_config(
            ["--config", str(path), "--bf16", "false"]
        )
        assert f"{variant}_curate" in script_args.dataset_path and f"{variant}_sft" in training_args.output_dir
    elif stage == "grpo":
        script_args, training_args, model_args = grpo.make_parser().parse_args_and_config(
            ["--config", str(path), "--bf16", "false"]
        )
        assert env_config(training_args.environment).kind == variant
        sources = TypeAdapter(list[GeneratedTasks | TaskFile]).validate_python(script_args.tasks)
        assert sources and f"{variant}_sft" in model_args.model_name_or_path
        if variant == "inventory":
            assert {s.generator for s in sources} == {"inventory"}
            assert len(CurriculumConfig.model_validate(training_args.curriculum).stages) >= 3
    else:
        recipe = load_recipe(EvalRecipe, path)
        assert recipe.environment.kind == variant and recipe.baselines == ["scripted"]
