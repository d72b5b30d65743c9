"""Reject sampling (SPEC 5), curate's first pass: which episodes are kept, and which of their turns are trained.

An episode is kept when it is finished (by a `finish` call), correct, well formed, untruncated and within the
context and round budgets the recipe sets; every other episode is counted under each of its reasons. Corrupt lines
and repeated episode ids are skipped and counted, never fatal: one bad record must not cost a whole curation."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from pipeline.data.segments import SegmentError, check_trajectory
from pipeline.data.trajectory import Trajectory
from pipeline.data.trajectory_files import iter_trajectories
from pipeline.settings.curate_recipe import CurateRecipe, FilterConfig

logger = logging.getLogger(__name__)


def rejection_reasons(traj: Trajectory, filters: FilterConfig, max_rounds: int | None = None) -> list[str]:
    """Every reason the episode is not kept (empty when it is kept); `max_rounds` is the environment's."""
    reasons = []
    if not traj.turns:
        reasons.append("no_turns")
    if filters.require_finished and traj.end_state != "finished":
        reasons.append(f"end_state:{traj.end_state}")
    if filters.require_finished and traj.end_state == "finished" and traj.turns[-1:] and not _ends_with_finish(traj):
        reasons.append("not_ended_by_finish")
    if filters.require_correct and not traj.correct:
        reasons.append("incorrect")
    if any(turn.error == "truncated" for turn in traj.turns):
        reasons.append("truncated")  # a turn cut at the teacher's max_tokens: raise policy.max_tokens
    # errors of untrained turns (a failure the teacher rehearses on purpose) are context, not the teacher's form
    rehearsed = sum(turn.format_errors for turn in traj.turns if not turn.trained)
    if traj.format_errors - rehearsed > filters.max_format_errors:
        reasons.append("format_errors")
    if filters.max_context_tokens is not None and traj.peak_context_tokens > filters.max_context_tokens:
        reasons.append("over_context_budget")
    if max_rounds is not None and max(traj.rounds, len(traj.turns)) > max_rounds:
        reasons.append("over_round_budget")
    return reasons


def _ends_with_finish(traj: Trajectory) -> bool:
    return any(call.get("name") == "finish" for call in traj.turns[-1].tool_calls)


def read_episodes(paths: list[str], errors: list[str], duplicates: list[str]) -> Iterator[Trajectory]:
    """Valid trajectories of the files in order. Corrupt or schema-violating lines are skipped and described
    in `errors` (file:line: field: reason); an episode id seen before is skipped and listed in `duplicates`."""
    seen: set[str] = set()
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"trajectory file not found: {path}")
        for traj in iter_trajectories(path, errors):
            if traj.episode_id in seen:
                duplicates.append(f"{path}: episode {traj.episode_id!r} appears again; the first one is kept")
                continue
            seen.add(traj.episode_id)
            yield traj


@dataclass
class Filtered:
    """What the filter pass found: the kept episodes, the turns to train (id, turn, action) and why others went."""

    episodes_in: int = 0
    kept: set[str] = field(default_factory=set)
    candidates: list[tuple[str, int, str]] = field(default_factory=list)
    rejections: Counter[str] = field(default_factory=Counter)
    read_errors: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)
    untrained_by_policy: int = 0


def filter_episodes(recipe: CurateRecipe, progress: bool = True) -> Filtered:
    """Pass 1: reject sampling over every input episode, and the action types of the turns to train."""
    found = Filtered()
    episodes = read_episodes(recipe.inputs, found.read_errors, found.duplicates)
    for traj in tqdm(episodes, desc="filter", unit="ep", disable=not progress):
        found.episodes_in += 1
        reasons = rejection_reasons(traj, recipe.filters, recipe.max_rounds)
        if not reasons:
            try:
                check_trajectory(traj)
            except SegmentError as exc:
                reasons = ["invalid_record"]
                found.invalid.append(str(exc))
        found.rejections.update(reasons)
        if reasons:
            continue
        found.kept.add(traj.episode_id)
        found.untrained_by_policy += sum(not t.trained for t in traj.turns)
        found.candidates += [
            (traj.episode_id, t.index, t.action)
            for t in traj.turns  # trained=False: the policy's own mask
            if t.trained and (recipe.segments.train_error_turns or not t.format_errors)
        ]
    for problem in found.read_errors + found.duplicates:
        logger.warning("skipped %s", problem)
    found.rejections.update({"corrupt_line": len(found.read_errors), "duplicate_episode": len(found.duplicates)})
    found.rejections = +found.rejections  # drop zero counts
    return found
