"""GRPO stage (pipeline/grpo.py, grpo_trainer.py, advantages.py, snapshots.py): rewards per end state, group
advantages, snapshot sampling on scripted-expert episodes, the loss mask of a row, an update on the real random
model's episodes, and end-to-end runs: `statelm grpo` in one process on the tiny model, and accelerate ZeRO-2 on 2
CPU processes (the tiny model at its smallest size), killed and resumed. Random models never call a tool, so
their episodes end malformed or over budget; nothing here fakes a better policy."""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.data.segments import segment_trajectory
from pipeline.data.snapshots import episode_rng, sample_segments
from pipeline.env.pensieve import EnvConfig, PensieveEnv
from pipeline.env.rubric import DEFAULT_REWARD_WEIGHTS
from pipeline.grpo import build_trainer, make_parser
from pipeline.play.rollout import plan_episodes, play_episode
from pipeline.policies.scripted import ScriptedExpert
from pipeline.tasks.generators import generate_multihop, generate_niah
from pipeline.tasks.graders import grade
from pipeline.training.advantages import group_advantages
from pipeline.training.grpo_rows import episode_rows, segment_row
from pipeline.training.grpo_trainer import PlayedEpisode

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE = Path(sys.executable).with_name("accelerate")

# The smallest real setting: groups of 2 episodes, 2 segments each at most, short turns, 2 error turns to malformed
SMALL = {
    "tasks": [{"generator": "niah", "n": 4, "min_tokens": 1000, "max_tokens": 1500, "seed": 0}],
    "num_episodes_per_task": 2,
    "tasks_per_generation": 1,
    "max_segments_per_episode": 2,
    "per_device_train_batch_size": 1,
    "environment": {"max_context_tokens": 32000, "max_output_tokens": 16, "max_rounds": 8, "max_format_errors": 2},
    "max_steps": 2,
    "save_steps": 1,
    "beta": 0.001,
    "learning_rate": 1.0e-4,
}


def small_recipe(path: Path, model: Path, output_dir: Path, **overrides) -> Path:
    recipe = yaml.safe_load((ROOT / "recipes/tiny/grpo.yaml").read_text())
    recipe.update(SMALL, model_name_or_path=str(model), output_dir=str(output_dir), **overrides)
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture(scope="module")
def micro_model_dir(tmp_path_factory) -> Path:
    """The project's tiny model at its smallest (2 layers, width 64): whole episodes and updates stay quick on CPU."""
    from pipeline.models.tiny import build_tiny_model

    return build_tiny_model(
        tmp_path_factory.mktemp("micro") / "model", seed=0, hidden_size=64, num_layers=2, num_heads=2,
        num_kv_heads=1, intermediate_size=192,
    )  # fmt: skip


def scripted_episode(tokenizer, task, **env) -> object:
    grader = lambda t, a: grade(t, a)  # noqa: E731
    episode = plan_episodes([task], 1, 0)[0]
    return asyncio.run(play_episode(episode, ScriptedExpert(chunk_size=500), tokenizer, EnvConfig(**env), grader))


@pytest.fixture(scope="module")
def tokenizer(micro_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(micro_model_dir)


@pytest.fixture(scope="module")
def multihop(tokenizer):
    """A scripted-expert multi-hop episode: two facts, each noted then its reading deleted (4 edited turns)."""
    task = generate_multihop(1, 2000, 4000, seed=2, tokenizer=tokenizer)[0]
    traj = scripted_episode(tokenizer, task, max_output_tokens=64)
    assert traj.end_state == "finished" and traj.correct
    return traj


# -- rewards ---------------------------------------------------------------------------------------------------


def test_reward_of_each_end_state(tokenizer):
    task = generate_niah(1, 1000, 1500, tokenizer=tokenizer)[0]
    right = scripted_episode(tokenizer, task)
    assert (right.end_state, right.correct, right.reward) == ("finished", True, 1.0)

    def play(texts, **config):
        env = PensieveEnv(task.question, task.load_input(), tokenizer, EnvConfig(**config))
        for text in texts:
            env.step(text)
        assert env.done
        answer_ok = env.end_state == "finished" and grade(task, env.answer)
        return env.trajectory("e", task.id, "test", 0, answer_ok, DEFAULT_REWARD_WEIGHTS)

    finish_wrong = '<tool_call>\n{"name": "finish", "arguments": {"answer": "12"}}\n</tool_call>'
    check = '<tool_call>\n{"name": "checkBudget", "arguments": {}}\n</tool_call>'
    wrong = play([finish_wrong])
    malformed = play(["garbage"] * 3, max_format_errors=3)
    rounds = play([check] * 2, max_rounds=2)
    over = play([check], max_context_tokens=right.turns[0].context_tokens_before + 2048 + 30)
    assert [(t.end_state, t.reward) for t in (wrong, malformed, rounds, over)] == [
        ("finished", -0.5), ("malformed", -1.0), ("max_rounds", -1.0), ("over_budget", -1.0),
    ]  # fmt: skip
    # A correct answer after a format error is not "correct" (well formed is part of it): 0, not +1
    finish_right = finish_wrong.replace('"12"', f'"{task.answer}"')
    late = play(["garbage", finish_right])
    assert (late.end_state, late.correct, late.reward) == ("finished", True, 0.0)


# -- advantages ------------------------------------------------------------------------------------------------


def test_reward_weights_must_name_components_of_the_env_rubric(micro_model_dir, tmp_path):
    rewards = {"correct": 1.0, "corect": 2.0}
    recipe = small_recipe(tmp_path / "r.yaml", micro_model_dir, tmp_path / "out", rewards=rewards)
    with pytest.raises(ValueError, match=r"rewards: unknown reward components in weights: \['corect'\]"):
        make_parser().parse_args_and_config(["--config", str(recipe)])


def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, -0.5, -1.0, -1.0, -1.0, -1.0, -1.0, -1.0])  # two groups of 4
    mean, std = -0.375, ((1.375**2 + 0.125**2 + 2 * 0.625**2) / 3) ** 0.5  # unbiased std
    expected = torch.tensor([1.375, -0.125, -0.625, -0.625]) / (std + 1e-4)
    grpo = group_advantages(rewards, 4, "grpo")
    assert torch.allclose(grpo[:4], expected) and mean == rewards[:4].mean().item()
    assert torch.equal(grpo[4:], torch.zeros(4)), "all rewards equal: advantages exactly 0, no NaN"
    assert torch.allclose(group_advantages(rewards, 4, "dr_grpo")[:4], torch.tensor([1.375, -0.125, -0.625, -0.625]))
    assert torch.equal(group_advantages(torch.full((4,), -1.0), 2, "dr_grpo"), torch.zeros(4))
    with pytest.raises(ValueError, match="groups of 3"):
        group_advantages(rewards, 3)


# -- segments and snapshot sampling ----------------------------------------------------------------------------


def test_edits_cut_episodes_into_segments(tokenizer, multihop):
    edited = [t.index for t in multihop.turns if t.edited]
    segments = segment_trajectory(tokenizer, multihop)
    assert len(edited) == 4 and len(segments) >= 5
    assert [s.break_reason for s in segments[1:]].count("edit") == len(segments) - 1
    assert [s.turns[-1] for s in segments[:-1]] == edited  # every segment but the last ends with an edit


def test_sampling_keeps_last_prefers_edits_respects_cap(tokenizer, multihop):
    snapshots = segment_trajectory(tokenizer, multihop, max_turns_per_segment=1)  # one segment per turn
    ends = [s.ends_with_edit for s in snapshots]
    starts = [s.starts_after_edit for s in snapshots]
    n, last = len(snapshots), len(snapshots) - 1
    edited = [t.index for t in multihop.turns if t.edited]
    near_edit = ({*edited} | {t + 1 for t in edited}) - {last}  # ends with an edit, or starts after one
    assert n == len(multihop.turns) and 4 <= len(near_edit) < n - 2  # some segments are neither

    for cap in (1, 3, len(near_edit) + 1, len(near_edit) + 2, 20):
        picks = sample_segments(ends, starts, cap, episode_rng(0, 1, multihop.episode_id))
        chosen = [p.index for p in picks]
        assert len(chosen) == min(cap, n) and chosen == sorted(set(chosen))
        assert last in chosen and {p.reason for p in picks if p.index == last} == {"last"}
        edit_chosen = near_edit & set(chosen)
        assert len(edit_chosen) == min(len(near_edit), cap - 1), "edit-adjacent segments come before random ones"
        assert all(p.reason == "random" for p in picks if p.index not in near_edit and p.index != last)
        assert sum(p.weight for p in picks) == pytest.approx(1.0)

    # Seeded: same seed and keys, same picks; another step, (generally) another random choice
    runs = {key: [p.index for p in sample_segments(ends, starts, 8, episode_rng(0, key, "ep"))] for key in range(20)}
    assert runs[3] == [p.index for p in sample_segments(ends, starts, 8, episode_rng(0, 3, "ep"))]
    assert len({tuple(v) for v in runs.values()}) > 1

    # Long and short episodes weigh the same in total
    short = sample_segments([False], [False], 8, episode_rng(0))
    assert [(p.index, p.reason, p.weight) for p in short] == [(0, "last", 1.0)]
    assert sample_segments([], [], 8, episode_rng(0)) == []


# -- the trainer: rows, loss mask, an update -------------------------------------------------------------------


@pytest.fixture(scope="module")
def trainer(micro_model_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("grpo")
    recipe = small_recipe(path / "r.yaml", micro_model_dir, path / "out", max_segments_per_episode=4)
    return build_trainer(*make_parser().parse_args_and_config(["--config", str(recipe)]))


def test_row_mask_is_exactly_the_assistant_tokens(tokenizer, multihop):
    for segment in segment_trajectory(tokenizer, multihop):
        row = segment_row(multihop, segment, 0.5, sampling_logps=False)
        ids = row["prompt"] + row["completion"]
        mask = [0] * len(row["prompt"]) + row["tool_mask"]
        assert ids == segment.input_ids and row["advantage"] == 0.5
        trained = {i for i, m in enumerate(mask) if m}
        assert trained == {i for lo, hi in segment.spans for i in range(lo, hi)}
        for turn, (lo, hi) in zip(segment.turns, segment.spans, strict=True):
            raw = multihop.messages[multihop.turns[turn].assistant].content
            assert tokenizer.decode(ids[lo:hi]) == raw + tokenizer.eos_token
        assert row["prompt"] and row["tool_mask"][0] == 1  # the completion starts at the first trained token


def test_random_model_episodes_then_an_update_moves_the_weights(trainer):
    """The real random model plays a group: every episode malformed, reward -1, advantages 0. With a hand-made
    group of advantages (+1, -1) its rows give a loss whose gradient changes the weights."""
    tasks = [trainer.train_dataset[0]["task"]] * 2
    from pipeline.tasks.schema import Task

    episodes = trainer._play([Task.model_validate_json(t) for t in tasks], ["a#0", "a#1"])
    assert [e.trajectory.end_state for e in episodes] == ["malformed", "malformed"]
    assert [e.trajectory.reward for e in episodes] == [-1.0, -1.0]
    for episode in episodes:  # token-in/token-out: each turn keeps the ids the model sampled, its text their decode
        assert len(episode.trajectory.turns) == 2
        for turn in episode.trajectory.turns:
            text = episode.trajectory.messages[turn.assistant].content
            assert turn.token_ids and text == trainer._tokenizer.decode(
                [t for t in turn.token_ids if t not in trainer._drop_ids], skip_special_tokens=False
            )
    rewards = torch.tensor([e.trajectory.reward for e in episodes])
    assert torch.equal(group_advantages(rewards, 2), torch.zeros(2))

    rows, stats = rows_of(trainer, episodes, [1.0, -1.0])
    cut, picked = stats.segments, stats.trained
    assert stats.sampled_turns == 4 and 0 <= stats.reencode_mismatches <= 4
    assert picked == len(rows) >= 2 and cut >= picked
    slots = trainer.args.steps_per_generation * trainer.args.per_device_train_batch_size
    for sign, episode in ((1, episodes[0]), (-1, episodes[1])):
        # an episode's row weights sum to slots / episodes, whatever its number of segments
        total = sum(r["advantage"] for r in rows if r["prompt"] + r["completion"] in _ids(trainer, episode))
        assert total == pytest.approx(sign * slots / 2)
    chunks = trainer._chunks(rows)
    assert len(chunks) == trainer.args.steps_per_generation == 2 * 4  # 2 episodes x up to 4 segments
    assert sum(int(c["tool_mask"].sum()) for c in chunks) == sum(sum(r["tool_mask"]) for r in rows)
    assert all(c["completion_ids"].size(0) == 1 for c in chunks)
    # Empty rows come first and are skipped; the rows to train come last (the last micro-step steps the optimizer)
    assert [c["skip"] for c in chunks] == [True] * (8 - len(rows)) + [False] * len(rows)
    chunks = [c for c in chunks if not c["skip"]]
    assert all(not c["empty"] and c["tool_mask"].sum() > 0 and "ref_per_token_logps" in c for c in chunks)

    model = trainer.model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    trainer.current_gradient_accumulation_steps = trainer.args.gradient_accumulation_steps
    model.train()
    for chunk in chunks:
        loss = trainer.compute_loss(model, chunk)
        assert torch.isfinite(loss)
        loss.backward()
    optimizer.step()
    moved = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert len(moved) > len(before) // 2
    assert trainer._metrics["train"]["kl"], "TRL's loss logged its figures"


def _ids(trainer, episode: PlayedEpisode) -> list[list[int]]:
    return [s.input_ids for s in segment_trajectory(trainer._tokenizer, episode.trajectory, sampled_ids=True)]


def rows_of(trainer, episodes: list[PlayedEpisode], advantages: list[float], sampling_logps: bool = False):
    return episode_rows(
        trainer._tokenizer, [e.trajectory for e in episodes], advantages, trainer.args, trainer.state.global_step,
        trainer.segment_kwargs, sampling_logps,
    )  # fmt: skip


def test_grpo_rows_train_the_sampled_ids_with_their_logprobs(trainer, tokenizer):
    """A sampled id sequence whose decode -> encode round trip changes (a token split in two that re-encoding
    merges): the row trains exactly the sampled ids, each with its sampling logprob, and the mismatch is counted."""
    from tests.test_segments import call, sampled_episode, split_ids

    eos = tokenizer.eos_token_id
    sampled = [[*split_ids(tokenizer, call("checkBudget")), eos], [*split_ids(tokenizer, call("analyzeText")), eos]]
    traj = sampled_episode(tokenizer, sampled)
    rows, stats = rows_of(trainer, [PlayedEpisode(traj)], [1.0], sampling_logps=True)
    assert (stats.sampled_turns, stats.reencode_mismatches) == (2, 2)
    assert len(rows) == 2, "each turn's ids re-render differently, so each turn is its own segment"
    for row in rows:
        trained = [t for t, m in zip(row["completion"], row["tool_mask"], strict=True) if m]
        logps = [lp for lp, m in zip(row["sampling_logps"], row["tool_mask"], strict=True) if m]
        turn = next(t for t in traj.turns if t.token_ids == trained)
        assert logps == turn.logprobs and not any(math.isnan(lp) for lp in logps)
        text = traj.messages[turn.assistant].content
        assert tokenizer(text, add_special_tokens=False)["input_ids"] != trained[:-1], "re-encoding differs"


def test_generation_dtype_plays_with_a_refreshed_bf16_copy(micro_model_dir, tmp_path):
    """`generation_dtype: bfloat16`: episodes are played by a bf16 copy of the weights being trained (its own
    forward, not the training model's), refreshed from the trained weights at the next generation."""
    from pipeline.tasks.schema import Task

    recipe = small_recipe(tmp_path / "r.yaml", micro_model_dir, tmp_path / "out", generation_dtype="bfloat16")
    trainer = build_trainer(*make_parser().parse_args_and_config(["--config", str(recipe)]))
    task = Task.model_validate_json(trainer.train_dataset[0]["task"])
    episodes = trainer._play([task, task], ["a#0", "a#1"])
    assert all(turn.token_ids for e in episodes for turn in e.trajectory.turns)
    copy = trainer._generation_model
    assert copy is not trainer.model and {p.dtype for p in copy.parameters()} == {torch.bfloat16}
    ids = torch.tensor([[1, 2, 3]])
    assert copy(input_ids=ids).logits.dtype == torch.bfloat16  # its own forward, not the fp32 model's
    with torch.no_grad():  # a training step's change of the weights reaches the copy at the next generation
        for p in trainer.model.parameters():
            p.add_(0.5)
    trainer._play([task, task], ["b#0", "b#1"])
    assert trainer._generation_model is copy
    for (name, p), q in zip(trainer.model.named_parameters(), copy.parameters(), strict=True):
        assert torch.equal(q, p.detach().to(torch.bfloat16)), name


def test_generation_dtype_is_checked(micro_model_dir, tmp_path):
    recipe = small_recipe(tmp_path / "r.yaml", micro_model_dir, tmp_path / "out", generation_dtype="int8")
    with pytest.raises(ValueError, match="generation_dtype must be one of"):
        make_parser().parse_args_and_config(["--config", str(recipe)])


# -- end to end ------------------------------------------------------------------------------------------------


def test_cli_run_on_the_random_model(tiny_model_dir, tmp_path):
    """`statelm grpo` in one process: 2 steps of groups of malformed episodes. Rewards are all -1, so advantages
    are 0: nothing divides by zero, the loss is 0 and the weights stay exactly as they were."""
    out = tmp_path / "out"
    recipe = small_recipe(tmp_path / "r.yaml", tiny_model_dir, out)
    result = CliRunner().invoke(app, ["grpo", "--recipe", str(recipe), "--max-steps", "2", "--report_to", "none"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["global_step"] == 2 and report["world_size"] == 1 and report["resumed_from"] is None
    logged = [e for e in json.loads((out / "trainer_state.json").read_text())["log_history"] if "reward" in e]
    assert [e["step"] for e in logged] == [1, 2]
    for entry in logged:
        assert entry["reward"] == -1.0 and entry["episodes/malformed"] == 1.0 and entry["advantage_abs_mean"] == 0
        assert entry["rewards/malformed/mean"] == 1.0 and entry["rewards/correct/mean"] == 0.0
        assert entry["loss"] == 0.0 and entry["kl"] == 0.0 and entry["tokens/trained"] > 0
        assert entry["segments/trained_per_episode"] >= 1 and entry["episodes/context_tokens_peak"] > 1000
        assert all(v == v for v in entry.values() if isinstance(v, float)), "no NaN"
    assert_same_weights(out, tiny_model_dir)
    card = (out / "README.md").read_text()
    assert "GRPO" in card and "Model Card for out" in card and (out / "checkpoint-2").is_dir()


def assert_same_weights(trained: Path, base: Path) -> None:
    from transformers import AutoModelForCausalLM

    a = AutoModelForCausalLM.from_pretrained(trained).state_dict()
    b = AutoModelForCausalLM.from_pretrained(base).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in b)


def launch(cmd: list[str], log: Path, kill_when: Path | None = None) -> int:
    """Run the command; with kill_when, SIGKILL it and all its processes as soon as that file exists."""
    env = {
        **os.environ,
        "DS_ACCELERATOR": "cpu",
        "PYTHONPATH": str(ROOT),
        "TRL_EXPERIMENTAL_SILENCE": "1",
        "PYTHONFAULTHANDLER": "1",
    }  # a crash shows its Python stack
    with open(log, "a") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        while kill_when is not None and proc.poll() is None:
            if kill_when.exists():
                tree = psutil.Process(proc.pid).children(recursive=True)
                for p in [psutil.Process(proc.pid), *tree]:
                    p.kill()
                break
            time.sleep(0.01)
        returncode = proc.wait(timeout=900)
    if kill_when is None and returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {returncode}:\n{log.read_text()[-6000:]}")
    return returncode


def budget_that_splits_groups(recipe: Path) -> int:
    """A context budget that ends some of the random model's episodes after 1 turn (over budget) and the others
    after 2: measured on episodes of the same model and task, since the first turn's growth varies a little."""
    from pipeline.tasks.schema import Task

    trainer = build_trainer(*make_parser().parse_args_and_config(["--config", str(recipe)]))
    task = Task.model_validate_json(trainer.train_dataset[0]["task"])
    episodes = trainer._play([task] * 8, [f"probe#{i}" for i in range(8)])
    after_first = sorted({e.trajectory.turns[0].context_tokens_after for e in episodes})
    assert len(after_first) >= 2, f"every first turn grew the context alike: {after_first}"
    # over budget when context + max_output_tokens (= max_completion_length) > max_context_tokens
    return after_first[(len(after_first) - 1) // 2] + trainer.args.max_completion_length


@pytest.mark.slow
def test_zero2_two_processes_learn_killed_and_resumed(micro_model_dir, tmp_path):
    """accelerate launch, DeepSpeed ZeRO-2, 2 CPU processes. The budget ends episodes after 1 or 2 error turns and
    format errors cost 0.1 each, so groups have different rewards: non-zero advantages, the weights move. Killed
    after the first checkpoint, the same command continues from it to the last step."""
    out = tmp_path / "out"
    one_task = [{"generator": "niah", "n": 1, "min_tokens": 1000, "max_tokens": 1500, "seed": 3}]
    settings = dict(tasks=one_task, num_episodes_per_task=4, max_steps=3)
    recipe = small_recipe(tmp_path / "r.yaml", micro_model_dir, out, **settings)
    budget = budget_that_splits_groups(recipe)
    environment = {"max_context_tokens": budget, "max_output_tokens": 16, "max_rounds": 8, "max_format_errors": 5}
    rewards = {**DEFAULT_REWARD_WEIGHTS, "format_errors": -0.1}
    recipe = small_recipe(
        tmp_path / "r.yaml", micro_model_dir, out, environment=environment, rewards=rewards, **settings
    )
    cmd = [
        str(ACCELERATE), "launch", "--config_file", str(ROOT / "recipes/accelerate/cpu_zero2.yaml"),
        "-m", "pipeline.grpo", "--config", str(recipe),
    ]  # fmt: skip
    log = tmp_path / "run.log"
    assert launch(cmd, log, kill_when=out / "checkpoint-1" / "trainer_state.json") != 0
    assert not (out / "report.json").exists(), "the kill came too late to test anything"
    launch(cmd, log)  # same command: continues from the last complete checkpoint

    report = json.loads((out / "report.json").read_text())
    resumed = int(report["resumed_from"].rsplit("-", 1)[1])
    assert 1 <= resumed < 3 and report["world_size"] == 2 and report["global_step"] == 3
    logged = [e for e in json.loads((out / "trainer_state.json").read_text())["log_history"] if "reward" in e]
    assert [e["step"] for e in logged] == [1, 2, 3]
    for entry in logged:
        assert entry["episodes/over_budget"] == 1.0 and 1.0 <= entry["episodes/rounds"] <= 2.0
        assert entry["reward"] == pytest.approx(-1 - 0.1 * entry["episodes/format_errors"], abs=1e-6)
        assert all(v == v for v in entry.values() if isinstance(v, float)), "no NaN"
    learned = [e for e in logged if e["advantage_abs_mean"] > 0]
    assert learned and all(e["grad_norm"] > 0 for e in learned)
    with pytest.raises(AssertionError):
        assert_same_weights(out, micro_model_dir)
