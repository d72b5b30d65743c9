"""The one episode loop (pipeline/play/episodes.py): both schedules build the same records through the same turn and
finish, a batched round keeps the policy's sampled ids on the turns, and collective rounds run on every process
until none has a live episode."""

from __future__ import annotations

import asyncio

import pytest

from pipeline.env.pensieve import EnvConfig
from pipeline.play.episodes import Episode, PlaySettings, plan_episodes, play_concurrently, play_in_rounds
from pipeline.policies.base import Action, as_action
from pipeline.policies.scripted import ScriptedExpert
from pipeline.tasks.generators import generate_multihop, generate_niah
from pipeline.tasks.graders import grade


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def episodes(tokenizer) -> list[Episode]:
    tasks = generate_niah(2, 1000, 2000, seed=3, tokenizer=tokenizer) + generate_multihop(
        1, 2000, 3000, seed=4, tokenizer=tokenizer
    )
    return plan_episodes(tasks, 2, seed=0)  # fmt: skip


def settings_for(tokenizer, **extra) -> PlaySettings:
    return PlaySettings(tokenizer, EnvConfig(max_output_tokens=64), grade, None, "scripted", **extra)


def play(schedule: str, episodes: list[Episode], settings: PlaySettings, concurrency: int = 2) -> dict:
    policy, done = ScriptedExpert(chunk_size=500), {}

    async def on_done(trajectory) -> None:
        done[trajectory.episode_id] = trajectory

    async def act_batch(contexts, tools, seeds) -> list:
        return [await policy.act(c, t, seed=s) for c, t, s in zip(contexts, tools, seeds, strict=True)]

    if schedule == "concurrent":
        asyncio.run(play_concurrently(episodes, policy, settings, concurrency, on_done, pytest.fail))
    else:
        asyncio.run(play_in_rounds(episodes, act_batch, settings, concurrency, on_done))
    return done


def test_both_schedules_build_the_same_records(tokenizer, episodes):
    settings = settings_for(tokenizer)
    concurrent, rounds = play("concurrent", episodes, settings), play("rounds", episodes, settings)
    assert sorted(concurrent) == sorted(rounds) == sorted(e.episode_id for e in episodes)
    assert all(t.correct and t.end_state == "finished" for t in concurrent.values())
    assert {k: t.model_dump() for k, t in concurrent.items()} == {k: t.model_dump() for k, t in rounds.items()}
    one = next(iter(rounds.values()))
    assert one.metadata["task_kind"] and one.input_tokens, "task metadata and input length on every record"
    assert all(t.token_ids is None for t in one.turns), "scripted text: no sampled ids"


def test_rounds_keep_the_sampled_ids_and_extra_metadata(tokenizer, episodes):
    settings = settings_for(tokenizer, metadata={"global_step": 7})
    expert = ScriptedExpert(chunk_size=500)

    async def generate(contexts, tools, seeds) -> list[Action]:
        texts = [as_action(await expert.act(c, t, seed=s)).text for c, t, s in zip(contexts, tools, seeds, strict=True)]
        ids = [tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for text in texts]
        return [Action(text, token_ids=i, logprobs=[-1.0] * len(i)) for text, i in zip(texts, ids, strict=True)]

    done = []

    async def on_done(trajectory) -> None:
        done.append(trajectory)

    asyncio.run(play_in_rounds(episodes[:2], generate, settings, 8, on_done))
    assert len(done) == 2 and all(t.metadata["global_step"] == 7 for t in done)
    for traj in done:
        for turn in traj.turns:
            text = traj.messages[turn.assistant].content
            assert turn.token_ids == tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            assert turn.logprobs == [-1.0] * len(turn.token_ids)


def test_collective_rounds_go_on_while_any_process_is_live(tokenizer, episodes):
    """A process whose episodes are done still generates (empty rounds) while another process plays on."""
    settings, expert, calls = settings_for(tokenizer), ScriptedExpert(chunk_size=500), []

    async def generate(contexts, tools, seeds) -> list:
        calls.append(len(contexts))
        return [await expert.act(c, t, seed=s) for c, t, s in zip(contexts, tools, seeds, strict=True)]

    async def on_done(trajectory) -> None:
        pass

    other_rounds = 40  # the other process needs more rounds than this one's episode
    asyncio.run(play_in_rounds(episodes[:1], generate, settings, 1, on_done,
                               collective=lambda live: live > 0 or len(calls) < other_rounds))  # fmt: skip
    assert len(calls) == other_rounds and calls[-1] == 0 and calls[0] == 1
