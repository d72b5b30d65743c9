"""Curation (pipeline/curate.py, pipeline/data/balance.py, `statelm curate`): reject sampling with counted reasons,
corrupt lines skipped with file:line, action-type balancing, and a dataset the SFT stage accepts."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.collect import run_collect
from pipeline.curate import CurateRecipe, load_curate_recipe, run_curate
from pipeline.data.balance import balance_turns, keep_counts
from pipeline.data.reject import rejection_reasons
from pipeline.data.trajectory import Trajectory
from pipeline.data.trajectory_files import iter_trajectories
from pipeline.settings.curate_recipe import FilterConfig
from pipeline.settings.recipe import CollectRecipe

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def collected(tiny_model_dir, tmp_path_factory) -> Path:
    """Scripted-expert trajectories from the real environment (all finished and correct)."""
    out = tmp_path_factory.mktemp("collect")
    recipe = CollectRecipe(
        output_dir=str(out),
        student_tokenizer=str(tiny_model_dir),
        tasks=[
            {"generator": "niah", "n": 3, "min_tokens": 600, "max_tokens": 1500, "n_needles": 1, "seed": 0},
            {"generator": "niah", "n": 1, "min_tokens": 1500, "max_tokens": 1500, "n_needles": 2, "seed": 1},
            {"generator": "multihop", "n": 1, "min_tokens": 1200, "max_tokens": 1200, "seed": 2},
        ],
        policy={"kind": "scripted"},
        concurrency=2,
    )
    run_collect(recipe, progress=False)
    path = out / "trajectories.jsonl"
    assert all(t.end_state == "finished" and t.correct for t in iter_trajectories(path))
    return path


def recipe_for(inputs: list[Path], out: Path, tokenizer: Path, **fields) -> CurateRecipe:
    return CurateRecipe(inputs=[str(p) for p in inputs], output_dir=str(out), tokenizer=str(tokenizer), **fields)


def variant(traj: Trajectory, episode_id: str, **changes) -> Trajectory:
    return traj.model_copy(deep=True, update={"episode_id": episode_id, **changes})


# ------------------------------------------------------------------------------------------------
# (e) reject sampling: every reason counted; bad lines skipped with file:line, and the run goes on


def test_rejection_reasons_counted_and_bad_lines_skipped(collected, tiny_model_dir, tmp_path, caplog):
    good = list(iter_trajectories(collected))
    base = good[0]
    over_context = variant(base, "over-context")
    over_context.turns[2].context_tokens_after = 40_000
    broken_reference = variant(base, "broken-reference")
    broken_reference.turns[1].assistant = 0  # the system message
    truncated = variant(base, "truncated")  # a teacher turn cut at max_tokens, even if the episode recovered
    truncated.turns[1].finish_reason, truncated.turns[1].error = "length", "truncated"
    variants = [
        truncated,
        variant(base, "over-budget", end_state="over_budget", correct=False),
        variant(base, "max-rounds", end_state="max_rounds", correct=False),
        variant(base, "wrong", correct=False),
        variant(base, "format-errors", format_errors=1),
        over_context,
        variant(base, "too-many-rounds", rounds=151),
        variant(base, "no-turns", turns=[]),
        broken_reference,
        base,  # the same episode id again
    ]
    lines = [t.model_dump_json() for t in [*good, *variants]]
    missing_field = json.loads(lines[0])
    del missing_field["task_id"]
    lines.insert(2, '{"episode_id": "cut-off", "turns": [')  # line 3: a truncated write
    lines.insert(4, json.dumps(missing_field))  # line 5: valid JSON, not a trajectory
    lines.append("\x00\x01 not json")
    path = tmp_path / "trajectories.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    with caplog.at_level("WARNING"):
        report = run_curate(recipe_for([path], tmp_path / "out", tiny_model_dir), progress=False)

    assert report["episodes_in"] == len(good) + len(variants) - 1
    assert report["episodes_kept"] == len(good)
    assert report["rejections"] == {
        "corrupt_line": 3,
        "incorrect": 3,
        "end_state:over_budget": 1,
        "end_state:max_rounds": 1,
        "format_errors": 1,
        "truncated": 1,
        "over_context_budget": 1,
        "over_round_budget": 1,
        "no_turns": 1,
        "invalid_record": 1,
        "duplicate_episode": 1,
    }
    skipped = report["skipped_lines"]
    assert skipped[0].startswith(f"{path}:3: ") and skipped[1].startswith(f"{path}:5: task_id: ")
    assert skipped[2].startswith(f"{path}:{len(lines)}: ")
    assert "episode 'broken-reference' turn 1: turns.1.assistant=0 is not an assistant message" in str(
        report["invalid_episodes"]
    )
    assert f"{path}:3:" in caplog.text, "skipped lines are logged as they are found"
    assert Path(report["dataset"]).is_dir()
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["rejections"] == report["rejections"]

    # max_format_errors is configurable
    report = run_curate(
        recipe_for([path], tmp_path / "out", tiny_model_dir, filters={"max_format_errors": 1}), progress=False
    )
    assert "format_errors" not in report["rejections"] and report["episodes_kept"] == len(good) + 1


def test_missing_input_file_names_the_path(tiny_model_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"trajectory file not found: .*nowhere\.jsonl"):
        run_curate(recipe_for([tmp_path / "nowhere.jsonl"], tmp_path / "out", tiny_model_dir), progress=False)


def test_recipe_errors_name_the_file_and_field(tmp_path):
    bad = tmp_path / "curate.yaml"
    bad.write_text("inputs: [a.jsonl]\noutput_dir: out\ntokenizer: tok\nbalance: {max_sharee: 0.3}\n")
    with pytest.raises(ValueError, match=r"curate.yaml: invalid recipe: balance.max_sharee: Extra inputs"):
        load_curate_recipe(bad)
    recipe = load_curate_recipe(ROOT / "recipes/tiny/curate.yaml", {"balance.max_share": 0.5, "seed": None})
    assert recipe.balance.max_share == 0.5 and recipe.balance.max_share_by_type == {"deleteContext": 0.35}
    assert load_curate_recipe(ROOT / "recipes/qwen3-8b/curate.yaml").tokenizer == "Qwen/Qwen3-8B"


# ------------------------------------------------------------------------------------------------
# (f) action-type balancing


def synthetic_turns() -> list[tuple[str, int, str]]:
    counts = {"deleteContext": 100, "readChunk": 60, "note": 30, "finish": 9, "checkBudget": 1}
    actions = [a for a, n in counts.items() for _ in range(n)]
    return [(f"ep{i // 10}", i % 10, action) for i, action in enumerate(actions)]


def test_balancing_caps_delete_keeps_rare_types_and_is_seeded():
    turns = synthetic_turns()
    masked = balance_turns(turns, caps={"deleteContext": 0.35}, seed=0)
    kept = Counter(action for e, i, action in turns if (e, i) not in masked)
    assert kept["deleteContext"] / sum(kept.values()) <= 0.35
    assert kept["deleteContext"] == 53, "the most turns the cap allows: 53 / 153 <= 0.35 < 54 / 154"
    assert {a: n for a, n in kept.items() if a != "deleteContext"} == {
        "readChunk": 60, "note": 30, "finish": 9, "checkBudget": 1,
    }  # fmt: skip
    assert all(action == "deleteContext" for e, i, action in turns if (e, i) in masked)

    assert balance_turns(turns, caps={"deleteContext": 0.35}, seed=0) == masked, "same seed, same turns"
    shuffled = random.Random(1).sample(turns, len(turns))
    assert balance_turns(shuffled, caps={"deleteContext": 0.35}, seed=0) == masked, "input order does not matter"
    assert balance_turns(turns, caps={"deleteContext": 0.35}, seed=1) != masked, "another seed, other turns"


def test_share_caps_hold_on_the_final_counts():
    assert keep_counts({"a": 10, "b": 10, "c": 1}, max_share=0.4) == {"a": 2, "b": 2, "c": 1}
    assert keep_counts({"deleteContext": 5, "readChunk": 95}, caps={"deleteContext": 0.35}) == {
        "deleteContext": 5, "readChunk": 95,
    }  # fmt: skip
    with pytest.raises(ValueError, match="cannot hold"):
        keep_counts({"deleteContext": 3}, caps={"deleteContext": 0.35})
    with pytest.raises(ValueError, match="between 0 and 1"):
        keep_counts({"a": 1}, max_share=1.5)


def test_balancing_masks_turns_in_the_dataset_but_keeps_them_in_context(collected, tiny_model_dir, tmp_path):
    from datasets import load_from_disk

    recipe = recipe_for([collected], tmp_path, tiny_model_dir, balance={"max_share_by_type": {"deleteContext": 0.1}})
    report = run_curate(recipe, progress=False)
    before, after = report["actions_before"], report["actions_after"]
    assert before["deleteContext"] / sum(before.values()) > 0.1 >= after["deleteContext"] / sum(after.values())
    assert {a: n for a, n in after.items() if a != "deleteContext"} == {
        a: n for a, n in before.items() if a != "deleteContext"
    }
    assert report["masked_by_balancing"] == before["deleteContext"] - after["deleteContext"]

    rows = load_from_disk(report["dataset"])
    trained = Counter(a for r in rows for a, t in zip(r["action_types"], r["trained"], strict=True) if t)
    assert dict(trained) == {a: n for a, n in after.items() if n}
    # A masked deleteContext turn is still context: the row of the next turn shows it, with mask 0
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    episodes = {t.episode_id: t for t in iter_trajectories(collected)}
    trained_turns = {(r["episode_id"], t) for r in rows for t, ok in zip(r["turns"], r["trained"], strict=True) if ok}
    masked = [
        (e, t.index) for e, traj in episodes.items() for t in traj.turns
        if t.action == "deleteContext" and (e, t.index) not in trained_turns
    ]  # fmt: skip
    assert len(masked) == report["masked_by_balancing"] > 0
    for episode_id, index in masked:
        traj = episodes[episode_id]
        row = next(r for r in rows if r["episode_id"] == episode_id and index + 1 in r["turns"])
        start = row["spans"][row["turns"].index(index + 1)][0]
        prompt = tokenizer.decode(row["input_ids"][:start])
        assert traj.messages[traj.turns[index].assistant].content in prompt
    assert report == run_curate(recipe, progress=False) | {"seconds": report["seconds"]}, "deterministic"


# ------------------------------------------------------------------------------------------------
# (g) `statelm curate` end to end: a dataset the SFT stage loads and trains on assistant tokens only


def test_statelm_curate_end_to_end(collected, tiny_model_dir, tmp_path):
    from pipeline.data.sft_data import load_sft_dataset
    from pipeline.sft import build_trainer, make_parser

    recipe = yaml.safe_load((ROOT / "recipes/tiny/curate.yaml").read_text())
    recipe_path = tmp_path / "curate.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "curate"
    args = ["curate", "--recipe", str(recipe_path), "--input", str(collected), "--output-dir", str(out)]
    result = CliRunner().invoke(app, [*args, "--tokenizer", str(tiny_model_dir), "--no-progress"])
    assert result.exit_code == 0, result.output
    for shown in ("curate report", "rejections", "deleteContext", "tokens as per-turn snapshots"):
        assert shown in result.output

    report = json.loads((out / "report.json").read_text())
    assert report["episodes_kept"] == report["episodes_in"] == 5 and report["rejections"] == {}
    assert report["tokens"] < report["snapshot_tokens"], "runs without edits share their prefix"
    assert report["rows"] < report["snapshot_rows"] == report["trained_turns"]
    assert report["prompt_token_mismatches"] == 0, "rows render exactly what the policy saw"
    for key in ("trained_tokens", "actions_before", "actions_after", "segment_breaks"):
        assert report[key]

    # The rows: the SFT contract, and masks on exactly the trained assistant texts + EOS
    dataset = load_sft_dataset(str(out / "dataset"))
    assert len(dataset) == report["rows"]
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    episodes = {t.episode_id: t for t in iter_trajectories(collected)}
    for row in load_from_disk(str(out / "dataset")):
        assert set(row) >= {"input_ids", "completion_mask", "episode_id", "turns", "action_types"}
        traj = episodes[row["episode_id"]]
        expected = "".join(
            traj.messages[traj.turns[t].assistant].content + "<|im_end|>"
            for t, trained in zip(row["turns"], row["trained"], strict=True)
            if trained
        )
        masked = [i for i, m in zip(row["input_ids"], row["completion_mask"], strict=True) if m]
        assert tokenizer.decode(masked) == expected

    # SFTTrainer takes it: labels are the input ids exactly where the mask is 1
    script_args, training_args, model_args = make_parser().parse_args_and_config(
        ["--config", str(ROOT / "recipes/tiny/sft.yaml"), "--model_name_or_path", str(tiny_model_dir),
         "--dataset_path", str(out / "dataset"), "--output_dir", str(tmp_path / "sft"), "--max_length", "8192"]
    )  # fmt: skip
    trainer, data_report = build_trainer(script_args, training_args, model_args)
    assert data_report["trained_tokens"] == report["trained_tokens"]
    assert len(trainer.train_dataset) == len(dataset), "no row is fully masked"
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    for k in range(2):
        ids, mask = dataset[k]["input_ids"], dataset[k]["completion_mask"]
        assert batch["input_ids"][k, : len(ids)].tolist() == ids
        assert batch["labels"][k, : len(ids)].tolist() == [i if m else -100 for i, m in zip(ids, mask, strict=True)]


# ------------------------------------------------------------------------------------------------
# Turns the policy marked untrained (Action.trained=False): context with mask 0, counted in the report


def collect_scripted(tmp_path: Path, tiny_model_dir: Path, **policy) -> Path:
    """Two scripted episodes over short NIAH inputs, the expert's options as given; the trajectory file."""
    recipe = CollectRecipe(
        output_dir=str(tmp_path / "collect"),
        student_tokenizer=str(tiny_model_dir),
        tasks=[{"generator": "niah", "n": 2, "min_tokens": 800, "max_tokens": 1200, "seed": 3, "templates": "train"}],
        policy={"kind": "scripted", "chunk_size": 300, **policy},
        concurrency=2,
    )
    run_collect(recipe, progress=False)
    return tmp_path / "collect" / "trajectories.jsonl"


def test_recovery_episodes_keep_the_failed_search_as_context_with_mask_0(tiny_model_dir, tmp_path):
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    path = collect_scripted(tmp_path, tiny_model_dir, recovery_share=1.0)
    episodes = {t.episode_id: t for t in iter_trajectories(path)}
    failed = {(e, t.index) for e, traj in episodes.items() for t in traj.turns if not t.trained}
    assert len(failed) == 2 and all(traj.correct for traj in episodes.values())
    assert all(episodes[e].turns[i].action == "searchEngine" for e, i in failed)

    report = run_curate(recipe_for([path], tmp_path / "curate", tiny_model_dir), progress=False)
    assert report["masked_by_policy"] == 2 and report["masked_by_balancing"] == 0
    assert report["actions_before"]["searchEngine"] == sum(
        t.action == "searchEngine" and t.trained for traj in episodes.values() for t in traj.turns
    )
    rows = load_from_disk(report["dataset"])
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    for episode_id, index in failed:
        assert not any(
            ok
            for r in rows
            if r["episode_id"] == episode_id
            for t, ok in zip(r["turns"], r["trained"], strict=True)
            if t == index
        )
        row = next(r for r in rows if r["episode_id"] == episode_id and index + 1 in r["turns"])
        position = row["turns"].index(index + 1)
        assert row["trained"][position], "the recovery search is trained"
        failed_text = episodes[episode_id].messages[episodes[episode_id].turns[index].assistant].content
        assert failed_text in tokenizer.decode(row["input_ids"][: row["spans"][position][0]])
        trained_text = tokenizer.decode([i for i, m in zip(row["input_ids"], row["completion_mask"], strict=True) if m])
        assert failed_text not in trained_text


def test_a_rehearsed_failed_note_neither_rejects_its_episode_nor_is_trained(tiny_model_dir, tmp_path):
    """Reject sampling leaves out the format errors of untrained turns: the teacher's deliberate key-only note
    (untrained) must not cost the episode that teaches the retry, and a student error still does."""
    path = collect_scripted(tmp_path, tiny_model_dir, note_retry_share=1.0)
    episodes = list(iter_trajectories(path))
    assert all(t.correct and t.format_errors == 1 for t in episodes)
    report = run_curate(recipe_for([path], tmp_path / "curate", tiny_model_dir), progress=False)
    assert report["episodes_kept"] == 2 and report["masked_by_policy"] == 2
    trained_error = variant(episodes[0], "trained-error", format_errors=2)  # and one error of the student's own
    trained_error.turns[0].format_errors = 1
    assert rejection_reasons(trained_error, FilterConfig()) == ["format_errors"]


def test_trajectory_records_without_trained_still_load(collected):
    line = json.loads(collected.read_text().splitlines()[0])
    for turn in line["turns"]:
        del turn["trained"]
    old = Trajectory.model_validate(line)
    assert old.turns and all(turn.trained for turn in old.turns)


def test_the_dataset_does_not_depend_on_the_order_episodes_were_written(collected, tiny_model_dir, tmp_path):
    """Concurrent collection writes episodes as they end, so two runs list them in other orders; the rows (and so
    SFT's seeded shuffle of them) must not follow: they come in episode-id order, each episode's segments in order."""
    from datasets import load_from_disk

    lines = collected.read_text().splitlines(keepends=True)
    assert len(lines) > 2
    reordered = tmp_path / "reordered.jsonl"
    reordered.write_text("".join(lines[1:][::-1] + lines[:1]))
    datasets = []
    for name, path in (("a", collected), ("b", reordered)):
        run_curate(recipe_for([path], tmp_path / name, tiny_model_dir), progress=False)
        datasets.append(load_from_disk(str(tmp_path / name / "dataset")))
    a, b = datasets
    assert a["input_ids"] == b["input_ids"] and a["completion_mask"] == b["completion_mask"]
    assert a["episode_id"] == sorted(a["episode_id"])
    for episode in set(a["episode_id"]):
        firsts = [turns[0] for turns, e in zip(a["turns"], a["episode_id"], strict=True) if e == episode]
        assert firsts == sorted(firsts)
