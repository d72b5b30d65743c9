"""The SFT dataset as training sees it (SPEC 5): load, check, describe.

The curate stage saves a `datasets.Dataset` with `save_to_disk`. Each row is one segment:
`input_ids` (list[int]) and `completion_mask` (list[int], 1 exactly on the assistant tokens that are
trained), plus provenance (`episode_id`, `turns`, ...) that training ignores: only the two training
columns reach the trainer. TRL's SFTTrainer turns the mask into labels (-100 where the mask is 0) only
with `completion_only_loss=True`; pipeline.sft sets it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

logger = logging.getLogger(__name__)

TRAINING_COLUMNS = ("input_ids", "completion_mask")


class SFTDataError(ValueError):
    """A dataset that cannot be trained on; the message names the dataset, row and column."""


def load_sft_dataset(
    path: str | None = None, hub_name: str | None = None, split: str = "train", extra_columns: Sequence[str] = ()
) -> Dataset:
    """Load the curated rows from a `save_to_disk` directory (or a hub dataset) and keep the training columns,
    plus `extra_columns` (provenance that a transformation before training needs: shared-prefix rows group
    segments by `episode_id`)."""
    if (path is None) == (hub_name is None):
        raise SFTDataError("give exactly one of dataset_path (a save_to_disk directory) or dataset_name (hub)")
    source = path or hub_name
    if path is not None:
        if not Path(path, "dataset_info.json").exists() and not Path(path, "dataset_dict.json").exists():
            raise SFTDataError(f"{path}: not a dataset saved with Dataset.save_to_disk (no dataset_info.json)")
        dataset = load_from_disk(path)
    else:
        dataset = load_dataset(hub_name, split=split)
    if isinstance(dataset, DatasetDict):
        if split not in dataset:
            raise SFTDataError(f"{source}: no split {split!r} (splits: {sorted(dataset)})")
        dataset = dataset[split]
    missing = [c for c in (*TRAINING_COLUMNS, *extra_columns) if c not in dataset.column_names]
    if missing:
        raise SFTDataError(f"{source}: missing column(s) {missing}; columns are {dataset.column_names}")
    check_rows(dataset, source)
    # Provenance columns (episode_id, turns) stay in the saved dataset, never in the batches.
    return dataset.select_columns([*TRAINING_COLUMNS, *extra_columns])


def check_rows(dataset: Dataset, source: str) -> None:
    """Every row: a mask as long as the ids, with values in {0, 1}. Rows with nothing to train are allowed
    (TRL drops them) but counted in the log."""
    if len(dataset) == 0:
        raise SFTDataError(f"{source}: the dataset has no rows")
    untrained = 0
    for first_row, ids, mask in _batches(dataset):
        id_lengths, mask_lengths = np.diff(ids.offsets), np.diff(mask.offsets)
        if (bad := np.flatnonzero(id_lengths != mask_lengths)).size:
            row = int(bad[0])
            raise SFTDataError(
                f"{source}: row {first_row + row}: completion_mask has {mask_lengths[row]} entries, "
                f"input_ids has {id_lengths[row]}"
            )
        values = _values(mask)
        if (bad := np.flatnonzero((values != 0) & (values != 1))).size:
            row = int(np.searchsorted(mask.offsets, bad[0], side="right")) - 1
            raise SFTDataError(f"{source}: row {first_row + row}: completion_mask has value {values[bad[0]]}")
        untrained += int((_row_sums(mask) == 0).sum())
    if untrained:
        logger.warning("%s: %d of %d rows have no trained token; they are dropped", source, untrained, len(dataset))


def describe(dataset: Dataset, max_length: int | None) -> dict[str, Any]:
    """Figures for report.json: rows, tokens, trained tokens, and what truncation to max_length cuts."""
    rows = tokens = trained = cut_rows = cut_trained = 0
    for _, ids, mask in _batches(dataset):
        lengths = np.diff(ids.offsets)
        rows += len(lengths)
        tokens += int(lengths.sum())
        trained += int(_row_sums(mask).sum())
        if max_length is not None:
            long_rows = np.flatnonzero(lengths > max_length)
            cut_rows += len(long_rows)
            values = _values(mask)
            cut_trained += sum(int(values[mask.offsets[r] + max_length : mask.offsets[r + 1]].sum()) for r in long_rows)
    return {
        "rows": rows,
        "tokens": tokens,
        "trained_tokens": trained,
        "trained_share": trained / tokens if tokens else 0.0,
        "rows_longer_than_max_length": cut_rows,
        "trained_tokens_cut_by_max_length": cut_trained,
    }


class _Lists:
    """One list column of a batch as flat values plus row offsets (no Python lists: rows reach 32k tokens)."""

    def __init__(self, column: pa.ChunkedArray | pa.Array) -> None:
        array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        self.array = array
        self.offsets = array.offsets.to_numpy() - array.offsets[0].as_py()


def _batches(dataset: Dataset, batch_size: int = 4096) -> Iterator[tuple[int, _Lists, _Lists]]:
    arrow = dataset.select_columns(list(TRAINING_COLUMNS)).with_format("arrow")
    for first_row, batch in zip(range(0, len(dataset), batch_size), arrow.iter(batch_size), strict=True):
        yield first_row, _Lists(batch["input_ids"]), _Lists(batch["completion_mask"])


def _values(lists: _Lists) -> np.ndarray:
    return lists.array.flatten().to_numpy(zero_copy_only=False).astype(np.int64)


def _row_sums(lists: _Lists) -> np.ndarray:
    cumulative = np.concatenate([[0], np.cumsum(_values(lists))])
    return cumulative[lists.offsets[1:]] - cumulative[lists.offsets[:-1]]
