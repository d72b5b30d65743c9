"""Prefix-cached batched generation gives what HF `generate` gives, while reusing the cache across turns."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.env.pensieve import EnvConfig, PensieveEnv
from pipeline.policies.hf import HFPolicy
from pipeline.policies.prefix_cache import PrefixCachingGenerator, PrefixPool, SamplingSettings
from pipeline.policies.scripted import ScriptedExpert
from pipeline.tasks.generators import generate_niah

pytestmark = pytest.mark.slow  # loads the tiny model and generates


@pytest.fixture(scope="module")
def expert_contexts(tiny_model_dir: Path):
    """Three episodes of the scripted expert: the context before each of their turns, and their tools."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    episodes = []
    for task in generate_niah(3, 300, 900, seed=3, tokenizer=tokenizer):
        env = PensieveEnv.from_task(task, tokenizer, EnvConfig(max_rounds=12))
        contexts = []
        while not env.done:
            contexts.append(env.messages())
            env.step(ScriptedExpert(chunk_size=128).decide(env.messages()))
        episodes.append((contexts, env.tools))
    return episodes


def test_greedy_batches_match_hf_generate_turn_after_turn(tiny_model_dir: Path, expert_contexts) -> None:
    cached = HFPolicy(tiny_model_dir, temperature=0.0, max_new_tokens=10, dtype="float32")
    plain = HFPolicy.from_model(cached.model, cached.tokenizer, temperature=0.0, max_new_tokens=10, prefix_cache=False)
    turns = min(len(contexts) for contexts, _ in expert_contexts)
    for turn in range(turns):  # one batch per turn: prompts of different lengths, caches from earlier turns
        contexts = [c[turn] for c, _ in expert_contexts]
        tools = [t for _, t in expert_contexts]
        batched = cached.generate_batch(contexts, tools, [None] * len(contexts))
        one_by_one = [plain.generate_token_ids(c, t) for c, t in zip(contexts, tools, strict=True)]
        assert batched == one_by_one, f"turn {turn}"
    pool = cached.generator.pool
    assert pool.hits > pool.misses  # most prompt tokens came from the cache, not from a new prefill


def test_seeded_sampling_does_not_depend_on_the_batch(tiny_model_dir: Path, expert_contexts) -> None:
    policy = HFPolicy(tiny_model_dir, temperature=1.0, top_p=0.9, top_k=50, max_new_tokens=8, dtype="float32")
    contexts = [c[2] for c, _ in expert_contexts]
    tools = [t for _, t in expert_contexts]
    together = policy.generate_batch(contexts, tools, [11, 12, 13])
    policy.generator.clear()
    alone = policy.generate_batch(contexts[1:2], tools[1:2], [12])
    assert alone[0] == together[1]
    assert policy.generate_batch(contexts, tools, [11, 12, 13]) == together  # now from cached prefixes


def test_pool_hands_over_extensions_and_copies_branches() -> None:
    layer = (torch.arange(5.0).view(1, 1, 5, 1), torch.arange(5.0).view(1, 1, 5, 1))
    pool = PrefixPool(max_entries=2)
    from pipeline.policies.prefix_cache import CachedSequence

    pool.put(CachedSequence([1, 2, 3, 4, 5], [layer]))
    branch = pool.take([1, 2, 3, 9, 9])  # shares 3 tokens: a copy, the original stays for its owner
    assert branch.ids == [1, 2, 3] and branch.layers[0][0].shape[2] == 3 and len(pool.entries) == 1
    whole = pool.take([1, 2, 3, 4, 5, 6, 7])  # extends it: handed over
    assert whole.ids == [1, 2, 3, 4, 5] and not pool.entries
    assert pool.take([7, 8]) is None


def test_each_row_stops_at_its_own_end_of_turn(tiny_model_dir: Path) -> None:
    policy = HFPolicy(tiny_model_dir, temperature=0.0, max_new_tokens=6, dtype="float32")
    prompts = [policy.tokenizer(text, add_special_tokens=False)["input_ids"] for text in ("the magic", "a chunk of")]
    settings = SamplingSettings(max_new_tokens=6, temperature=0.0)
    free = PrefixCachingGenerator(policy.model, policy.tokenizer.pad_token_id, []).generate(prompts, settings)
    assert [len(row) for row in free] == [6, 6]
    stop = free[0][2]  # pretend the third token row 0 samples ends the turn
    stopped = PrefixCachingGenerator(policy.model, policy.tokenizer.pad_token_id, [stop]).generate(prompts, settings)
    assert stopped[0] == free[0][: free[0].index(stop) + 1]  # row 0 ends there, its end token included
    cut = free[1].index(stop) + 1 if stop in free[1] else 6
    assert stopped[1] == free[1][:cut]  # row 1 is unaffected by row 0 stopping


def test_rows_that_end_leave_the_batch_with_their_cache(tiny_model_dir: Path) -> None:
    policy = HFPolicy(tiny_model_dir, temperature=0.0, max_new_tokens=8, dtype="float32")
    texts = ("the magic number", "a chunk of text", "search the index", "note the key")
    prompts = [policy.tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    settings = SamplingSettings(max_new_tokens=8, temperature=0.0)
    pad = policy.tokenizer.pad_token_id
    free = PrefixCachingGenerator(policy.model, pad, []).generate(prompts, settings)
    stop = free[0][1]  # row 0 ends at its first or second token: the other rows decode on without it
    generator = PrefixCachingGenerator(policy.model, pad, [stop])
    together = generator.generate(prompts, settings)
    alone = [PrefixCachingGenerator(policy.model, pad, [stop]).generate([p], settings)[0] for p in prompts]
    assert together == alone
    assert len(together[0]) <= 2 and any(len(row) > 2 for row in together[1:])
    # the row that left first put its cache in the pool: prompt + its sampled tokens but the last, the same keys
    # as a fresh prefill of those tokens
    ids = [*prompts[0], *together[0][:-1]]
    entry = next(e for e in generator.pool.entries if e.ids == ids)
    fresh = PrefixCachingGenerator(policy.model, pad, [])._prefill([*ids, stop])
    for (keys, values), (fresh_keys, fresh_values) in zip(entry.layers, fresh.layers, strict=True):
        torch.testing.assert_close(keys, fresh_keys, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(values, fresh_values, rtol=1e-4, atol=1e-5)
    # sampled: each row keeps its own seeded generator after the batch shrinks
    sampled = SamplingSettings(max_new_tokens=8, temperature=1.0)
    free = PrefixCachingGenerator(policy.model, pad, []).generate(prompts, sampled, [1, 2, 3, 4])
    stop_sampled = free[0][1]
    rows = PrefixCachingGenerator(policy.model, pad, [stop_sampled]).generate(prompts, sampled, [1, 2, 3, 4])
    each = [PrefixCachingGenerator(policy.model, pad, [stop_sampled]).generate([p], sampled, [s])[0]
            for p, s in zip(prompts, [1, 2, 3, 4], strict=True)]  # fmt: skip
    assert rows == each
    assert len(rows[0]) <= 2 and any(len(row) > 2 for row in rows[1:])  # the batch did shrink


def test_every_episode_of_a_round_finds_its_cache_next_round(tiny_model_dir: Path) -> None:
    # more episodes in play than one batch holds (as eval's 64 episodes in batches of 16)
    policy = HFPolicy(tiny_model_dir, temperature=0.0, max_new_tokens=4, dtype="float32", max_batch_size=2)
    contexts = [[{"role": "user", "content": f"question {i}: where is needle {i * 7919}?"}] for i in range(16)]
    policy.generate_batch(contexts, [[] for _ in contexts], [None] * len(contexts))
    pool = policy.generator.pool
    misses = pool.misses
    policy.generate_batch(contexts, [[] for _ in contexts], [None] * len(contexts))
    assert pool.misses - misses == len(contexts)  # only each prompt's last token: the rest came from its own cache


def test_pool_bytes_stay_within_their_bound_oldest_out_first() -> None:
    from pipeline.policies.prefix_cache import CachedSequence

    def sequence(first: int, length: int) -> CachedSequence:  # one layer of float32 keys and values
        return CachedSequence(list(range(first, first + length)), [(torch.zeros(1, 1, length, 1),) * 2])

    pool = PrefixPool(max_entries=100, max_bytes=3 * 2 * 4 * 10)  # three sequences of 10 tokens
    for first in (0, 100, 200):
        pool.put(sequence(first, 10))
    assert pool.nbytes == 3 * 80
    pool.put(sequence(300, 10))  # over the bound: the oldest goes
    assert [e.ids[0] for e in pool.entries] == [100, 200, 300] and pool.nbytes == 3 * 80
    taken = pool.take(list(range(200, 215)))  # handed over: its bytes leave the pool with it
    assert taken.ids[0] == 200 and pool.nbytes == 2 * 80
