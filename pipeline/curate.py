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
import time
from pathlib import Path
from typing import Any

from pipeline.data.balance import balance_turns, distribution
from pipeline.data.reject import filter_episodes
from pipeline.data.segment_rows import save_atomically, write_segments
from pipeline.settings.curate_recipe import CurateRecipe, load_curate_recipe
from pipeline.settings.preflight import check_hub_push, check_model_path

logger = logging.getLogger(__name__)
__all__ = ["CurateRecipe", "load_curate_recipe", "run_curate"]

REPORT = "report.json"
DATASET = "dataset"


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
    # Rows in episode-id order (a stable sort keeps each episode's segments in order): collection writes
    # episodes as they end, and SFT's seeded shuffle of another row order trains another model
    order = out / f".{DATASET}.order.arrow"
    dataset = Dataset.from_file(str(scratch)).sort("episode_id", indices_cache_file_name=str(order))
    save_atomically(dataset, out / DATASET, progress)
    del dataset
    scratch.unlink(missing_ok=True)
    order.unlink(missing_ok=True)

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
