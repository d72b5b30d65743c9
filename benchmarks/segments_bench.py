"""Tokens per episode and SFT time per epoch as per-turn snapshots vs segments, for scripted episodes at several
haystack lengths.

Usage: python benchmarks/segments_bench.py [--model runs/tiny/model] [--lengths 2000 8000 32000 128000]
       [--episodes 3] [--needles 1 3] [--sft-episodes 1] [--sft-needles 1] [--repeats 3] [--warmup 2] [--no-sft]
       [--json out.json]
Plays the scripted expert in the real environment (budgets counted with the model's tokenizer), cuts each
episode both ways with pipeline/segments.py, and prints the figures. Builds the tiny model first if the
folder is missing. Asserts nothing.

SFT time: for each haystack length, the first `--sft-episodes` episodes of each of the `--sft-needles` needle
counts (default: 1 episode, 1 needle, to stay within ~3 minutes; `--sft-episodes 3 --sft-needles 1 3` takes
them all) make one episode set, cut both ways into rows (`Segment.to_row`, as curate saves them). Each row
set is saved with `Dataset.save_to_disk` and trained by the trainer pipeline/sft.py builds (`build_trainer`
with recipes/tiny/sft.yaml: TRL's SFTTrainer, completion_only_loss on our completion_mask, AdamW, clipping,
the recipe's schedule) on the tiny model, batch size 1 per row and no gradient accumulation, so one
optimizer step per row; no checkpoints. After `--warmup` steps each, the two trainers alternate one-epoch
`trainer.train()` runs (`--repeats` times, so machine load hits both alike); the figure is the median wall
time of an epoch (every row once: forward, backward, optimizer step, the trainer's own logging).

What to expect: the scripted loop (search -> read -> note -> delete) edits the context on most of its
turns (a note re-renders the task message's notebook list, a delete stubs messages), and every edit
starts a segment. Segments then only merge the opening turns (analyze, budget, index, search, read) and,
with several facts, the search -> read runs between a delete and the next note. The table shows that
share directly (edits per episode, turns per segment).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from transformers import AutoTokenizer, PrinterCallback, TrainerCallback

from pipeline.env.pensieve import EnvConfig
from pipeline.policies.scripted import ScriptedExpert
from pipeline.rollout import Episode, play_episode
from pipeline.segments import Segment, segment_trajectory, snapshot_trajectory
from pipeline.tasks.generators import generate_niah
from pipeline.tasks.graders import grade
from pipeline.tiny import build_tiny_model

ROOT = Path(__file__).resolve().parents[1]
SFT_RECIPE = ROOT / "recipes/tiny/sft.yaml"


class EpochClock(TrainerCallback):
    """Wall time of every training epoch."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_epoch_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self.started)


def sft_trainer(model: str, rows: list[dict[str, Any]], work: Path):
    """pipeline/sft.py's trainer on these rows: one row per optimizer step, no checkpoints, no printed logs."""
    import datasets
    import transformers

    from pipeline.sft import build_trainer, make_parser

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    datasets.Dataset.from_list(rows).save_to_disk(str(work / "data"))
    max_length = max(len(r["input_ids"]) for r in rows)
    flags = [
        "--config", str(SFT_RECIPE), "--model_name_or_path", model, "--dataset_path", str(work / "data"),
        "--output_dir", str(work / "out"), "--max_length", str(max_length), "--per_device_train_batch_size", "1",
        "--gradient_accumulation_steps", "1", "--save_strategy", "no", "--report_to", "none",
        "--disable_tqdm", "true", "--log_level", "error", "--dataloader_pin_memory", "false",
    ]  # fmt: skip
    trainer, data_report = build_trainer(*make_parser().parse_args_and_config(flags))
    trainer.remove_callback(PrinterCallback)
    return trainer, data_report


def time_sft(model: str, row_sets: dict[str, list[Segment]], warmup: int, repeats: int) -> dict[str, dict]:
    """Median seconds per epoch of each row set, trained in alternation (see the module doc)."""
    figures: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="segments_bench_") as tmp:
        trainers, clocks = {}, {}
        for name, segments in row_sets.items():
            work = Path(tmp, name)
            trainer, data_report = sft_trainer(model, [s.to_row() for s in segments], work)
            if warmup > 0:
                trainer.args.max_steps = warmup
                trainer.train()  # warm-up: allocator, kernels, threads
            trainer.args.max_steps, trainer.args.num_train_epochs = -1, 1
            clocks[name] = EpochClock()
            trainer.add_callback(clocks[name])
            trainers[name] = trainer
            figures[name] = {
                "rows": len(trainer.train_dataset),
                "tokens": data_report["tokens"],
                "trained_tokens": data_report["trained_tokens"],
            }
        for _ in range(repeats):
            for trainer in trainers.values():
                trainer.train()
        for name, clock in clocks.items():
            figures[name] |= {"epoch_seconds": statistics.median(clock.times), "epoch_seconds_all": clock.times}
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/tiny/model", help="Tokenizer (and chat template) to count with.")
    parser.add_argument("--lengths", type=int, nargs="+", default=[2000, 8000, 32000, 128000])
    parser.add_argument("--episodes", type=int, default=3, help="Episodes per (length, needles).")
    parser.add_argument("--needles", type=int, nargs="+", default=[1, 3], help="Needles per haystack.")
    parser.add_argument("--sft-episodes", type=int, default=1, help="Episodes per (length, needles) to train on.")
    parser.add_argument("--sft-needles", type=int, nargs="+", default=[1], help="Needle counts to train on.")
    parser.add_argument("--repeats", type=int, default=3, help="Timed epochs per row set (median).")
    parser.add_argument("--warmup", type=int, default=2, help="Untimed optimizer steps per row set first.")
    parser.add_argument("--no-sft", action="store_true", help="Only count tokens; no SFT timing.")
    parser.add_argument("--json", type=Path, default=None, help="Also write the figures here.")
    args = parser.parse_args()
    if not Path(args.model, "config.json").exists():
        build_tiny_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    policy, config = ScriptedExpert(), EnvConfig()

    rows, sft_sets = [], {}
    for length in args.lengths:
        sft_sets[length] = {"snapshots": [], "segments": []}
        for needles in args.needles:
            tasks = generate_niah(args.episodes, length, length, needles, seed=length + needles, tokenizer=tokenizer)
            figures: dict[str, list[float]] = {k: [] for k in ("turns", "edits", "snap", "seg", "rows", "ms")}
            breaks: Counter[str] = Counter()
            correct = 0
            for k, task in enumerate(tasks):
                episode = Episode(task, 0, seed=0)
                traj = asyncio.run(play_episode(episode, policy, tokenizer, config, lambda t, a: grade(t, a)))
                correct += traj.correct
                start = time.perf_counter()
                segments = segment_trajectory(tokenizer, traj)
                figures["ms"].append(1000 * (time.perf_counter() - start))
                snapshots = snapshot_trajectory(tokenizer, traj)
                figures["turns"].append(len(traj.turns))
                figures["edits"].append(sum(t.edited for t in traj.turns))
                figures["snap"].append(sum(s.n_tokens for s in snapshots))
                figures["seg"].append(sum(s.n_tokens for s in segments))
                figures["rows"].append(len(segments))
                breaks.update(s.break_reason for s in segments)
                if k < args.sft_episodes and needles in args.sft_needles:
                    sft_sets[length]["snapshots"] += snapshots
                    sft_sets[length]["segments"] += segments
            mean = {k: statistics.fmean(v) for k, v in figures.items()}
            rows.append(
                {
                    "haystack_tokens": length,
                    "needles": needles,
                    "episodes": len(tasks),
                    "correct": correct,
                    "turns_per_episode": mean["turns"],
                    "edits_per_episode": mean["edits"],
                    "segments_per_episode": mean["rows"],
                    "turns_per_segment": mean["turns"] / mean["rows"],
                    "snapshot_tokens_per_episode": mean["snap"],
                    "segment_tokens_per_episode": mean["seg"],
                    "ratio": mean["seg"] / mean["snap"],
                    "segment_starts": dict(breaks),
                    "segmenting_ms_per_episode": mean["ms"],
                }
            )

    table = Table(title=f"tokens per episode: per-turn snapshots vs segments ({args.model})")
    for column in (
        "haystack",
        "needles",
        "ok",
        "turns",
        "edits",
        "segments",
        "turns/seg",
        "snapshots",
        "segments ",
        "ratio",
        "ms/ep",
    ):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(
            f"{r['haystack_tokens']:,}",
            str(r["needles"]),
            f"{r['correct']}/{r['episodes']}",
            f"{r['turns_per_episode']:.1f}",
            f"{r['edits_per_episode']:.1f}",
            f"{r['segments_per_episode']:.1f}",
            f"{r['turns_per_segment']:.2f}",
            f"{r['snapshot_tokens_per_episode']:,.0f}",
            f"{r['segment_tokens_per_episode']:,.0f}",
            f"{r['ratio']:.3f}",
            f"{r['segmenting_ms_per_episode']:.0f}",
        )
    console = Console(width=max(Console().width, 130))
    console.print(table)
    console.print(
        "segment starts: " + json.dumps({f"{r['haystack_tokens']}/{r['needles']}": r["segment_starts"] for r in rows})
    )

    sft_rows = []
    if not args.no_sft:
        for length, row_sets in sft_sets.items():
            figures = time_sft(args.model, row_sets, args.warmup, args.repeats)
            snap, seg = figures["snapshots"], figures["segments"]
            sft_rows.append(
                {
                    "haystack_tokens": length,
                    "episodes": len({s.episode_id for s in row_sets["segments"]}),
                    "snapshots": snap,
                    "segments": seg,
                    "ratio": seg["epoch_seconds"] / snap["epoch_seconds"],
                }
            )
        table = Table(
            title=f"SFT seconds per epoch of rows: TRL SFTTrainer via pipeline.sft.build_trainer ({SFT_RECIPE.name}, "
            f"completion_mask loss, AdamW), batch 1 per row, {args.warmup} warm-up steps, median of {args.repeats} "
            f"epochs ({args.model})"
        )
        for column in (
            "haystack",
            "episodes",
            "snap rows",
            "snap tokens",
            "snap s/epoch",
            "seg rows",
            "seg tokens",
            "seg s/epoch",
            "ratio seg/snap",
        ):
            table.add_column(column, justify="right")
        for r in sft_rows:
            snap, seg = r["snapshots"], r["segments"]
            table.add_row(
                f"{r['haystack_tokens']:,}",
                str(r["episodes"]),
                str(snap["rows"]),
                f"{snap['tokens']:,}",
                f"{snap['epoch_seconds']:.2f}",
                str(seg["rows"]),
                f"{seg['tokens']:,}",
                f"{seg['epoch_seconds']:.2f}",
                f"{r['ratio']:.3f}",
            )
        console.print(table)
    if args.json:
        args.json.write_text(json.dumps({"tokens": rows, "sft": sft_rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
