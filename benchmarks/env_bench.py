"""Environment speed: tokenizing + indexing a 2M-token haystack, search latency, scripted steps/s.

Usage: python benchmarks/env_bench.py [--model runs/tiny/model] [--tokens 2000000] [--stubs-only]
Builds the tiny model first if the folder is missing. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from transformers import AutoTokenizer

from pipeline.env.parsing import format_assistant_text
from pipeline.env.pensieve import EnvConfig, PensieveEnv
from pipeline.models.tiny import build_tiny_model
from pipeline.policies.scripted import ScriptedExpert
from pipeline.tasks.generators import generate_niah


def stub_tokens_after_cycles(task, tokenizer, cycles: int, compact: bool) -> int:
    """Tokens of the stubs left after `cycles` scan-read, note, delete cycles (each deletes the last one too)."""
    config = EnvConfig(max_rounds=3 * cycles + 5, max_context_tokens=10**6, compact_stubs=compact)
    env = PensieveEnv(task.question, task.load_input(), tokenizer, config)
    env.step(format_assistant_text("", [{"name": "buildIndex", "arguments": {"chunk_size": 64}}]))
    previous: list[int] = []
    for i in range(cycles):
        start = env.next_msg_id
        env.step(format_assistant_text("", [{"name": "readChunk", "arguments": {"scan": True}}]))
        note = {"key": f"chunk {i}", "summary": f"read {i}", "content": f"chunk {i} read"}
        env.step(format_assistant_text("", [{"name": "note", "arguments": note}]))
        ids = previous + list(range(start, env.next_msg_id))
        env.step(format_assistant_text("", [{"name": "deleteContext", "arguments": {"msg_id": ids}}]))
        previous = list(range(env.next_msg_id - 2, env.next_msg_id))
    if len(env.notebook.notes) != cycles:
        raise RuntimeError(f"{len(env.notebook.notes)} notes after {cycles} cycles (end state {env.end_state})")
    stubs = [env.table[row].content for row in env.context if env.table[row].stub]
    return sum(len(tokenizer(s, add_special_tokens=False)["input_ids"]) for s in stubs)


def print_stub_line(tokenizer) -> None:
    task = generate_niah(1, 8000, 8000, seed=2, tokenizer=tokenizer)[0]  # > 100 chunks of 64 tokens
    plain = stub_tokens_after_cycles(task, tokenizer, 100, compact=False)
    compacted = stub_tokens_after_cycles(task, tokenizer, 100, compact=True)
    print(f"stub tokens after 100 read-note-delete cycles: plain {plain} compacted {compacted}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="runs/tiny/model")
    parser.add_argument("--tokens", type=int, default=2_000_000)
    parser.add_argument("--searches", type=int, default=50)
    parser.add_argument("--stubs-only", action="store_true", help="Only the stub compaction line.")
    args = parser.parse_args()
    if not Path(args.model, "config.json").exists():
        build_tiny_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    if args.stubs_only:
        print_stub_line(tokenizer)
        return

    start = time.perf_counter()
    task = generate_niah(1, args.tokens, args.tokens, seed=0, tokenizer=tokenizer)[0]
    generate_s = time.perf_counter() - start
    env = PensieveEnv(task.question, task.load_input(), tokenizer, EnvConfig())

    start = time.perf_counter()
    env.step(format_assistant_text("", [{"name": "analyzeText", "arguments": {}}]))
    tokenize_s = time.perf_counter() - start
    start = time.perf_counter()
    env.step(format_assistant_text("", [{"name": "buildIndex", "arguments": {"chunk_size": 4000}}]))
    index_s = time.perf_counter() - start

    key = task.metadata["needle_keys"][0]
    queries = [key, "special magic number", "green house, water", "government policy"] * args.searches
    latencies = []
    for query in queries[: args.searches]:
        start = time.perf_counter()
        env.index.search(query)
        latencies.append(time.perf_counter() - start)
    top = env.index.search(key)[0].chunk_id
    found = task.answer in env.index.chunk(top)

    start = time.perf_counter()
    policy, steps = ScriptedExpert(), 0
    episode = PensieveEnv(task.question, task.load_input(), tokenizer, EnvConfig())
    while not episode.done:
        episode.step(policy.decide(episode.messages()))
        steps += 1
    episode_s = time.perf_counter() - start

    small = generate_niah(20, 4000, 4000, seed=1, tokenizer=tokenizer)
    start, small_steps = time.perf_counter(), 0
    for t in small:
        e = PensieveEnv(t.question, t.load_input(), tokenizer, EnvConfig())
        while not e.done:
            e.step(policy.decide(e.messages()))
            small_steps += 1
    small_s = time.perf_counter() - start

    print(
        f"haystack: {env.input_tokens:,} tokens ({len(env.input_text) / 1e6:.1f} MB), generated in {generate_s:.2f} s"
    )
    print(f"analyzeText (tokenize the input once): {tokenize_s:.2f} s")
    print(f"buildIndex (chunk 4000 -> {len(env.index)} chunks, BM25): {index_s:.2f} s")
    print(
        f"searchEngine latency over {len(latencies)} queries: median {statistics.median(latencies) * 1e3:.1f} ms, "
        f"p95 {sorted(latencies)[int(0.95 * len(latencies)) - 1] * 1e3:.1f} ms; needle in top chunk: {found}"
    )
    print(
        f"scripted expert on the 2M-token task: {steps} steps in {episode_s:.2f} s "
        f"({steps / episode_s:.2f} steps/s incl. tokenize+index), end={episode.end_state}, "
        f"correct={episode.answer == task.answer}, peak context {max(t.context_tokens_after for t in episode.turns)}"
    )
    print(
        f"scripted expert on 20 x 4K-token tasks: {small_steps} steps in {small_s:.2f} s "
        f"({small_steps / small_s:.1f} steps/s)"
    )
    print_stub_line(tokenizer)


if __name__ == "__main__":
    main()
