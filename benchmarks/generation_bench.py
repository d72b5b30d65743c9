"""Episode play time of a local HF student: prefix-cached batched rounds vs HF `generate` per turn (the path before).

Both play the same held-out NIAH episodes greedily in the same environment through `pipeline.play.rollout.collect`:
- before: `prefix_cache: false`, every turn re-encodes the whole context (`model.generate`), episodes one by one;
- after: `prefix_cache: true`, lockstep rounds over all episodes, each turn computes only what follows the longest
  cached token prefix, and decodes every live episode in one batch.
Also at bfloat16 weights (the demo's eval setting) and the share of prompt tokens served from the cache. Greedy
decisions should agree (up to float rounding in padded batches): the accuracy of both is printed.

    python benchmarks/generation_bench.py --model runs/demo/sft --tasks 8 --threads 2

`--eval-settings` plays only the demo eval's way (bfloat16 weights, batches of `--max-batch-size` 16, `--concurrency`
64 episodes in play) and prints one line, to time one tree against another (e.g. a worktree of an older commit
first on PYTHONPATH) with the same command.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer

from pipeline.data.trajectory_files import iter_trajectories
from pipeline.env.pensieve import EnvConfig
from pipeline.play.rollout import collect, plan_episodes
from pipeline.policies.hf import HFPolicy
from pipeline.tasks.generators import generate_niah
from pipeline.tasks.graders import grade


def play(policy: HFPolicy, tasks, tokenizer, config: EnvConfig, concurrency: int) -> tuple[float, float, int]:
    """Seconds, accuracy and turns of greedy episodes over `tasks`."""
    with tempfile.TemporaryDirectory(prefix="generation_bench_") as tmp:
        path = Path(tmp) / "trajectories.jsonl"
        started = time.perf_counter()
        asyncio.run(collect(plan_episodes(tasks, 1, 0), policy, tokenizer, config, path,
                            lambda task, answer: grade(task, answer), concurrency, progress=False))  # fmt: skip
        seconds = time.perf_counter() - started
        episodes = list(iter_trajectories(path))
    return seconds, sum(t.correct for t in episodes) / len(episodes), sum(len(t.turns) for t in episodes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="runs/demo/sft")
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--eval-settings", action="store_true", help="only the demo eval's way of playing")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    tasks = generate_niah(args.tasks, 500, 2000, seed=100, tokenizer=tokenizer, templates="heldout")
    config = EnvConfig(max_context_tokens=8192, max_output_tokens=args.max_new_tokens, max_rounds=24,
                       compact_prompts=True, search_top_k=5)  # fmt: skip
    common = {"temperature": 0.0, "max_new_tokens": args.max_new_tokens}
    if args.eval_settings:
        policy = HFPolicy(args.model, dtype="bfloat16", max_batch_size=args.max_batch_size, **common)
        seconds, accuracy, turns = play(policy, tasks, tokenizer, config, args.concurrency)
        pool = policy.generator.pool
        print(f"eval settings (bf16, batches of {args.max_batch_size}, {args.concurrency} in play): {seconds:.1f} s "
              f"for {turns} turns, accuracy {accuracy:.0%}, prompt tokens computed {pool.misses}")  # fmt: skip
        return
    before = HFPolicy(args.model, dtype="float32", prefix_cache=False, **common)
    seconds_before, accuracy_before, turns = play(before, tasks, tokenizer, config, 1)
    print(f"before (generate per turn, fp32): {seconds_before:.1f} s for {turns} turns, accuracy {accuracy_before:.0%}")
    for dtype in ("float32", "bfloat16"):
        after = HFPolicy(args.model, dtype=dtype, prefix_cache=True, max_batch_size=64, **common)
        seconds, accuracy, turns = play(after, tasks, tokenizer, config, len(tasks))
        pool = after.generator.pool
        reused = pool.hits / max(1, pool.hits + pool.misses)
        ratio = seconds_before / seconds
        print(f"after (prefix cache + batched rounds, {dtype}): {seconds:.1f} s for {turns} turns ({ratio:.2f}x), "
              f"accuracy {accuracy:.0%}, prompt tokens from cache {reused:.0%}")  # fmt: skip


if __name__ == "__main__":
    main()
