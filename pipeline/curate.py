"""Stage 1b: trajectories -> SFT dataset (`statelm curate --recipe recipes/<model>/curate.yaml`, SPEC 5).

    reject sampling -> action-type balancing -> segments -> Dataset.save_to_disk(<output_dir>/dataset)

Two passes over the trajectory files, so memory holds one episode at a time: the first checks and
filters every episode and balances the action types of the kept turns; the second cuts the kept
episodes into segments and streams the rows to an Arrow file. Corrupt or schema-violating lines are
skipped with file:line and reason, and counted. The dataset replaces the old one only once complete,
and `<output_dir>/report.json` holds the figures.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from tqdm.auto import tqdm

from pipeline.balance import balance_turns, distribution
from pipeline.preflight import check_hub_push, check_model_path
from pipeline.recipe import load_yaml
from pipeline.rollout import iter_trajectories
from pipeline.segments import SegmentError, check_trajectory, segment_trajectory
from pipeline.trajectory import Trajectory

logger = logging.getLogger(__name__)

REPORT = "report.json"
DATASET = "dataset"


# ---------------------------------------------------------------------------------------------
# Recipe


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FilterConfig(_Strict):
    """Reject sampling: which episodes are kept."""

    require_finished: bool = Field(default=True, description="Keep only episodes ended through `finish`.")
    require_correct: bool = Field(default=True, description="Keep only episodes the grader marked correct.")
    max_format_errors: int = Field(default=0, ge=0, description="Most format errors a kept episode may have.")
    max_context_tokens: int | None = Field(
        default=32000, gt=0, description="Most context tokens (peak over the turns) a kept episode may use."
    )
    max_rounds: int | None = Field(default=150, gt=0, description="Most rounds a kept episode may use.")


class SegmentConfig(_Strict):
    """How kept episodes become rows (pipeline/segments.py)."""

    max_turns_per_segment: int | None = Field(default=None, gt=0, description="1 gives per-turn snapshots.")
    max_tokens_per_segment: int | None = Field(
        default=None, gt=0, description="Start a new segment before a row grows longer than this."
    )
    chat_template_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Passed to the chat template, as at collection (e.g. enable_thinking)."
    )
    train_error_turns: bool = Field(
        default=False, description="Train turns that produced a format error (kept episodes may have some)."
    )


class BalanceConfig(_Strict):
    """Action-type balancing (pipeline/balance.py): caps on each type's share of the trained turns."""

    max_share: float = Field(default=1.0, ge=0.0, le=1.0, description="Cap for every type without its own.")
    max_share_by_type: dict[str, float] = Field(
        default_factory=lambda: {"deleteContext": 0.35}, description="Per-type caps, e.g. deleteContext: 0.35."
    )


class CurateRecipe(_Strict):
    """Everything `statelm curate` needs."""

    inputs: list[str] = Field(min_length=1, description="Trajectory JSONL files written by `statelm collect`.")
    output_dir: str = Field(description="Gets dataset/ (save_to_disk) and report.json.")
    tokenizer: str = Field(description="Path or hub id of the student's tokenizer (its chat template renders rows).")
    seed: int = 0
    filters: FilterConfig = Field(default_factory=FilterConfig)
    segments: SegmentConfig = Field(default_factory=SegmentConfig)
    balance: BalanceConfig = Field(default_factory=BalanceConfig)
    push_to_hub: bool = False
    hub_id: str | None = Field(default=None, description="Dataset repo to push to, e.g. org/statelm-sft.")
    hub_private: bool = True

    @model_validator(mode="after")
    def _hub(self) -> CurateRecipe:
        if self.push_to_hub and not self.hub_id:
            raise ValueError("push_to_hub needs hub_id")
        return self


def load_curate_recipe(path: str | Path, overrides: dict[str, Any] | None = None) -> CurateRecipe:
    """Read and validate a curate recipe; `overrides` (dotted keys, e.g. 'balance.max_share') win; None is unset."""
    data = load_yaml(path)
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        *parents, leaf = dotted.split(".")
        node = data
        for key in parents:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ValueError(f"{path}: {key} must be a mapping to override {dotted}")
        node[leaf] = value
    try:
        return CurateRecipe.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"{path}: invalid recipe: {problems}") from exc


# ---------------------------------------------------------------------------------------------
# Reject sampling


def rejection_reasons(traj: Trajectory, filters: FilterConfig) -> list[str]:
    """Every reason the episode is not kept (empty when it is kept)."""
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
    if filters.max_rounds is not None and max(traj.rounds, len(traj.turns)) > filters.max_rounds:
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


def run_curate(recipe: CurateRecipe, progress: bool = True) -> dict[str, Any]:
    """Filter, balance, segment and save; returns (and writes) the report."""
    from datasets import Dataset
    from transformers import AutoTokenizer

    started = time.time()
    for path in recipe.inputs:  # before any work: a missing file, tokenizer or Hub login fails in one line
        if not Path(path).is_file():
            raise FileNotFoundError(f"inputs: trajectory file not found: {path}")
    check_model_path(recipe.tokenizer, "tokenizer")
    if recipe.push_to_hub:
        check_hub_push(recipe.hub_id, "hub_id")
    out = Path(recipe.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(recipe.tokenizer)
    seg = recipe.segments

    # Pass 1: reject sampling; the action types of the turns to train
    figures: Counter[str] = Counter()
    read_errors: list[str] = []
    duplicates: list[str] = []
    rejections: Counter[str] = Counter()
    invalid: list[str] = []
    kept: set[str] = set()
    candidates: list[tuple[str, int, str]] = []
    episodes_in = 0
    episodes = read_episodes(recipe.inputs, read_errors, duplicates)
    for traj in tqdm(episodes, desc="filter", unit="ep", disable=not progress):
        episodes_in += 1
        reasons = rejection_reasons(traj, recipe.filters)
        if not reasons:
            try:
                check_trajectory(traj)
            except SegmentError as exc:
                reasons = ["invalid_record"]
                invalid.append(str(exc))
        rejections.update(reasons)
        if reasons:
            continue
        kept.add(traj.episode_id)
        figures["untrained_by_policy"] += sum(not t.trained for t in traj.turns)
        candidates += [
            (traj.episode_id, t.index, t.action)
            for t in traj.turns
            if t.trained and (seg.train_error_turns or not t.format_errors)  # trained=False: the policy's own mask
        ]
    for problem in read_errors + duplicates:
        logger.warning("skipped %s", problem)
    rejections.update({"corrupt_line": len(read_errors), "duplicate_episode": len(duplicates)})
    rejections = +rejections  # drop zero counts

    # Balance the action types over the whole dataset
    masked = balance_turns(candidates, recipe.balance.max_share, recipe.balance.max_share_by_type, recipe.seed)
    trained: dict[str, set[int]] = {}
    for episode_id, index, _ in candidates:
        if (episode_id, index) not in masked:
            trained.setdefault(episode_id, set()).add(index)

    # Pass 2: segments, streamed to an Arrow file
    breaks: Counter[str] = Counter()
    trained_actions: Counter[str] = Counter()
    scratch = out / f".{DATASET}.arrow"
    with _RowWriter(scratch) as writer:
        episodes = (t for t in read_episodes(recipe.inputs, [], []) if t.episode_id in kept)
        for traj in tqdm(episodes, total=len(kept), desc="segments", unit="ep", disable=not progress):
            try:
                segments = segment_trajectory(
                    tokenizer,
                    traj,
                    trained.get(traj.episode_id, set()),
                    seg.max_turns_per_segment,
                    seg.max_tokens_per_segment,
                    seg.chat_template_kwargs,
                )
            except SegmentError as exc:
                rejections["invalid_record"] += 1
                invalid.append(str(exc))
                kept.discard(traj.episode_id)
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
                figures["rows"] += 1
                figures["tokens"] += segment.n_tokens
                figures["trained_tokens"] += segment.n_trained_tokens
                figures["snapshot_tokens"] += segment.snapshot_tokens
                figures["trained_turns"] += len(segment.trained_turns)
                trained_actions.update(a for a, t in zip(segment.action_types, segment.trained, strict=True) if t)
    for problem in invalid:
        logger.warning("rejected %s", problem)
    if figures["prompt_token_mismatches"]:
        logger.warning(
            "%d turns render to a prompt of another length than the environment counted at collection: the rows "
            "differ from what the policy saw. Check `tokenizer` and `segments.chat_template_kwargs` (enable_thinking).",
            figures["prompt_token_mismatches"],
        )
    if figures["rows"] == 0:
        scratch.unlink(missing_ok=True)
        raise ValueError(f"no rows to write: {episodes_in} episodes read, rejections {dict(rejections)}")

    dataset = Dataset.from_file(str(scratch))
    _save_atomically(dataset, out / DATASET, progress)
    del dataset
    scratch.unlink(missing_ok=True)
    before = distribution(action for _, _, action in candidates)
    report = {
        "stage": "curate",
        "inputs": recipe.inputs,
        "tokenizer": recipe.tokenizer,
        "dataset": str(out / DATASET),
        "hub_id": recipe.hub_id if recipe.push_to_hub else None,
        "episodes_in": episodes_in,
        "episodes_kept": len(kept),
        "rejections": dict(rejections.most_common()),
        "skipped_lines": read_errors,
        "duplicate_episodes": duplicates,
        "invalid_episodes": invalid,
        "rows": figures["rows"],
        "tokens": figures["tokens"],
        "trained_tokens": figures["trained_tokens"],
        "trained_turns": figures["trained_turns"],
        "snapshot_rows": figures["trained_turns"],
        "snapshot_tokens": figures["snapshot_tokens"],
        "segment_to_snapshot_tokens": figures["tokens"] / figures["snapshot_tokens"],
        "segments_without_trained_turns": figures["segments_without_trained_turns"],
        "segment_breaks": dict(breaks.most_common()),
        "prompt_token_mismatches": figures["prompt_token_mismatches"],
        "actions_before": before,
        "actions_after": {action: trained_actions.get(action, 0) for action in before},
        "masked_by_balancing": len(masked),
        "masked_by_policy": figures["untrained_by_policy"],
        "recipe": recipe.model_dump(),
        "seconds": round(time.time() - started, 2),
    }
    (out / REPORT).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if recipe.push_to_hub:  # after report.json: a failed push loses neither the dataset nor its figures
        Dataset.load_from_disk(str(out / DATASET)).push_to_hub(recipe.hub_id, private=recipe.hub_private)
    return report


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
