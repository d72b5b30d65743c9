"""Play episodes and append them to a trajectory file, resumably (SPEC 4).

Episodes run concurrently (asyncio, bounded by a semaphore). Each finished episode is appended as one
JSONL line at once, so a killed collection loses at most the episodes in flight; on restart, episode
ids already in the file are skipped and a truncated last line is cut off, reported and re-run.
"""

from __future__ import annotations

import asyncio
import json
import logging
import zlib
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from tqdm.auto import tqdm

from pipeline.env.registry import make_env
from pipeline.policies.base import Action, Policy, as_action
from pipeline.tasks.schema import Task
from pipeline.trajectory import Trajectory

logger = logging.getLogger(__name__)

Grader = Callable[[Task, str | None], bool]


@dataclass
class Episode:
    """One episode to play: a task, a sample index, and the seed derived from both."""

    task: Task
    sample: int
    seed: int

    @property
    def episode_id(self) -> str:
        return f"{self.task.id}#{self.sample}"


@dataclass
class ExistingFile:
    """What a previous run left in the trajectory file."""

    episode_ids: set[str] = field(default_factory=set)
    corrupt_lines: list[str] = field(default_factory=list)
    truncated_tail: bool = False


def plan_episodes(tasks: Iterable[Task], samples_per_task: int, seed: int) -> list[Episode]:
    """Every (task, sample) pair with a seed that depends only on the ids, so reruns match."""
    return [
        Episode(task, sample, (zlib.crc32(f"{task.id}#{sample}".encode()) + seed) % 2**31)
        for task in tasks
        for sample in range(samples_per_task)
    ]


def scan_existing(path: Path) -> ExistingFile:
    """Read a trajectory file from a previous run; cut off a truncated last line (a killed write)."""
    found = ExistingFile()
    if not path.exists():
        return found
    data = path.read_bytes()
    keep = len(data)
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        found.truncated_tail = True
    for line_no, raw in enumerate(data[:keep].splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            found.episode_ids.add(json.loads(raw)["episode_id"])
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as exc:
            found.corrupt_lines.append(f"{path}:{line_no}: {type(exc).__name__}: {exc}")
    if found.truncated_tail:
        with path.open("r+b") as handle:
            handle.truncate(keep)
    return found


def iter_trajectories(path: str | Path, errors: list[str] | None = None) -> Iterable[Trajectory]:
    """Valid trajectories of a file; invalid lines are skipped and described in `errors` (file:line)."""
    path = Path(path)
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield Trajectory.model_validate_json(line)
            except ValidationError as exc:
                if errors is not None:
                    first = exc.errors()[0]
                    where = ".".join(str(p) for p in first["loc"]) or "record"
                    errors.append(f"{path}:{line_no}: {where}: {first['msg']}")


async def play_episode(
    episode: Episode,
    policy: Policy,
    tokenizer: Any,
    config: Any,
    grader: Grader,
    weights: dict[str, float] | None = None,
) -> Trajectory:
    """Run one episode to its end state and grade it."""
    task = episode.task
    env = await asyncio.to_thread(make_env, task, tokenizer, config)
    turn = 0
    while not env.done:
        action = as_action(await policy.act(env.messages(), env.tools, seed=episode.seed + turn))
        turns_before = len(env.turns)
        await asyncio.to_thread(env.step, action.text)
        if len(env.turns) > turns_before:
            record_action(env.turns[-1], action)
        turn += 1
    return await finish_episode(episode, env, policy.name, grader, weights)


def record_action(turn: Any, action: Action) -> None:
    """What the policy said about its turn beyond the text: not to train it, why its output ended, the ids it
    sampled."""
    turn.trained = action.trained
    turn.token_ids, turn.logprobs = action.token_ids, action.logprobs
    if action.finish_reason is not None:
        turn.finish_reason = action.finish_reason
        turn.error = "truncated" if action.finish_reason == "length" else None


async def finish_episode(
    episode: Episode, env: Any, policy_name: str, grader: Grader, weights: dict[str, float] | None
) -> Trajectory:
    """Grade an episode whose environment is done and build its record."""
    task = episode.task
    correct = env.end_state == "finished" and await asyncio.to_thread(grader, task, env.answer)
    if hasattr(env, "input_tokens"):
        await asyncio.to_thread(lambda: env.input_tokens)  # record the input length even if never measured
    return env.trajectory(
        episode.episode_id,
        task.id,
        policy_name,
        episode.seed,
        correct,
        weights,
        metadata={"task_kind": task.kind, **{k: v for k, v in task.metadata.items() if k != "depths"}},
    )


async def collect(
    episodes: list[Episode],
    policy: Policy,
    tokenizer: Any,
    config: Any,
    out_path: str | Path,
    grader: Grader,
    concurrency: int = 8,
    weights: dict[str, float] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Play every episode not yet in `out_path`, appending each as soon as it ends."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    existing = scan_existing(out_path)
    if existing.truncated_tail:
        logger.warning("%s: the last line was truncated (a killed run); it was removed and will be re-run", out_path)
    for problem in existing.corrupt_lines:
        logger.warning("skipping corrupt line %s", problem)
    todo = [e for e in episodes if e.episode_id not in existing.episode_ids]
    semaphore, lock = asyncio.Semaphore(concurrency), asyncio.Lock()
    failures: list[str] = []
    bar = tqdm(total=len(episodes), initial=len(episodes) - len(todo), desc="episodes", disable=not progress)

    async def run(episode: Episode) -> None:
        async with semaphore:
            try:
                trajectory = await play_episode(episode, policy, tokenizer, config, grader, weights)
            except Exception as exc:  # an infrastructure failure (server down): not written, re-run on resume
                failures.append(f"{episode.episode_id}: {type(exc).__name__}: {exc}")
                logger.error("episode %s failed: %s", episode.episode_id, exc)
                return
            await write(trajectory)

    async def write(trajectory: Trajectory) -> None:
        line = trajectory.model_dump_json() + "\n"
        async with lock:
            with out_path.open("a", encoding="utf-8") as handle:
                handle.write(line)
                handle.flush()
        bar.update(1)
        bar.set_postfix(end=trajectory.end_state, refresh=False)

    with out_path.open("a", encoding="utf-8"):
        pass  # the file exists even when every episode fails
    if hasattr(policy, "act_batch"):
        await _play_in_rounds(todo, policy, tokenizer, config, grader, weights, concurrency, write)
    else:
        await asyncio.gather(*(run(e) for e in todo))
    bar.close()
    return {
        "played": len(todo) - len(failures),
        "skipped_existing": len(episodes) - len(todo),
        "failed": failures,
        "truncated_tail_removed": existing.truncated_tail,
        "corrupt_lines": existing.corrupt_lines,
    }


async def _play_in_rounds(
    todo: list[Episode],
    policy: Any,
    tokenizer: Any,
    config: Any,
    grader: Grader,
    weights: dict[str, float] | None,
    concurrency: int,
    write: Callable[[Trajectory], Any],
) -> None:
    """Lockstep rounds for a policy that generates in batches (a local model): up to `concurrency` live
    episodes, one batched `act_batch` per round, each finished episode written at once and replaced by the
    next one, so the batch stays full and a kill still loses only the episodes in flight."""
    waiting = list(reversed(todo))
    live: list[tuple[Episode, Any, int]] = []  # episode, env, turns played
    while waiting or live:
        while waiting and len(live) < concurrency:
            episode = waiting.pop()
            live.append((episode, await asyncio.to_thread(make_env, episode.task, tokenizer, config), 0))
        playing = [item for item in live if not item[1].done]
        if playing:
            texts = await policy.act_batch(
                [env.messages() for _, env, _ in playing],
                [env.tools for _, env, _ in playing],
                [episode.seed + turn for episode, _, turn in playing],
            )
            for (_, env, _), reply in zip(playing, texts, strict=True):
                action, turns_before = as_action(reply), len(env.turns)
                await asyncio.to_thread(env.step, action.text)
                if len(env.turns) > turns_before:
                    record_action(env.turns[-1], action)
        live = [(episode, env, turn + 1) for episode, env, turn in live]
        for episode, env, _ in [item for item in live if item[1].done]:
            await write(await finish_episode(episode, env, policy.name, grader, weights))
        live = [item for item in live if not item[1].done]


def summarize(trajectories: list[Trajectory]) -> dict[str, Any]:
    """The figures of a trajectory file: end states, accuracy, context use, tool calls."""
    n = len(trajectories)
    tools = Counter(call["name"] for t in trajectories for turn in t.turns for call in turn.tool_calls)
    peaks = [t.peak_context_tokens for t in trajectories]
    return {
        "episodes": n,
        "end_states": dict(Counter(t.end_state for t in trajectories)),
        "accuracy": sum(t.correct for t in trajectories) / n if n else 0.0,
        "mean_reward": sum(t.reward for t in trajectories) / n if n else 0.0,
        "mean_context_tokens": sum(t.mean_context_tokens for t in trajectories) / n if n else 0.0,
        "peak_context_tokens": max(peaks, default=0),
        "mean_peak_context_tokens": sum(peaks) / n if n else 0.0,
        "mean_rounds": sum(t.rounds for t in trajectories) / n if n else 0.0,
        "format_errors": sum(t.format_errors for t in trajectories),
        "truncated_turns": sum(turn.error == "truncated" for t in trajectories for turn in t.turns),
        "tool_calls": dict(tools.most_common()),
        "deletions_per_episode": tools.get("deleteContext", 0) / n if n else 0.0,
    }
