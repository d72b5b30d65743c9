"""One episode loop (SPEC 4): collect, eval and GRPO all play their episodes here.

An episode is a task, a seed and an environment. A turn asks the policy for the next assistant message, steps
the environment with its text and records on the new turn what the policy said beyond the text (`record_action`:
not to train it, why its output ended, the token ids it sampled). A finished environment is graded and becomes a
`Trajectory` in `finish_episode`, the one place that builds records.

Two schedules share that turn and that finish:
- `play_concurrently`: every episode its own coroutine calling `policy.act`, at most `concurrency` at once (API
  servers, scripted experts: many requests in flight, and no episode waits for a slower one).
- `play_in_rounds`: lockstep rounds over up to `concurrency` live episodes; one `generate` call per round returns
  the next message of every live episode (a local model decoding them in one batch; GRPO's HF, prefix-cached or
  vLLM generation). A finished episode is handed on at once and replaced by the next waiting one, so the batch
  stays full and a kill loses only the episodes in flight. With `collective` generation (ZeRO-3, FSDP, the vLLM
  server) every process must run every round: the loop then runs while any process has a live episode, and a
  process with none left generates empty rounds.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.data.trajectory import Trajectory
from pipeline.env.registry import make_env
from pipeline.policies.base import Action, Message, Policy, as_action
from pipeline.policies.factory import sub_policy_for
from pipeline.tasks.schema import Task

Grader = Callable[[Task, str | None], bool]
RoundGenerator = Callable[
    [list[list[Message]], list[list[dict[str, Any]]], list[int]], Awaitable[Sequence[str | Action]]
]
"""One round: (contexts, tool schemas, seeds) of the live episodes -> the next message of each, in order."""
Finished = Callable[[Trajectory], Awaitable[None]]


@dataclass
class Episode:
    """One episode to play: a task, a sample index, and the seed derived from both. The id is
    `<task id>#<sample>` unless given (GRPO names its episodes by step and place in the group)."""

    task: Task
    sample: int
    seed: int
    episode_id: str = ""

    def __post_init__(self) -> None:
        self.episode_id = self.episode_id or f"{self.task.id}#{self.sample}"


@dataclass
class PlaySettings:
    """What every episode of one run shares: how to build its environment, grade it and label its record."""

    tokenizer: Any
    env_config: Any
    grader: Grader
    weights: dict[str, float] | None = None
    policy_name: str = "policy"
    metadata: dict[str, Any] = field(default_factory=dict)  # added to every record's metadata (GRPO: the step)


def plan_episodes(tasks: Iterable[Task], samples_per_task: int, seed: int) -> list[Episode]:
    """Every (task, sample) pair with a seed that depends only on the ids, so reruns match."""
    return [
        Episode(task, sample, (zlib.crc32(f"{task.id}#{sample}".encode()) + seed) % 2**31)
        for task in tasks
        for sample in range(samples_per_task)
    ]


def record_action(turn: Any, action: Action) -> None:
    """What the policy said about its turn beyond the text: not to train it, why its output ended, the ids it
    sampled."""
    turn.trained = action.trained
    turn.token_ids, turn.logprobs = action.token_ids, action.logprobs
    if action.finish_reason is not None:
        turn.finish_reason = action.finish_reason
        turn.error = "truncated" if action.finish_reason == "length" else None


async def start_episode(episode: Episode, settings: PlaySettings) -> Any:
    """The episode's environment (built in a thread: it tokenizes the whole input)."""
    return await asyncio.to_thread(env_for, episode.task, settings.tokenizer, settings.env_config)


def env_for(task: Task, tokenizer: Any, config: Any) -> Any:
    """The environment of one episode, with the models it needs (the RLM's sub-model) built here, not by it."""
    return make_env(task, tokenizer, config, sub_policy=sub_policy_for(config))


async def take_turn(env: Any, reply: str | Action) -> None:
    """Step the environment with the reply's text and record the rest of the reply on the turn it made."""
    action, turns_before = as_action(reply), len(env.turns)
    await asyncio.to_thread(env.step, action.text)
    if len(env.turns) > turns_before:
        record_action(env.turns[-1], action)


async def finish_episode(episode: Episode, env: Any, settings: PlaySettings) -> Trajectory:
    """Grade an episode whose environment is done and build its record."""
    task = episode.task
    correct = env.end_state == "finished" and await asyncio.to_thread(settings.grader, task, env.answer)
    if hasattr(env, "input_tokens"):
        await asyncio.to_thread(lambda: env.input_tokens)  # record the input length even if never measured
    metadata = {"task_kind": task.kind, **{k: v for k, v in task.metadata.items() if k != "depths"}}
    return env.trajectory(
        episode.episode_id,
        task.id,
        settings.policy_name,
        episode.seed,
        correct,
        settings.weights,
        metadata={**metadata, **settings.metadata},
    )


async def play_one(episode: Episode, policy: Policy, settings: PlaySettings) -> Trajectory:
    """Run one episode to its end state with `policy.act` and grade it."""
    env = await start_episode(episode, settings)
    turn = 0
    while not env.done:
        await take_turn(env, await policy.act(env.messages(), env.tools, seed=episode.seed + turn))
        turn += 1
    return await finish_episode(episode, env, settings)


async def play_concurrently(
    episodes: list[Episode],
    policy: Policy,
    settings: PlaySettings,
    concurrency: int,
    on_done: Finished,
    on_error: Callable[[Episode, Exception], None],
) -> None:
    """Each episode in its own coroutine, at most `concurrency` at once; an episode that raises (the server is
    down) goes to `on_error` and the others go on."""
    semaphore = asyncio.Semaphore(concurrency)

    async def run(episode: Episode) -> None:
        async with semaphore:
            try:
                trajectory = await play_one(episode, policy, settings)
            except Exception as exc:  # an infrastructure failure: reported, not recorded
                on_error(episode, exc)
                return
        await on_done(trajectory)

    await asyncio.gather(*(run(e) for e in episodes))


@dataclass
class _Live:
    episode: Episode
    env: Any
    turns: int = 0


async def play_in_rounds(
    episodes: list[Episode],
    generate: RoundGenerator,
    settings: PlaySettings,
    concurrency: int,
    on_done: Finished,
    collective: Callable[[int], bool] | None = None,
) -> None:
    """Lockstep rounds of one `generate` call each over up to `concurrency` live episodes (see the module doc).
    `collective(n)`, given this process's live and waiting episodes, says whether any process has one left."""
    waiting, live = list(reversed(episodes)), []
    while collective(len(waiting) + len(live)) if collective is not None else (waiting or live):
        while waiting and len(live) < concurrency:
            episode = waiting.pop()
            live.append(_Live(episode, await start_episode(episode, settings)))
        playing = [item for item in live if not item.env.done]
        if playing or collective is not None:
            replies = await generate(
                [item.env.messages() for item in playing],
                [item.env.tools for item in playing],
                [item.episode.seed + item.turns for item in playing],
            )
            for item, reply in zip(playing, replies, strict=True):
                await take_turn(item.env, reply)
        for item in live:
            item.turns += 1
            if item.env.done:
                await on_done(await finish_episode(item.episode, item.env, settings))
        live = [item for item in live if not item.env.done]
