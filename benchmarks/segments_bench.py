"""Tokens per episode as per-turn snapshots vs segments, for scripted episodes at several haystack lengths.

Usage: python benchmarks/segments_bench.py [--model runs/tiny/model] [--lengths 2000 8000 32000 128000]
       [--episodes 3] [--needles 1 3] [--json out.json]
Plays the scripted expert in the real environment (budgets counted with the model's tokenizer), cuts each
episode both ways with pipeline/segments.py, and prints the figures. Builds the tiny model first if the
folder is missing. Asserts nothing.

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
import time
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.table import Table
from transformers import AutoTokenizer

from pipeline.env.pensieve import EnvConfig
from pipeline.policies.scripted import ScriptedExpert
from pipeline.rollout import Episode, play_episode
from pipeline.segments import segment_trajectory, snapshot_trajectory
from pipeline.tasks.generators import generate_niah
from pipeline.tasks.graders import grade
from pipeline.tiny import build_tiny_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/tiny/model", help="Tokenizer (and chat template) to count with.")
    parser.add_argument("--lengths", type=int, nargs="+", default=[2000, 8000, 32000, 128000])
    parser.add_argument("--episodes", type=int, default=3, help="Episodes per (length, needles).")
    parser.add_argument("--needles", type=int, nargs="+", default=[1, 3], help="Needles per haystack.")
    parser.add_argument("--json", type=Path, default=None, help="Also write the figures here.")
    args = parser.parse_args()
    if not Path(args.model, "config.json").exists():
        build_tiny_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    policy, config = ScriptedExpert(), EnvConfig()

    rows = []
    for length in args.lengths:
        for needles in args.needles:
            tasks = generate_niah(args.episodes, length, length, needles, seed=length + needles, tokenizer=tokenizer)
            figures: dict[str, list[float]] = {k: [] for k in ("turns", "edits", "snap", "seg", "rows", "ms")}
            breaks: Counter[str] = Counter()
            correct = 0
            for task in tasks:
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
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
