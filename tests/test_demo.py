"""`statelm demo --quick` end to end, as the README runs it: every stage ran and the figures are consistent.

Learning quality is not asserted here (the quick profile trains for a few steps); the full demo's figures go in
the README. What a user relies on is checked: the stages ran in order through their recipes, held-out tasks were
not trained on, the report's numbers add up, and summary.md's pictures exist.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.demo import PROFILES, SAMPLED, STAGES, SYSTEMS, write_recipes
from pipeline.settings.demo_recipes import DEMO_RECIPES, load_profile

QUICK = PROFILES["quick"]
EXPECTED_QUICK_RECIPES = Path(__file__).parent / "fixtures" / "demo_quick_recipes.yaml"


def test_quick_recipes_resolve_to_the_checked_in_ones(tmp_path):
    """recipes/demo/ merged with quick.yaml, paths filled in: the recipes the quick demo has always run."""
    paths, float32 = write_recipes(tmp_path, QUICK)
    assert float32 == {}  # the quick profile asks for no bf16, so no CPU changes it
    written = {name: yaml.safe_load(path.read_text().replace(str(tmp_path), "<out>")) for name, path in paths.items()}
    assert written == yaml.safe_load(EXPECTED_QUICK_RECIPES.read_text())
    assert all(path.read_text().startswith(f"# statelm demo (quick): stage {name}\n") for name, path in paths.items())


def test_full_profile_differs_from_quick_only_where_quick_yaml_says():
    full = PROFILES["full"]
    assert full.base == "smollm2" and QUICK.base == "tiny" and QUICK.tiny_model["hidden_size"] == 64
    assert full.recipes["sft"]["use_cpu"] and "use_cpu" not in QUICK.recipes["sft"]  # null removes a key
    assert full.recipes["grpo"]["trainable_layers"] == 12 and "trainable_layers" not in QUICK.recipes["grpo"]
    assert len(full.recipes["eval"]["tasks"]) == 2 and len(QUICK.recipes["eval"]["tasks"]) == 1  # lists replace
    assert full.recipes["eval"]["models"]["sft_t1"]["max_input_tokens"] == 2048  # mappings merge key by key
    assert QUICK.recipes["eval"]["models"]["sft_t1"] == {**full.recipes["eval"]["models"]["sft_t1"],
                                                         "dtype": "auto", "samples": 1}  # fmt: skip
    for profile in (full, QUICK):  # env.yaml: every stage that plays one plays the same environment
        environments = [profile.recipes[s]["environment"] for s in ("teacher", "curate", "grpo", "eval")]
        assert all(e == environments[0] for e in environments)


def test_training_inputs_as_long_as_the_long_held_out_split_are_refused(tmp_path):
    """The 4K-32K split measures inputs longer than any training input: a demo.yaml that trains on 4K is an error."""
    folder = tmp_path / "recipes"
    shutil.copytree(DEMO_RECIPES, folder)
    demo = yaml.safe_load((folder / "demo.yaml").read_text())
    (folder / "demo.yaml").write_text(yaml.safe_dump({**demo, "max_tokens": 4000}))
    with pytest.raises(ValueError, match=r"demo.yaml: max_tokens \(4000\) must be below 4000"):
        load_profile("full", folder)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> tuple[Path, dict, str]:
    out = tmp_path_factory.mktemp("demo") / "run"
    statelm = Path(sys.executable).parent / "statelm"
    done = subprocess.run(
        [str(statelm), "demo", "--quick", "--out", str(out)], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out, json.loads((out / "summary.json").read_text()), done.stdout


def test_every_stage_ran_in_order_and_printed_its_progress(demo_run):
    out, summary, stdout = demo_run
    assert list(summary["seconds"]) == list(STAGES)
    positions = [stdout.find(f"{i + 1}/{len(STAGES)} {name}") for i, name in enumerate(STAGES)]
    assert all(p >= 0 for p in positions) and positions == sorted(positions), positions
    assert math.isclose(summary["total_seconds"], sum(summary["seconds"].values()), abs_tol=0.5)
    for name in ("teacher", "curate", "sft", "grpo", "eval"):
        assert yaml.safe_load((out / "recipes" / f"{name}.yaml").read_text()), name


def test_held_out_tasks_are_not_training_tasks(demo_run):
    out, summary, _ = demo_run
    assert summary["tasks"] == {"train": QUICK.train_tasks, "grpo": QUICK.grpo_tasks,
                                "heldout": QUICK.heldout_short + QUICK.heldout_long, "external": 0,
                                "overlap": 0}  # fmt: skip
    read = [
        [json.loads(line) for line in (out / "tasks" / f"{name}.jsonl").read_text().splitlines()]
        for name in ("train", "grpo", "heldout")
    ]
    train, grpo, heldout = ({(t["question"], json.dumps(t["answer"])) for t in tasks} for tasks in read)
    assert not (train | grpo) & heldout


def recipe(out: Path, stage: str) -> dict:
    """The recipe the demo ran the stage with."""
    return yaml.safe_load((out / "recipes" / f"{stage}.yaml").read_text())


def test_stage_figures_add_up(demo_run):
    out, summary, _ = demo_run
    collect, curate, sft, grpo = (summary[k] for k in ("collect", "curate", "sft", "grpo"))
    sft_steps, grpo_recipe = recipe(out, "sft")["max_steps"], recipe(out, "grpo")
    assert collect["episodes"] == QUICK.train_tasks and collect["accuracy"] == 1.0  # the scripted teacher
    assert curate["episodes_in"] == collect["episodes"] >= curate["episodes_kept"] > 0
    assert 0 < curate["trained_tokens"] < curate["tokens"] and curate["rows"] >= curate["episodes_kept"]
    assert sft["steps"] == sft_steps and math.isfinite(sft["first_loss"]) and math.isfinite(sft["last_loss"])
    assert grpo["steps"] == grpo_recipe["max_steps"] and len(grpo["rewards"]) == grpo_recipe["max_steps"]
    assert grpo["episodes_per_step"] == grpo_recipe["num_episodes_per_task"] * grpo_recipe["tasks_per_generation"]
    assert 0.0 <= grpo["groups_with_spread"] <= 1.0
    assert all(math.isfinite(r) and r <= 1.0 for r in grpo["rewards"])  # format errors can cost more than -1


def test_eval_covers_every_system_on_every_held_out_task(demo_run):
    out, summary, _ = demo_run
    systems, models = summary["eval"]["systems"], recipe(out, "eval")["models"]
    assert set(systems) == {*SYSTEMS, *SAMPLED, "scripted_expert", "no_tools"}
    for name, s in systems.items():
        if name in SAMPLED:  # sampled systems play the short split only, each task eval_samples times
            assert s["episodes"] == QUICK.heldout_short * models[name]["samples"], name
        else:
            assert s["episodes"] == summary["tasks"]["heldout"], name
        assert 0.0 <= s["accuracy"] <= 1.0
        if name != "no_tools":
            assert 0.0 <= s["well_formed_finish_rate"] <= s["finish_rate"] <= 1.0
            assert s["accuracy"] <= s["finish_rate"]  # only a finished episode can be correct
            assert -1.0 <= s["mean_reward"] <= 1.0 and s["mean_context_tokens"] > 0
    assert systems["scripted_expert"]["accuracy"] == 1.0  # the upper bound solves held-out tasks
    for name in SYSTEMS:  # every model is also scored turn by turn on the expert's held-out episodes
        imitation = systems[name]["imitation"]
        assert imitation["turns"] >= 8 * summary["tasks"]["heldout"]  # at least 8 expert turns per episode
        assert 0.0 <= imitation["exact_turn_rate"] <= 1.0 and 0.0 <= imitation["token_accuracy"] <= 1.0
    splits = summary["splits"]
    assert splits["scripted_expert"]["short"] == splits["scripted_expert"]["long"] == 1.0
    for name in (*SYSTEMS, *SAMPLED):  # the split figures are the systems' own episodes, regrouped
        assert splits[name]["episodes"] == systems[name]["episodes"]
        assert splits[name]["heldout"] == systems[name]["accuracy"]
    targets = summary["targets"]
    assert targets["sft_short_accuracy_at_least_0.9"] == (splits["sft"]["short"] >= 0.9)
    assert targets["grpo_greedy_accuracy_not_below_sft"] == (splits["grpo"]["heldout"] >= splits["sft"]["heldout"])
    assert targets["whole_demo_within_30_minutes"] == (summary["total_seconds"] <= 1800)


def test_summary_markdown_embeds_pictures_that_exist(demo_run):
    out, _, _ = demo_run
    markdown = (out / "summary.md").read_text()
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert "training.png" in pictures and any("sawtooth" in p for p in pictures)
    for picture in pictures:
        assert (out / picture).stat().st_size > 1000, picture
    for name in SYSTEMS:
        assert f"| {name} |" in markdown
