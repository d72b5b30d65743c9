"""HFPolicy with the tiny model: seeded sampling is reproducible, lengths are bounded, output is text."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from pipeline.env.parsing import parse_tool_calls
from pipeline.env.tools import tool_schemas
from pipeline.policies.base import Policy
from pipeline.policies.hf import HFPolicy

CONTEXT = [
    {"role": "system", "content": "You read a long input through tools."},
    {"role": "user", "content": "What is the magic number for blue-fox?"},
    {
        "role": "assistant",
        "content": '<tool_call>\n{"name": "searchEngine", "arguments": {"keyword": "blue-fox"}}\n</tool_call>',
    },
    {"role": "tool", "content": "[chunk 3] ... the magic number for **blue-fox** is 4711 ..."},
]
MAX_NEW_TOKENS = 12
pytestmark = pytest.mark.slow  # loads the tiny model and generates


@pytest.fixture(scope="module")
def policy(tiny_model_dir: Path) -> HFPolicy:
    return HFPolicy(tiny_model_dir, temperature=1.0, top_p=0.95, top_k=50, max_new_tokens=MAX_NEW_TOKENS)


def test_seeded_sampling_is_reproducible_and_leaves_global_rng_alone(policy: HFPolicy) -> None:
    async def run() -> list[str]:
        # Concurrent calls share the model through the lock; each seed gives its own sample.
        actions = await asyncio.gather(*(policy.act(CONTEXT, tool_schemas(), seed=s) for s in (1, 2, 1)))
        for action in actions:  # token-in/token-out: the text is the decode of the ids the policy sampled
            assert action.token_ids and action.text == policy.decode(action.token_ids)
        return [action.text for action in actions]

    torch.manual_seed(123)
    state = torch.get_rng_state()
    first, second, again = asyncio.run(run())
    assert torch.equal(state, torch.get_rng_state())
    assert isinstance(first, str)
    assert first == again
    assert first != second  # a random 2k-token model repeating 12 sampled tokens is vanishingly unlikely
    parse_tool_calls(first)  # whatever it wrote, the environment can parse it


def test_respects_max_new_tokens(policy: HFPolicy) -> None:
    ids = policy.generate_token_ids(CONTEXT, tool_schemas(), seed=5)
    assert 1 <= len(ids) <= MAX_NEW_TOKENS
    action = asyncio.run(policy.act(CONTEXT, tool_schemas(), seed=5))
    assert (action.token_ids, action.text) == (ids, policy.decode(ids))


def test_greedy_is_deterministic_without_seed(tiny_model_dir: Path) -> None:
    greedy = HFPolicy(tiny_model_dir, temperature=0.0, max_new_tokens=6)
    assert isinstance(greedy, Policy)
    first = asyncio.run(greedy.act(CONTEXT, tool_schemas()))
    assert first.token_ids and first == asyncio.run(greedy.act(CONTEXT, tool_schemas()))
    asyncio.run(greedy.aclose())
    with pytest.raises(RuntimeError, match="after aclose"):
        greedy.generate_token_ids(CONTEXT)


def test_decode_keeps_markup_and_drops_end_tokens(policy: HFPolicy) -> None:
    tokenizer = policy.tokenizer
    text = '<think>\nok\n</think>\n\n<tool_call>\n{"name": "checkBudget", "arguments": {}}\n</tool_call>'
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    ids += tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    assert policy.decode(ids) == text


def test_from_model_wraps_a_loaded_model(policy: HFPolicy) -> None:
    wrapped = HFPolicy.from_model(policy.model, policy.tokenizer, top_k=50, top_p=0.95, max_new_tokens=MAX_NEW_TOKENS)
    assert wrapped.generate_token_ids(CONTEXT, tool_schemas(), seed=9) == policy.generate_token_ids(
        CONTEXT, tool_schemas(), seed=9
    )
