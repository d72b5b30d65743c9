"""Stage 1b: trajectories -> SFT dataset (`statelm curate --config recipes/<model>/curate.yaml`, SPEC 5).

    reject sampling -> action-type balancing -> segments -> Dataset.save_to_disk(<output_dir>/dataset)

Two passes over the trajectory files, so memory holds one episode at a time: the first checks and
filters every episode and balances the action types of the kept turns; the second cuts the kept
episodes into segments and streams the rows to an Arrow file. Corrupt or schema-violating lines are
skipped with file:line and reason, and counted. The dataset replaces the old one only once complete,
and `<output_dir>/report.json` holds the figures. The recipe is pipeline/settings/curate_recipe.py.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from pipeline.data.balance import balance_turns, distribution
from pipeline.data.segments import SegmentError, check_trajectory, segment_trajectory
from pipeline.data.trajectory import Trajectory
from pipeline.play.rollout import iter_trajectories
from pipeline.settings.curate_recipe import CurateRecipe, FilterConfig, load_curate_recipe
from pipeline.settings.preflight import check_hub_push, check_model_path

logger = logging.getLogger(__name__)
__all__ = ["CurateRecipe", "load_curate_recipe", "report_tables", "run_curate"]

REPORT = "report.json"
DATASET = "dataset"


# ---------------------------------------------------------------------------------------------
# Reject sampling


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
    if traj.format_errors > filters.max_format_errors:
        reasons.append("format_errors")
    if filters.max_context_tokens is not None and traj.peak_context_tokens > filters.max_context_tokens:
        reasons.append("over_context_budget")
    if max_rounds is not None and max(traj.rounds, len(traj.turns)) > max_rounds:
        reasons.append("over_round_budget")
    return reasons


def _ends_with_finish(traj: Trajectory) -> bool:
    return any(call.get("name") == "finish" for call in traj.turns[-1].tool_calls)


# ---------------------------------------------------------------------------------------------
# The stage


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


def run_curate(recipe: CurateRecipe, progress: bool = True) -> dict[str, Any]:
    """Filter, balance, segment and save; returns (and writes) the report."""
    from datasets import Dataset
    from transformers import AutoTokenizer

    started = time.time()
    _preflight(recipe)
    out = Path(recipe.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(recipe.tokenizer)

    found = filter_episodes(recipe, progress)
    masked = balance_turns(found.candidates, recipe.balance.max_share, recipe.balance.max_share_by_type, recipe.seed)
    trained: dict[str, set[int]] = {}
    for episode_id, index, _ in found.candidates:
        if (episode_id, index) not in masked:
            trained.setdefault(episode_id, set()).add(index)

    scratch = out / f".{DATASET}.arrow"
    figures, breaks, trained_actions = write_segments(recipe, tokenizer, found, trained, scratch, progress)
    if figures["rows"] == 0:
        scratch.unlink(missing_ok=True)
        raise ValueError(f"no rows to write: {found.episodes_in} episodes read, rejections {dict(found.rejections)}")
    dataset = Dataset.from_file(str(scratch))
    _save_atomically(dataset, out / DATASET, progress)
    del dataset
    scratch.unlink(missing_ok=True)

    before = distribution(action for _, _, action in found.candidates)
    report = {
        "stage": "curate",
        "inputs": recipe.inputs,
        "tokenizer": recipe.tokenizer,
        "dataset": str(out / DATASET),
        "hub_id": recipe.hub_id if recipe.push_to_hub else None,
        "episodes_in": found.episodes_in,
        "episodes_kept": len(found.kept),
        "rejections": dict(found.rejections.most_common()),
        "skipped_lines": found.read_errors,
        "duplicate_episodes": found.duplicates,
        "invalid_episodes": found.invalid,
        **{key: figures[key] for key in ("rows", "tokens", "trained_tokens", "trained_turns")},
        "snapshot_rows": figures["trained_turns"],
        "snapshot_tokens": figures["snapshot_tokens"],
        "segment_to_snapshot_tokens": figures["tokens"] / figures["snapshot_tokens"],
        "segments_without_trained_turns": figures["segments_without_trained_turns"],
        "segment_breaks": dict(breaks.most_common()),
        "prompt_token_mismatches": figures["prompt_token_mismatches"],
        "actions_before": before,
        "actions_after": {action: trained_actions.get(action, 0) for action in before},
        "masked_by_balancing": len(masked),
        "masked_by_policy": found.untrained_by_policy,
        "recipe": recipe.model_dump(),
        "seconds": round(time.time() - started, 2),
    }
    (out / REPORT).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if recipe.push_to_hub:  # after report.json: a failed push loses neither the dataset nor its figures
        Dataset.load_from_disk(str(out / DATASET)).push_to_hub(recipe.hub_id, private=recipe.hub_private)
    return report


def _preflight(recipe: CurateRecipe) -> None:
    """Before any work: a missing file, tokenizer or Hub login fails in one line."""
    for path in recipe.inputs:
        if not Path(path).is_file():
            raise FileNotFoundError(f"inputs: trajectory file not found: {path}")
    check_model_path(recipe.tokenizer, "tokenizer")
    if recipe.push_to_hub:
        check_hub_push(recipe.hub_id, "hub_id")


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


def write_segments(
    recipe: CurateRecipe, tokenizer: Any, found: Filtered, trained: dict[str, set[int]], scratch: Path, progress: bool
) -> tuple[Counter[str], Counter[str], Counter[str]]:
    """Pass 2: the kept episodes cut into segments, streamed to an Arrow file; (figures, breaks, trained actions).
    An episode that fails to segment is rejected as `invalid_record` (in `found`)."""
    figures: Counter[str] = Counter()
    breaks: Counter[str] = Counter()
    trained_actions: Counter[str] = Counter()
    seg = recipe.segments
    with _RowWriter(scratch) as writer:
        episodes = (t for t in read_episodes(recipe.inputs, [], []) if t.episode_id in found.kept)
        for traj in tqdm(episodes, total=len(found.kept), desc="segments", unit="ep", disable=not progress):
            try:
                segments = segment_trajectory(tokenizer, traj, trained.get(traj.episode_id, set()),
                                              seg.max_turns_per_segment, seg.max_tokens_per_segment,
                                              recipe.chat_template_kwargs)  # fmt: skip
            except SegmentError as exc:
                found.rejections["invalid_record"] += 1
                found.invalid.append(str(exc))
                found.kept.discard(traj.episode_id)
                continue
            for segment in segments:
                breaks[segment.break_reason] += 1
                figures["prompt_token_mismatches"] += sum(
                    start != traj.turns[turn].context_tokens_before
                    for turn, (start, _) in zip(segment.turns, segment.spans, strict=True)
                )
                if segment.n_trained_tokens == 0:
                    figures["segments_without_trained_turns"] += 1
                    continue
                writer.write(segment.to_row())
                figures.update(
                    rows=1,
                    tokens=segment.n_tokens,
                    trained_tokens=segment.n_trained_tokens,
                    snapshot_tokens=segment.snapshot_tokens,
                    trained_turns=len(segment.trained_turns),
                )
                trained_actions.update(a for a, t in zip(segment.action_types, segment.trained, strict=True) if t)
    for problem in found.invalid:
        logger.warning("rejected %s", problem)
    if figures["prompt_token_mismatches"]:
        logger.warning(
            "%d turns render to a prompt of another length than the environment counted at collection: the rows "
            "differ from what the policy saw. Check `tokenizer` and `environment.enable_thinking`.",
            figures["prompt_token_mismatches"],
        )
    return figures, breaks, trained_actions


class _RowWriter:
    """Rows to an Arrow file one at a time (memory holds one batch, not the dataset)."""

    def __init__(self, path: Path) -> None:
        from datasets import Features, List, Value
        from datasets.arrow_writer import ArrowWriter

        features = Features(
            {
                "input_ids": List(Value("int32")),
                "completion_mask": List(Value("int8")),
                "episode_id": Value("string"),
                "turns": List(Value("int32")),
                "action_types": List(Value("string")),
                "trained": List(Value("bool")),
                "spans": List(List(Value("int32"))),
                "break_reason": Value("string"),
                "n_tokens": Value("int32"),
                "n_trained_tokens": Value("int32"),
                "snapshot_tokens": Value("int64"),
            }
        )
        self.writer = ArrowWriter(features=features, path=str(path), writer_batch_size=256)

    def __enter__(self) -> _RowWriter:
        return self

    def write(self, row: dict[str, Any]) -> None:
        self.writer.write(row)

    def __exit__(self, *exc: object) -> None:
        self.writer.finalize()
        self.writer.close()


def _save_atomically(dataset: Any, target: Path, progress: bool = True) -> None:
    """save_to_disk beside the target, then swap: a killed run leaves the old dataset whole."""
    from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    staging = target.with_name(target.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    was_disabled = are_progress_bars_disabled()
    if not progress:
        disable_progress_bars()
    try:
        dataset.save_to_disk(str(staging))
    finally:
        if not progress and not was_disabled:
            enable_progress_bars()
    old = target.with_name(target.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Printing


def report_tables(report: dict[str, Any]) -> list[Any]:
    """Rich tables of a curate report: figures, rejection reasons, action types before/after balancing."""
    from rich.table import Table

    figures = Table(title=f"curate report ({Path(report['dataset']).parent / REPORT})")
    figures.add_column("figure")
    figures.add_column("value", justify="right")
    for key in ("episodes_in", "episodes_kept", "rows", "tokens", "trained_tokens", "trained_turns"):
        figures.add_row(key, f"{report[key]:,}")
    figures.add_row("tokens as per-turn snapshots", f"{report['snapshot_tokens']:,}")
    figures.add_row("segments / snapshots (tokens)", f"{report['segment_to_snapshot_tokens']:.3f}")
    figures.add_row("turns the policy marked untrained", f"{report.get('masked_by_policy', 0):,}")
    figures.add_row("segment starts", json.dumps(report["segment_breaks"]))
    figures.add_row("seconds", str(report["seconds"]))

    rejected = Table(title="rejections (an episode may have several reasons)")
    rejected.add_column("reason")
    rejected.add_column("episodes", justify="right")
    for reason, count in report["rejections"].items():
        rejected.add_row(reason, str(count))
    if not report["rejections"]:
        rejected.add_row("(none)", "0")

    actions = Table(title="action types of trained turns, before and after balancing")
    for column in ("action", "cap", "before", "share", "after", "share "):
        actions.add_column(column, justify="left" if column == "action" else "right")
    balance = report["recipe"]["balance"]
    n_before, n_after = sum(report["actions_before"].values()), sum(report["actions_after"].values())
    for action, count in report["actions_before"].items():
        after = report["actions_after"].get(action, 0)
        actions.add_row(
            action,
            f"{balance['max_share_by_type'].get(action, balance['max_share']):.0%}",
            str(count),
            f"{count / n_before:.1%}" if n_before else "-",
            str(after),
            f"{after / n_after:.1%}" if n_after else "-",
        )
    return [figures, rejected, actions]
