"""Search modes on paraphrase and literal NIAH: recall@5 of bm25, dense and hybrid, index/embedding time.

Usage: python benchmarks/search_bench.py [--model runs/tiny/model] [--tasks 100] [--tokens 7000]
    [--chunk-size 128] [--expert-tasks 30]
Each task's query is its question verbatim; a hit is the needle's chunk among the first five results.
Embeddings go to a fresh temporary cache: dense's time is the first embedding, hybrid's reuses it; the
scripted expert then plays the paraphrase tasks with each mode (over the same cached chunks). Needs the
[dense] extra. The last line reads `recall@5 bm25 <x> dense <y> hybrid <z>` (paraphrase tasks).
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer

from pipeline.env.parsing import format_assistant_text
from pipeline.env.pensieve import EnvConfig, PensieveEnv
from pipeline.models.tiny import build_tiny_model
from pipeline.policies.scripted import ScriptedExpert
from pipeline.tasks.generators import generate_niah
from pipeline.tasks.paraphrase import generate_paraphrase_niah
from pipeline.tasks.schema import Task

MODES = ("bm25", "dense", "hybrid")
_HIT = re.compile(r"^chunk (\d+) \(score", re.MULTILINE)


def recall_at_5(tasks: list[Task], tokenizer, config: EnvConfig, chunk_size: int) -> tuple[float, float, int, int]:
    """(recall@5, seconds spent in buildIndex + first search, input tokens, chunks) over `tasks`."""
    hits, seconds, tokens, chunks = 0, 0.0, 0, 0
    for task in tasks:
        env = PensieveEnv(task.question, task.load_input(), tokenizer, config)
        _ = env.offsets  # tokenizing is not indexing: done before the clock starts
        start = time.perf_counter()
        env.step(format_assistant_text("", [{"name": "buildIndex", "arguments": {"chunk_size": chunk_size}}]))
        env.step(format_assistant_text("", [{"name": "searchEngine", "arguments": {"keyword": task.question}}]))
        seconds += time.perf_counter() - start
        result = env.table[env.context[-1]].content
        top = [int(c) for c in _HIT.findall(result)][:5]
        hits += any(str(task.answer) in env.index.chunk(c) for c in top)
        tokens, chunks = tokens + env.input_tokens, chunks + len(env.index)
    return hits / len(tasks), seconds, tokens, chunks


def expert_accuracy(tasks: list[Task], tokenizer, config: EnvConfig, chunk_size: int) -> float:
    policy = ScriptedExpert(chunk_size=chunk_size, overlap=0)  # the benchmark's chunks: their embeddings are cached
    correct = 0
    for task in tasks:
        env = PensieveEnv(task.question, task.load_input(), tokenizer, config)
        while not env.done:
            env.step(policy.decide(env.messages()))
        correct += env.answer == task.answer
    return correct / len(tasks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="runs/tiny/model")
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--tokens", type=int, default=7000)
    parser.add_argument("--chunk-size", type=int, default=128)
    parser.add_argument("--expert-tasks", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--literal-tasks", type=int, default=None, help="Literal NIAH tasks (default: --tasks).")
    parser.add_argument("--cache-dir", default=None, help="Keep embeddings here (default: a fresh temporary dir).")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if not Path(args.model, "config.json").exists():
        build_tiny_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    suites = {
        "paraphrase": generate_paraphrase_niah(
            args.tasks, args.tokens, args.tokens, seed=args.seed, tokenizer=tokenizer
        ),
        "literal": generate_niah(
            args.literal_tasks or args.tasks, args.tokens, args.tokens, seed=args.seed, tokenizer=tokenizer
        ),
    }
    recall: dict[tuple[str, str], float] = {}
    with tempfile.TemporaryDirectory() as scratch:
        cache = args.cache_dir or scratch
        from pipeline.env.dense import load_encoder

        load_encoder(None)  # loading the model is a one-off per process, not per 100K tokens
        for suite, tasks in suites.items():
            for mode in MODES:
                shared = str(Path(cache, suite))  # hybrid reuses dense's embeddings: its time is a cached search
                config = EnvConfig(search_mode=mode, embedding_cache_dir=shared, max_rounds=60)
                r, seconds, tokens, chunks = recall_at_5(tasks, tokenizer, config, args.chunk_size)
                recall[suite, mode] = r
                print(
                    f"{suite:10s} {mode:6s} recall@5 {r:.2f} over {len(tasks)} tasks, {chunks / len(tasks):.0f} chunks "
                    f"each; buildIndex + first search {seconds / tokens * 1e5:.2f} s per 100K tokens"
                    + (" (embeddings from the cache)" if mode == "hybrid" or args.cache_dir else ""),
                    flush=True,
                )
        expert = {}
        for mode in MODES:
            config = EnvConfig(
                search_mode=mode, embedding_cache_dir=str(Path(cache, "paraphrase", "dense")), max_rounds=60
            )
            expert[mode] = expert_accuracy(
                suites["paraphrase"][: args.expert_tasks], tokenizer, config, args.chunk_size
            )
    print(
        f"scripted expert accuracy on {args.expert_tasks} paraphrase tasks: "
        + " ".join(f"{m} {expert[m]:.2f}" for m in MODES)
    )
    print("recall@5 on literal NIAH: " + " ".join(f"{m} {recall['literal', m]:.2f}" for m in MODES))
    print("recall@5 " + " ".join(f"{m} {recall['paraphrase', m]:.2f}" for m in MODES))


if __name__ == "__main__":
    main()
