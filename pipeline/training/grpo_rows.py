"""GRPO's training rows from played episodes (SPEC 6): segments, the sampled picks, TRL's prompt/completion split.

Every turn GRPO plays records the ids its policy sampled (token-in/token-out), and the segments are built with
`sampled_ids=True`: the trained tokens of each assistant turn are exactly the sampled ones, and where the sampler
gave logprobs (vLLM) every trained token has its own, so TRL's importance-sampling correction covers all of them.
How many turns a decode -> encode round trip would have changed is counted (`RowStats.reencode_mismatches`), so
the log shows what training on re-rendered text would have got wrong on this model.
"""

from __future__ import annotations

import logging
from dataclasses import astuple, dataclass
from typing import Any

from pipeline.data.segments import Segment, SegmentError, reencode_differs, segment_trajectory
from pipeline.data.snapshots import episode_rng, sample_segments
from pipeline.data.trajectory import Trajectory

logger = logging.getLogger(__name__)


@dataclass
class RowStats:
    """Per-generation sums over this process's episodes, gathered over processes for the log."""

    segments: int = 0  # segments cut
    trained: int = 0  # segments picked for training
    unsegmentable: int = 0  # episodes with turns but no segment (SegmentError)
    edit_picks: int = 0  # picks made because they are edit-adjacent
    sampled_turns: int = 0  # turns that recorded sampled ids
    reencode_mismatches: int = 0  # of those, turns whose decode -> encode gives other ids

    def as_list(self) -> list[int]:
        return list(astuple(self))


def episode_rows(
    tokenizer: Any,
    episodes: list[Trajectory],
    advantages: list[float],
    args: Any,
    step: int,
    segment_kwargs: dict[str, Any],
    sampling_logps: bool,
) -> tuple[list[dict[str, Any]], RowStats]:
    """The sampled segments of every episode as rows. `args` is the StateLMGRPOConfig (segment caps, seed, chunk
    sizes); `step` the global step (seeds the picks); `sampling_logps`: attach the sampler's logprobs (vLLM)."""
    rows_per_process = args.steps_per_generation * args.per_device_train_batch_size
    rows, stats = [], RowStats()
    for traj, advantage in zip(episodes, advantages, strict=True):
        for turn in traj.turns:
            differs = reencode_differs(tokenizer, traj, turn)
            stats.sampled_turns += differs is not None
            stats.reencode_mismatches += bool(differs)
        try:
            segments = segment_trajectory(
                tokenizer, traj, max_tokens_per_segment=args.max_tokens_per_segment,
                chat_template_kwargs=segment_kwargs, sampled_ids=True,
            )  # fmt: skip
        except SegmentError as exc:  # e.g. a teacher-text turn that merges with the template: no rows, still scored
            logger.warning("episode %s is not trained: %s", traj.episode_id, exc)
            segments = []
        picks = sample_segments(
            [s.ends_with_edit for s in segments],
            [s.starts_after_edit for s in segments],
            args.max_segments_per_episode,
            episode_rng(args.seed, step, traj.episode_id),
        )
        stats.segments += len(segments)
        stats.trained += len(picks)
        stats.unsegmentable += int(bool(traj.turns) and not segments)
        stats.edit_picks += sum(pick.reason == "edit" for pick in picks)
        for pick in picks:
            # Each episode's row weights sum to rows_per_process / episodes: with TRL's per-row mean over the
            # chunk and the division by the accumulation steps, every episode weighs 1 / episodes.
            weight = pick.weight * rows_per_process / len(episodes)
            rows.append(segment_row(traj, segments[pick.index], advantage * weight, sampling_logps))
    return rows, stats


def segment_row(traj: Trajectory, segment: Segment, advantage: float, sampling_logps: bool) -> dict[str, Any]:
    """One row: the segment's ids split at its first trained token into TRL's prompt / completion, `tool_mask` =
    the segment's mask, and (with `sampling_logps`) the sampler's logprob of every trained token that has one."""
    ids, mask = segment.input_ids, segment.completion_mask
    start = mask.index(1)  # segments always hold a trained token: every turn of an episode is trained
    row = {"prompt": ids[:start], "completion": ids[start:], "tool_mask": mask[start:], "advantage": advantage}
    if sampling_logps:
        # A sampled turn's span is exactly its sampled ids (segments: sampled_ids=True), so its logprobs line up
        # 1:1; NaN is left only on untrained tokens and on turns without logprobs (TRL turns NaN into ratio 1)
        logps = [float("nan")] * len(ids)
        for index, (lo, hi) in zip(segment.turns, segment.spans, strict=True):
            sampled = traj.turns[index].logprobs
            if sampled is None:
                continue
            if len(sampled) != hi - lo:
                raise RuntimeError(f"episode {traj.episode_id} turn {index}: {len(sampled)} logprobs, {hi - lo} ids")
            logps[lo:hi] = sampled
        row["sampling_logps"] = logps[start:]
    return row
