"""The RLM environment: REPL state, output truncation, format errors, budgets, sub-calls and their concurrency."""

from __future__ import annotations

import asyncio
import time

import pytest

from pipeline.env.registry import env_config, make_env
from pipeline.env.rlm import RLMConfig, RLMEnv, extract_code_blocks
from pipeline.env.sandbox import SandboxConfig
from pipeline.policies.factory import sub_policy_for
from pipeline.policies.rlm_expert import ScriptedRLMExpert, answer_sub_prompt
from pipeline.settings.recipe import env_section
from pipeline.tasks.aggregation import generate_aggregation
from pipeline.tasks.generators import GENERATORS
from pipeline.tasks.graders import grade
from pipeline.tasks.schema import Task

TEXT = "\n".join(f"line {i}: the code of item{i} is {1000 + i}" for i in range(300))


def code(*blocks: str, thought: str = "Let me run this.") -> str:
    return thought + "".join(f"\n\n```python\n{b}\n```" for b in blocks)


class SlowEcho:
    """A sub-policy that takes `delay` seconds per call and records how many calls overlap."""

    name = "slow-echo"

    def __init__(self, delay: float) -> None:
        self.delay, self.in_flight, self.peak, self.calls = delay, 0, 0, 0

    async def act(self, messages, tools, seed=None):
        self.in_flight += 1
        self.calls += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.in_flight -= 1
        return f"<think>hmm</think>echo: {messages[-1]['content']}"

    async def aclose(self):
        return None


class Broken:
    name = "broken"

    async def act(self, messages, tools, seed=None):
        raise ConnectionError("server down")

    async def aclose(self):
        return None


@pytest.fixture
def make_rlm(tokenizer):
    envs: list[RLMEnv] = []

    def build(text: str = TEXT, question: str = "What is the code of item7?", sub_model=None, **config) -> RLMEnv:
        config.setdefault("sandbox", SandboxConfig(block_timeout_seconds=3, grace_seconds=1))
        env = RLMEnv(question, text, tokenizer, RLMConfig(**config), sub_model=sub_model)
        envs.append(env)
        return env

    yield build
    for env in envs:
        env.close()


def last_output(env: RLMEnv) -> str:
    return env.messages()[-1]["content"]


def test_repl_state_persists_across_turns_and_the_answer_is_submitted(make_rlm):
    env = make_rlm()
    env.step(code("import re\nhits = re.findall(r'item7 is (\\d+)', context)\nprint(hits)"))
    assert "['1007']" in last_output(env) and not env.done
    env.step(code("value = hits[0]\nvalue"))
    assert "'1007'" in last_output(env)
    env.step(code('answer["content"] = value\nanswer["ready"] = True', "print('not reached')"))
    assert env.done and env.end_state == "finished" and env.answer == "1007"
    assert "Answer submitted: '1007'" in last_output(env) and "not reached" not in last_output(env)
    assert env.format_errors == 0 and env.rounds == 3
    assert not env.sandbox.alive  # the episode's REPL process is gone once it ends
    traj = env.trajectory("e#0", "t", "test", 0, correct=True)
    assert traj.env == "rlm" and traj.end_state == "finished" and traj.reward == 1.0
    for turn in traj.turns:  # every turn's prompt is rebuilt from the table, and its action is a code block
        assert traj.messages[turn.context[0]].role == "system" and traj.messages[turn.assistant].role == "assistant"
    assert [t.action for t in traj.turns] == ["python", "python", "finish"]
    assert traj.turns[-1].tool_calls[0]["arguments"]["answer"] == "1007"
    assert [b["turn"] for b in traj.metadata["rlm"]["blocks"]] == [0, 1, 2]


def test_several_blocks_run_in_order_and_list_answers_are_joined(make_rlm):
    env = make_rlm()
    env.step(code("x = 2", "x * 21", 'answer["content"] = ["a", "b"]\nanswer["ready"] = True'))
    outputs = [m["content"] for m in env.messages()[3:]]
    assert len(outputs) == 3 and "(no output)" in outputs[0] and "42" in outputs[1]
    assert env.answer == "a, b" and env.end_state == "finished"


def test_long_output_is_cut_with_a_note(make_rlm):
    env = make_rlm(max_output_chars=500)
    env.step(code("print(context)"))
    out = last_output(env)
    assert len(out) < 800 and "characters cut" in out and f"the output was {len(TEXT) + 1} characters" in out
    assert out.split("\n", 1)[1].startswith("line 0:") and out.rstrip().endswith("is 1299")


def test_no_code_block_and_syntax_errors_are_format_errors_runtime_errors_are_not(make_rlm):
    env = make_rlm(max_format_errors=3)
    env.step("I think the answer is 1007.")
    assert env.format_errors == 1 and "no ```python code block" in last_output(env)
    env.step(code("1 / 0"))  # a runtime error is an observation: it resets the streak
    assert env.format_errors == 1 and "ZeroDivisionError" in last_output(env)
    assert env.consecutive_error_turns == 0
    env.step(code("def broken(:", "print('never')"))
    assert env.format_errors == 2 and "SyntaxError" in last_output(env) and "were not run" in last_output(env)
    env.step("```python\nprint('cut off")
    assert "never closed" in last_output(env)
    env.step("<think>```python\nprint('in thought')\n```</think>no code outside the thought")
    assert env.done and env.end_state == "malformed" and env.format_errors == 4
    assert env.trajectory("e", "t", "p", 0, False).reward == -1.0


def test_budgets_end_the_episode(make_rlm):
    env = make_rlm(max_rounds=2)
    env.step(code("1"))
    env.step(code("2"))
    assert env.end_state == "max_rounds"
    env = make_rlm(max_context_tokens=2048 + 900, max_output_chars=4000)
    assert not env.done
    env.step(code("print(context[:3000])"))
    assert env.end_state == "over_budget"
    env = make_rlm(max_episode_seconds=0.2)
    env.step(code("import time\ntime.sleep(0.4)"))
    assert env.end_state == "over_budget"


def test_a_timed_out_block_is_an_observation_and_keeps_the_state(make_rlm):
    env = make_rlm(sandbox=SandboxConfig(block_timeout_seconds=1, grace_seconds=1))
    env.step(code("kept = 5", "while True:\n    pass"))
    assert "wall-clock limit" in last_output(env) and env.format_errors == 0
    env.step(code("kept"))
    assert "5" in last_output(env)
    blocks = env.trajectory("e", "t", "p", 0, False).metadata["rlm"]["blocks"]
    assert [b["timed_out"] for b in blocks] == [False, True, False]


def test_a_repl_that_dies_restarts_with_context(make_rlm):
    env = make_rlm()
    env.step(code("kept = 1\nimport os\nos._exit(1)"))
    assert "variables are gone" in last_output(env)
    env.step(code("print(len(context), 'kept' in globals())"))
    assert f"{len(TEXT)} False" in last_output(env)
    assert env.trajectory("e", "t", "p", 0, False).metadata["rlm"]["repl_restarts"] == 1


def test_without_a_sub_model_llm_query_returns_an_error_string(make_rlm):
    env = make_rlm()
    assert "not available" in env.messages()[1]["content"]
    env.step(code("print(llm_query('hi'))"))
    assert "[llm_query error: no sub-model" in last_output(env)


def test_sub_calls_are_recorded_with_token_counts(make_rlm):
    env = make_rlm(sub_model=SlowEcho(0.0), record_prompt_chars=10)
    env.step(code("r = llm_query('what is two plus two')\nprint(r)", "print(llm_query_batched(['a', 'b']))"))
    assert "echo: what is two plus two" in env.messages()[-2]["content"]  # reasoning stripped
    assert "['echo: a', 'echo: b']" in last_output(env)
    rlm = env.trajectory("e", "t", "p", 0, False).metadata["rlm"]
    assert rlm["sub_call_count"] == 3 and rlm["sub_call_errors"] == 0
    first = rlm["sub_calls"][0]
    assert first["prompt"] == "what is tw" and first["prompt_chars"] == 20 and first["prompt_tokens"] > 0
    assert first["response"].startswith("<think>") and first["response_tokens"] > 0
    assert [c["block"] for c in rlm["sub_calls"]] == [1, 2, 2] and rlm["sub_call_prompt_tokens"] > 0


def test_sub_call_failures_and_limits_are_replies_not_crashes(make_rlm):
    env = make_rlm(sub_model=Broken())
    env.step(code("print(llm_query_batched(['a', 'b']))"))
    assert last_output(env).count("[llm_query error: ConnectionError: server down]") == 2
    env = make_rlm(sub_model=SlowEcho(0.0), max_sub_calls=3, max_sub_prompt_chars=50)
    env.step(code("print(llm_query_batched(['a', 'b']))", "print(llm_query_batched(['c', 'd']))"))
    assert "['echo: c', \"[llm_query error: the episode's limit of 3 sub-calls is used up]\"]" in last_output(env)
    env.step(code("llm_query('x' * 51)"))
    assert "ValueError" in last_output(env) and "limit is 50" in last_output(env)
    env.step(code("llm_query_batched('not a list')"))
    assert "TypeError" in last_output(env) and not env.done


def test_batched_sub_calls_run_concurrently_and_respect_the_parallelism_bound(make_rlm):
    delay = 0.5
    single = SlowEcho(delay)
    env = make_rlm(sub_model=single)
    started = time.monotonic()
    env.step(code("llm_query('one')"))
    one_call = time.monotonic() - started

    wide = SlowEcho(delay)
    env = make_rlm(sub_model=wide, max_parallel_sub_calls=8)
    started = time.monotonic()
    env.step(code("replies = llm_query_batched([f'q{i}' for i in range(8)])\nprint(len(replies))"))
    eight_calls = time.monotonic() - started
    assert "8" in last_output(env) and wide.calls == 8 and wide.peak == 8
    assert eight_calls < 2 * one_call < 8 * delay  # ~1x a single call, not 8x

    narrow = SlowEcho(delay)
    env = make_rlm(sub_model=narrow, max_parallel_sub_calls=2)
    started = time.monotonic()
    env.step(code("replies = llm_query_batched([f'q{i}' for i in range(8)])"))
    capped = time.monotonic() - started
    assert narrow.peak == 2 and 4 * delay <= capped < 8 * delay  # 4 waves of 2
    print(f"one call {one_call:.2f}s, 8 concurrent {eight_calls:.2f}s, 8 at parallelism 2 {capped:.2f}s")


def test_sub_model_time_does_not_count_against_the_block_timeout(make_rlm):
    env = make_rlm(sub_model=SlowEcho(1.5), sandbox=SandboxConfig(block_timeout_seconds=1, grace_seconds=0.2))
    env.step(code("print(llm_query('slow'))"))
    assert "echo: slow" in last_output(env)


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "```",
        "```python\n```",
        "```python\n\x00\n```",
        "```python\n" + "(" * 5000 + "\n```",
        "```python\nimport os; os.kill(os.getpid(), 9)\n```",
        "```python\n" + "print('x' * 10**7)\n" * 3 + "```",
        "\ufffd" * 1000 + "```py\nanswer = 5\n```",
        "```python\nanswer['ready'] = True\n```",
        "```python\nanswer = {'ready': True, 'content': object()}\n```",
        "<think>" * 50,
    ],
)
def test_arbitrary_output_never_raises(make_rlm, raw):
    env = make_rlm(max_rounds=3)
    for _ in range(3):
        env.step(raw)
    assert env.done and env.end_state in ("finished", "malformed", "max_rounds", "over_budget")


def test_non_text_output_is_a_format_error(make_rlm):
    env = make_rlm()
    env.step(None)  # type: ignore[arg-type]
    assert env.format_errors == 1 and "not text" in last_output(env)


def test_extract_code_blocks():
    assert extract_code_blocks("```python\na = 1\n```\ntext\n```py\nb = 2\n```") == (["a = 1\n", "b = 2\n"], None)
    assert extract_code_blocks("</think>```repl\nc\n```")[0] == ["c\n"]
    assert extract_code_blocks("```bash\nls\n```")[0] == []


def test_config_through_the_registry_with_the_sub_model_built_by_the_caller(tokenizer):
    config = env_section({"kind": "rlm", "sub_model": {"kind": "scripted_rlm"}, "sandbox": {"memory_mb": 512}})
    assert isinstance(config, RLMConfig) and config.sub_model.kind == "scripted_rlm"  # a PolicySpec, via the recipe
    with pytest.raises(ValueError, match="max_round"):
        env_config({"kind": "rlm", "max_round": 3})
    with pytest.raises(ValueError, match="kindd"):
        env_section({"kind": "rlm", "sub_model": {"kindd": "scripted_rlm"}})
    task = Task(id="t1", kind="exact", question="What is the code of item7?", documents=[TEXT], answer="1007")
    with pytest.raises(ValueError, match="sub_policy"):  # the env builds no model itself
        make_env(task, tokenizer, config)
    runner = sub_policy_for(config)
    assert sub_policy_for(env_config({"kind": "rlm", "sub_model": {"kind": "scripted_rlm"}})) is runner  # shared
    env = make_env(task, tokenizer, config, sub_policy=runner)
    try:
        assert isinstance(env, RLMEnv) and "llm_query_batched runs up to 8" in env.messages()[1]["content"]
        assert env.task is task
    finally:
        env.close()
    assert sub_policy_for(env_config({"kind": "rlm"})) is None


def test_aggregation_generator_is_seeded_and_its_answers_are_right(tokenizer):
    tasks = generate_aggregation(4, 500, 4000, seed=5, tokenizer=tokenizer)
    again = GENERATORS["aggregation"](4, 500, 4000, 5, tokenizer)
    assert [t.model_dump() for t in tasks] == [t.model_dump() for t in again]
    for task in tasks:
        meta = task.metadata
        ask = (
            f"What is the total quantity of {meta['item']} that {meta['person']} bought in the orders below?"
            if meta["mode"] == "sum"
            else f"How many orders did {meta['person']} place for {meta['item']} in the orders below?"
        )
        assert answer_sub_prompt(ask + "\n\n" + task.load_input()) == task.answer
        assert meta["matching_orders"] >= 1
    sizes = [len(tokenizer(t.load_input())["input_ids"]) for t in tasks]
    assert 350 < sizes[0] < 700 and 3000 < sizes[-1] < 5500


@pytest.mark.parametrize("with_sub_model", [False, True])
def test_scripted_expert_solves_each_generated_kind(tokenizer, with_sub_model):
    tasks = (
        GENERATORS["niah"](1, 2000, 2000, n_needles=2, seed=3, tokenizer=tokenizer)
        + GENERATORS["multihop"](1, 2000, 2000, seed=3, tokenizer=tokenizer)
        + generate_aggregation(2, 3000, 3000, seed=3, tokenizer=tokenizer)
    )
    expert = ScriptedRLMExpert()
    for task in tasks:
        sub_model = expert if with_sub_model else None
        env = RLMEnv(task.question, task.load_input(), tokenizer, RLMConfig(), sub_model=sub_model)
        while not env.done:
            env.step(asyncio.run(expert.act(env.messages(), env.tools)))
        assert env.end_state == "finished" and grade(task, env.answer), (task.id, env.answer, task.answer)
        assert env.rounds == 3 and env.format_errors == 0
        assert bool(env.sub_calls) == (with_sub_model and task.metadata["generator"] != "multihop")
