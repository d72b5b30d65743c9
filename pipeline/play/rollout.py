"""Play episodes and append them to a trajectory file, resumably (SPEC 4).

Episodes are played by the one episode loop (`pipeline/play/episodes.py`): concurrently for a policy that answers one
context at a time (an API, a script), in lockstep batched rounds for one that generates in batches (a local
model). Each finished episode is appended as one JSONL line at once, so a killed collection loses at most the
episodes in flight; on restart, episode ids already in the file are skipped and a truncated last line is cut
off, reported and re-run.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from pipeline.data.trajectory import Trajectory
from pipeline.data.trajectory_files import scan_existing
from pipeline.play.episodes import Episode as Episode
from pipeline.play.episodes import Grader, PlaySettings, play_concurrently, play_in_rounds, play_one
from pipeline.play.episodes import plan_episodes as plan_episodes
from pipeline.play.episodes import record_action as record_action
from pipeline.policies.base import Policy

logger = logging.getLogger(__name__)


async def play_episode(
    episode: Episode,
    policy: Policy,
    tokenizer: Any,
    config: Any,
    grader: Grader,
    weights: dict[str, float] | None = None,
) -> Trajectory:
    """Run one episode to its end state and grade it (`pipeline.play.episodes.play_one`)."""
    return await play_one(episode, policy, PlaySettings(tokenizer, config, grader, weights, policy.name))


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
    lock = asyncio.Lock()
    failures: list[str] = []
    bar = tqdm(total=len(episodes), initial=len(episodes) - len(todo), desc="episodes", disable=not progress)

    def failed(episode: Episode, exc: Exception) -> None:  # an infrastructure failure: re-run on resume
        failures.append(f"{episode.episode_id}: {type(exc).__name__}: {exc}")
        logger.error("episode %s failed: %s", episode.episode_id, exc)

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
    settings = PlaySettings(tokenizer, config, grader, weights, policy.name)
    if hasattr(policy, "act_batch"):  # a local model: one batched generation per round
        await play_in_rounds(todo, policy.act_batch, settings, concurrency, write)
    else:
        await play_concurrently(todo, policy, settings, concurrency, write, failed)
    bar.close()
    return {
        "played": len(todo) - len(failures),
        "skipped_existing": len(episodes) - len(todo),
        "failed": failures,
        "truncated_tail_removed": existing.truncated_tail,
        "corrupt_lines": existing.corrupt_lines,
    }


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
