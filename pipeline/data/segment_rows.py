"""Curate's second pass (SPEC 5): the kept episodes cut into segments, streamed to an Arrow file, saved atomically.

Memory holds one episode and one batch of rows, not the dataset; the saved dataset replaces the old one only once
complete, so a killed run leaves the previous dataset whole."""

from __future__ import annotations

import logging
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from pipeline.data.reject import Filtered, read_episodes
from pipeline.data.segments import SegmentError, segment_trajectory
from pipeline.settings.curate_recipe import CurateRecipe

logger = logging.getLogger(__name__)


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


def save_atomically(dataset: Any, target: Path, progress: bool = True) -> None:
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
