"""Property test: thousands of random and mutated model outputs never crash `step` or corrupt state."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.env.parsing import format_assistant_text
from pipeline.env.tools import TOOL_NAMES

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 50) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
plausible_args = st.fixed_dictionaries(
    {},
    optional={
        "chunk_id": st.integers(-2, 30) | json_values,
        "chunk_size": st.sampled_from([16, 64, 300, 4000, 0, -1]) | json_values,
        "overlap": st.integers(-1, 400),
        "scan": st.booleans() | json_values,
        "keyword": st.sampled_from(["item3", "number, item7", "", "zzz"]) | json_values,
        "key": st.sampled_from(["a", "b", ""]) | json_values,
        "summary": st.text(max_size=10),
        "content": st.text(max_size=20),
        "mode": st.sampled_from(["append", "overwrite", "delete", "bogus"]),
        "msg_id": st.integers(-1, 40) | st.lists(st.integers(-1, 40), max_size=4) | json_values,
        "answer": st.text(max_size=10) | json_values,
    },
)
well_formed = st.builds(
    lambda names, args: format_assistant_text(
        "", [{"name": n, "arguments": a} for n, a in zip(names, args, strict=False)]
    ),
    st.lists(st.sampled_from([*TOOL_NAMES, "fly"]), min_size=1, max_size=3),
    st.lists(plausible_args, min_size=3, max_size=3),
)


@st.composite
def mutated(draw):
    """A well-formed call with characters dropped, duplicated or inserted."""
    text = draw(well_formed)
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, max(len(text) - 1, 0)))
        op = draw(st.sampled_from(["drop", "dup", "insert"]))
        if op == "drop":
            text = text[:i] + text[i + 1 :]
        elif op == "dup":
            text = text[:i] + text[i : i + 8] + text[i:]
        else:
            junk = draw(st.sampled_from(["{", "}", '"', "<tool_call>", "</tool_call>", "\\", "\n"]))
            text = text[:i] + junk + text[i:]
    return text


outputs = st.one_of(
    well_formed,
    mutated(),
    st.text(max_size=60),
    st.builds(lambda v: f"<tool_call>{json.dumps(v)}</tool_call>", json_values),
    st.just("<think>hmm</think>"),
)


def check_consistent(env) -> None:
    msgs = [env.table[i] for i in env.context]
    assert msgs[0].role == "system" and msgs[1].role == "user"
    assert [m.role for m in msgs[2:]].count("system") == 0 and all(m.role != "user" for m in msgs[2:])
    ids = [m.msg_id for m in msgs]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assistant_ids = {m.msg_id for m in msgs if m.role == "assistant"}
    assert all(m.call_id in assistant_ids for m in msgs if m.role == "tool")
    assert len(env.turns) == env.rounds
    assert env.format_errors == sum(t.format_errors for t in env.turns)
    assert env.end_state in (None, "finished", "over_budget", "malformed", "max_rounds")
    assert env.done == (env.end_state is not None)
    assert env.context_tokens == env.count_tokens()
    assert set(env.notebook.listing().splitlines()[1:]) <= set(msgs[1].content.splitlines())


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(outputs, min_size=1, max_size=8))
def test_step_never_raises_and_state_stays_consistent(make_env_shared, texts):
    env = make_env_shared()
    for text in texts:
        rounds, was_done, table_size = env.rounds, env.done, len(env.table)
        result = env.step(text)
        check_consistent(env)
        assert result.done == env.done
        if was_done:  # after the end, nothing changes
            assert env.rounds == rounds and len(env.table) == table_size
        else:
            assert env.rounds == rounds + 1 and len(env.turns[-1].tool_results) >= 1
