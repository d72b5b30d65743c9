"""Tokens per episode and SFT time per epoch as per-turn snapshots vs segments vs shared-prefix rows, for
scripted episodes at several haystack lengths.

Usage: python benchmarks/segments_bench.py [--model runs/tiny/model] [--lengths 2000 8000 32000 128000]
       [--episodes 3] [--needles 1 3] [--sft-episodes 1] [--sft-needles 1] [--repeats 3] [--warmup 2] [--no-sft]
       [--sft-sets snapshots segments shared-prefix] [--profile default|demo] [--max-length 8192] [--json out.json]
The SmolLM2 demo's data: `--profile demo --model runs/demo/model --lengths 2000 33000` (the demo's environment:
8192-token context, compact prompts; the scripted teacher reading 256-token chunks; the SFT levers
the demo's profile sets, read from it). The last lines read
`tokens per episode: snapshots <s> segments <g> shared-prefix <p>` (means over every episode played) and, per
length, the SFT epoch-time ratio of shared-prefix rows to segment rows.
Plays the scripted expert in the real environment (budgets counted with the model's tokenizer), cuts each
episode both ways with pipeline/data/segments.py, and prints the figures. Builds the tiny model first if the
folder is missing. Asserts nothing.

SFT time: for each haystack length, the first `--sft-episodes` episodes of each of the `--sft-needles` needle
counts (default: 1 episode, 1 needle, to stay within ~3 minutes; `--sft-episodes 3 --sft-needles 1 3` takes
them all) make one episode set, cut both ways into rows (`Segment.to_row`, as curate saves them). Each row
set is saved with `Dataset.save_to_disk` and trained by the trainer pipeline/sft.py builds (`build_trainer`
with recipes/tiny/sft.yaml: TRL's SFTTrainer, completion_only_loss on our completion_mask, AdamW, clipping,
the recipe's schedule) on `--model`, batch size 1 per row and no gradient accumulation, so one
optimizer step per row; no checkpoints. Shared-prefix rows (`shared_prefix: true`, pipeline/data/shared_prefix.py)
pack each episode's segments under one prefix within `--max-length` tokens: one row (one optimizer step) per
episode where segment rows take one per segment, for the same trained tokens and the same gradient.
After `--warmup` steps each, the trainers alternate one-epoch `trainer.train()` runs (`--repeats` times, so
machine load hits them alike); the figure is the median wall time of an epoch (every row once: forward,
backward, optimizer step, the trainer's own logging).

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

from clock import EpochClock  # benchmarks/clock.py (scripts run from this folder)
from rich.console import Console
from rich.table import Table
from transformers import AutoTokenizer, PrinterCallback

from pipeline.data.segments import Segment, segment_trajectory, snapshot_trajectory
from pipeline.data.shared_prefix import pack_episode
from pipeline.env.pensieve import EnvConfig
from pipeline.models.tiny import build_tiny_model
from pipeline.play.rollout import Episode, play_episode
from pipeline.policies.scripted import ScriptedExpert
from pipeline.settings.cpu_bf16 import float32_where_bf16_is_slow
from pipeline.tasks.generators import generate_niah
from pipeline.tasks.graders import grade

ROOT = Path(__file__).resolve().parents[1]
SFT_RECIPE = ROOT / "recipes/tiny/sft.yaml"


def sft_trainer(model: str, rows: list[dict[str, Any]], work: Path, max_length: int, extra: list[str]):
    """pipeline/sft.py's trainer on these rows: one row per optimizer step, no checkpoints, no printed logs."""
    import datasets
    import transformers

    from pipeline.sft import build_trainer, make_parser

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    datasets.Dataset.from_list(rows).save_to_disk(str(work / "data"))
    flags = [
        "--config", str(SFT_RECIPE), "--model_name_or_path", model, "--dataset_path", str(work / "data"),
        "--output_dir", str(work / "out"), "--max_length", str(max_length), "--per_device_train_batch_size", "1",
        "--gradient_accumulation_steps", "1", "--save_strategy", "no", "--report_to", "none",
        "--disable_tqdm", "true", "--log_level", "error", "--dataloader_pin_memory", "false", *extra,
    ]  # fmt: skip
    trainer, data_report = build_trainer(*make_parser().parse_args_and_config(flags))
    trainer.remove_callback(PrinterCallback)
    return trainer, data_report


def time_sft(
    model: str, row_sets: dict[str, list[Segment]], warmup: int, repeats: int, max_length: int, extra: list[str]
) -> dict[str, dict]:
    """Median seconds per epoch of each row set, trained in alternation (see the module doc). The set
    "shared-prefix" is the segment rows trained with shared_prefix: true."""
    figures: dict[str, dict] = {}
    longest = max(s.n_tokens for segments in row_sets.values() for s in segments)
    max_length = max(max_length, longest)  # no row set is truncated
    with tempfile.TemporaryDirectory(prefix="segments_bench_") as tmp:
        trainers, clocks = {}, {}
        for name, segments in row_sets.items():
            work = Path(tmp, name)
            flags = [*extra, *(["--shared_prefix", "true"] if name == "shared-prefix" else [])]
            trainer, data_report = sft_trainer(model, [s.to_row() for s in segments], work, max_length, flags)
            if warmup > 0:
                trainer.args.max_steps = warmup
                trainer.train()  # warm-up: allocator, kernels, threads
            trainer.args.max_steps, trainer.args.num_train_epochs = -1, 1
            clocks[name] = EpochClock()
            trainer.add_callback(clocks[name])
            trainers[name] = trainer
            packed = data_report.get("shared_prefix")
            figures[name] = {
                "rows": len(trainer.train_dataset),
                "tokens": packed["tokens"] if packed else data_report["tokens"],
                "trained_tokens": data_report["trained_tokens"],
            }
        for _ in range(repeats):
            for trainer in trainers.values():
                trainer.train()
        for name, clock in clocks.items():
            figures[name] |= {"epoch_seconds": statistics.median(clock.times), "epoch_seconds_all": clock.times}
    return figures


SFT_SETS = ("snapshots", "segments", "shared-prefix")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/tiny/model", help="Tokenizer (and chat template) to count with.")
    parser.add_argument("--lengths", type=int, nargs="+", default=[2000, 8000, 32000, 128000])
    parser.add_argument("--episodes", type=int, default=3, help="Episodes per (length, needles).")
    parser.add_argument("--needles", type=int, nargs="+", default=[1, 3], help="Needles per haystack.")
    parser.add_argument("--sft-episodes", type=int, default=1, help="Episodes per (length, needles) to train on.")
    parser.add_argument("--sft-needles", type=int, nargs="+", default=[1], help="Needle counts to train on.")
    parser.add_argument("--sft-sets", nargs="+", choices=SFT_SETS, default=list(SFT_SETS), help="Row sets to time.")
    parser.add_argument("--repeats", type=int, default=3, help="Timed epochs per row set (median).")
    parser.add_argument("--warmup", type=int, default=2, help="Untimed optimizer steps per row set first.")
    parser.add_argument("--no-sft", action="store_true", help="Only count tokens; no SFT timing.")
    profiles = "default: EnvConfig(), the scripted expert's defaults; demo: the SmolLM2 demo's"
    parser.add_argument("--profile", choices=["default", "demo"], default="default", help=profiles)
    parser.add_argument("--max-length", type=int, default=8192, help="Longest shared-prefix row (model context).")
    parser.add_argument("--json", type=Path, default=None, help="Also write the figures here.")
    return parser.parse_args()


def setup(profile: str) -> tuple[ScriptedExpert, EnvConfig, str, list[str]]:
    """The policy, environment, task templates and extra SFT flags of a profile."""
    if profile == "default":
        return ScriptedExpert(), EnvConfig(), "classic", []
    from pipeline.demo import PROFILES

    demo = PROFILES["full"]
    teacher = demo.recipes["teacher"]
    policy = ScriptedExpert(**{k: teacher["policy"][k] for k in ("chunk_size", "recovery_share")})
    return policy, EnvConfig(**teacher["environment"]), "train", demo_sft_flags(demo)


def demo_sft_flags(demo: Any) -> list[str]:
    """The CPU levers of the demo's SFT recipe, read from its profile (so the benchmark follows the demo), with
    bf16 only where this CPU has it natively, as the demo writes the recipe."""
    sft = dict(demo.recipes["sft"])
    float32_where_bf16_is_slow(sft)
    flags = ["--trainable_layers", str(sft["trainable_layers"])] if sft.get("trainable_layers") else []
    return flags + (["--bf16", "true", "--use_cpu", "true"] if sft["bf16"] else [])


def main() -> None:
    args = parse_args()
    if not Path(args.model, "config.json").exists():
        build_tiny_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    policy, config, templates, sft_flags = setup(args.profile)

    rows, sft_sets, episode_tokens = [], {}, {"snap": [], "seg": [], "shared": []}
    for length in args.lengths:
        sft_sets[length] = {name: [] for name in args.sft_sets}
        for needles in args.needles:
            tasks = generate_niah(
                args.episodes, length, length, needles, seed=length + needles, tokenizer=tokenizer, templates=templates
            )
            figures: dict[str, list[float]] = {k: [] for k in ("turns", "edits", "snap", "seg", "shared", "rows", "ms")}
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
                packed = pack_episode(traj.episode_id, [(s.input_ids, s.completion_mask) for s in segments],
                                      args.max_length)  # fmt: skip
                figures["turns"].append(len(traj.turns))
                figures["edits"].append(sum(t.edited for t in traj.turns))
                figures["snap"].append(sum(s.n_tokens for s in snapshots))
                figures["seg"].append(sum(s.n_tokens for s in segments))
                figures["shared"].append(sum(len(r.input_ids) for r in packed))
                figures["rows"].append(len(segments))
                breaks.update(s.break_reason for s in segments)
                if k < args.sft_episodes and needles in args.sft_needles:
                    for name in args.sft_sets:
                        sft_sets[length][name] += snapshots if name == "snapshots" else segments
            for key in episode_tokens:
                episode_tokens[key] += figures[key]
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
                    "shared_prefix_tokens_per_episode": mean["shared"],
                    "ratio": mean["seg"] / mean["snap"],
                    "shared_prefix_ratio": mean["shared"] / mean["seg"],
                    "segment_starts": dict(breaks),
                    "segmenting_ms_per_episode": mean["ms"],
                }
            )

    console = Console(width=max(Console().width, 130))
    print_token_table(console, rows, args.model)
    sft_rows = []
    if not args.no_sft:
        for length, row_sets in sft_sets.items():
            figures = time_sft(args.model, row_sets, args.warmup, args.repeats, args.max_length, sft_flags)
            sft_rows.append(
                {
                    "haystack_tokens": length,
                    "episodes": len({s.episode_id for s in row_sets[args.sft_sets[0]]}),
                    **figures,
                }
            )
        print_sft_table(console, sft_rows, args)
    mean = {k: statistics.fmean(v) for k, v in episode_tokens.items()}
    line = f"snapshots {mean['snap']:.0f} segments {mean['seg']:.0f} shared-prefix {mean['shared']:.0f}"
    console.print(f"tokens per episode: {line}")
    for r in sft_rows:
        if "segments" in r and "shared-prefix" in r:
            ratio = r["shared-prefix"]["epoch_seconds"] / r["segments"]["epoch_seconds"]
            tokens = r["shared-prefix"]["tokens"] / r["segments"]["tokens"]
            console.print(f"sft epoch time shared-prefix/segments {ratio:.3f} (tokens {tokens:.3f}) "
                          f"at {r['haystack_tokens']} haystack tokens")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"tokens": rows, "sft": sft_rows}, indent=2) + "\n")


def print_token_table(console: Console, rows: list[dict], model: str) -> None:
    table = Table(title=f"tokens per episode: per-turn snapshots vs segments vs shared-prefix rows ({model})")
    columns = ("haystack", "needles", "ok", "turns", "edits", "segments", "turns/seg", "snapshots", "segments ",
               "seg/snap", "shared-prefix", "shared/seg", "ms/ep")  # fmt: skip
    for column in columns:
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
            f"{r['shared_prefix_tokens_per_episode']:,.0f}",
            f"{r['shared_prefix_ratio']:.3f}",
            f"{r['segmenting_ms_per_episode']:.0f}",
        )
    console.print(table)
    console.print(
        "segment starts: " + json.dumps({f"{r['haystack_tokens']}/{r['needles']}": r["segment_starts"] for r in rows})
    )


def print_sft_table(console: Console, sft_rows: list[dict], args: argparse.Namespace) -> None:
    table = Table(
        title=f"SFT seconds per epoch of rows: TRL SFTTrainer via pipeline.sft.build_trainer ({SFT_RECIPE.name}, "
        f"profile {args.profile}, completion_mask loss, AdamW), batch 1 per row, {args.warmup} warm-up steps, median "
        f"of {args.repeats} epochs ({args.model})"
    )
    table.add_column("haystack", justify="right")
    table.add_column("episodes", justify="right")
    for name in args.sft_sets:
        for column in ("rows", "tokens", "s/epoch"):
            table.add_column(f"{name} {column}", justify="right")
    for r in sft_rows:
        cells = [f"{r['haystack_tokens']:,}", str(r["episodes"])]
        for name in args.sft_sets:
            cells += [str(r[name]["rows"]), f"{r[name]['tokens']:,}", f"{r[name]['epoch_seconds']:.2f}"]
        table.add_row(*cells)
    console.print(table)


if __name__ == "__main__":
    main()
