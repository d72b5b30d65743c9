"""Behaviour of the Pensieve environment's tools, ids, stubs, notebook and budgets (SPEC 2)."""

from __future__ import annotations

import re

from tests.env.conftest import call, calls


def last_tool(env) -> str:
    return env.messages()[-1]["content"]


def test_msg_ids_are_sequential_and_tool_messages_name_their_caller(make_env):
    env = make_env()
    env.step(calls(("analyzeText", {}), ("checkBudget", {})))
    msgs = env.messages()
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "tool", "tool"]
    assert msgs[3]["content"].startswith("[msg 3 | analyzeText | called by msg 2]")
    assert msgs[4]["content"].startswith("[msg 4 | checkBudget | called by msg 2]")
    env.step(call("checkBudget"))
    assert last_tool(env).startswith("[msg 6 | checkBudget | called by msg 5]")


def test_analyze_reports_tokens_of_the_student_tokenizer(make_env, tokenizer):
    env = make_env()
    env.step(call("analyzeText"))
    n = len(tokenizer(env.input_text, add_special_tokens=False)["input_ids"])
    reported = int(re.search(r"has (\d+) tokens", last_tool(env)).group(1))
    assert abs(reported - n) <= 2  # tokenized in pieces cut before spaces: same tokens up to a boundary merge


def test_build_index_search_and_read(make_env):
    text = " ".join(f"Filler sentence {i} about nothing." for i in range(3000))
    text += " The vault code of amber-falcon is 424242. " + text
    env = make_env(text)
    env.step(call("buildIndex", chunk_size=500))
    assert "chunks of up to 500 tokens" in last_tool(env)
    env.step(call("searchEngine", keyword="amber-falcon"))
    result = last_tool(env)
    first = int(re.search(r"chunk (\d+) \(score", result).group(1))
    assert "**amber-falcon**" in result
    env.step(call("readChunk", chunk_id=first))
    assert "424242" in last_tool(env)
    assert f"chunk {first}, progress {first + 1}/" in last_tool(env).split("\n")[0]


def test_phrase_match_ranks_before_scattered_terms(make_env):
    chunk_a = "red apples and green pears " * 30
    chunk_b = "filler words here " * 40 + "a quiet note: the green apples were sold today " + "filler words here " * 40
    env = make_env(chunk_a + chunk_b)
    env.step(call("buildIndex", chunk_size=100, overlap=30))  # overlap: a phrase is never only split
    env.step(call("searchEngine", keyword="green apples"))
    best = int(re.search(r"chunk (\d+) \(score", last_tool(env)).group(1))
    assert "green apples" in env.index.chunk(best).lower()


def test_scan_reads_in_order_and_stops_at_the_end(make_env):
    env = make_env(" ".join(["word"] * 300))
    env.step(call("buildIndex", chunk_size=128))
    n = len(env.index)
    for i in range(n):
        env.step(call("readChunk", scan=True))
        assert f"progress {i + 1}/{n}" in last_tool(env).split("\n")[0]
    env.step(call("readChunk", scan=True))
    assert "scan finished" in last_tool(env)


def test_notebook_is_listed_in_the_task_message_and_edits_it(make_env):
    env = make_env()
    assert "Notebook: (empty)" in env.messages()[1]["content"]
    result = env.step(call("note", key="code", summary="the vault code", content="424242"))
    assert result.edited
    assert "- code: the vault code" in env.messages()[1]["content"]
    env.step(call("updateNote", key="code", mode="append", content="confirmed"))
    assert not env.turns[-1].edited  # the listing did not change
    env.step(call("readNote", key="code"))
    assert last_tool(env).endswith("424242\nconfirmed")
    env.step(call("note", key="code", summary="x", content="y"))
    assert "already exists" in last_tool(env) and env.turns[-1].format_errors == 1
    env.step(call("updateNote", key="code", mode="overwrite", content="1", summary="new"))
    assert "- code: new" in env.messages()[1]["content"]
    env.step(call("updateNote", key="code", mode="delete"))
    assert "Notebook: (empty)" in env.messages()[1]["content"]


def test_delete_context_leaves_stubs_that_keep_ids_tool_and_progress(make_env):
    env = make_env()
    env.step(call("buildIndex", chunk_size=200))
    env.step(call("readChunk", chunk_id=1))  # assistant msg 4, tool msg 5
    before = env.context_tokens
    result = env.step(call("deleteContext", msg_id=[4, 5]))
    assert result.edited and env.context_tokens < before
    msgs = {m["content"].split(" ")[1]: m["content"] for m in env.messages()[2:]}
    assert msgs["4"] == "[msg 4 deleted | called readChunk]"
    assert msgs["5"].startswith("[msg 5 | readChunk | called by msg 4 | chunk 1, progress 2/")
    assert msgs["5"].endswith("content deleted")
    env.step(call("deleteContext", msg_id=5))
    assert "Already deleted: 5" in last_tool(env)


def test_delete_refuses_user_system_and_unknown_ids_atomically(make_env):
    env = make_env()
    env.step(call("analyzeText"))
    env.step(call("deleteContext", msg_id=[3, 1]))
    assert "user message" in last_tool(env) and "cannot be deleted" in last_tool(env)
    assert not env.table[env.context[3]].stub  # all or nothing: msg 3 was not deleted
    env.step(call("deleteContext", msg_id=0))
    assert "system message" in last_tool(env)
    env.step(call("deleteContext", msg_id=99))
    assert "msg 99 does not exist" in last_tool(env)
    assert env.format_errors == 3 and env.end_state == "malformed"


def test_check_budget_and_finish(make_env):
    env = make_env(max_rounds=10)
    env.step(call("checkBudget"))
    text = last_tool(env)
    assert "1 used, 9 left of 10" in text and "2048 reserved for output" in text
    used = int(re.search(r"Context: (\d+) tokens used", text).group(1))
    assert int(re.search(r"(\d+) available", text).group(1)) == 32000 - 2048 - used
    result = env.step(call("finish", answer="424242"))
    assert result.done and env.end_state == "finished" and env.answer == "424242"
    assert env.step(call("checkBudget")).done and env.rounds == 2  # steps after the end change nothing


def test_calls_after_finish_in_the_same_message_are_not_run(make_env):
    env = make_env()
    env.step(calls(("finish", {"answer": "a"}), ("note", {"key": "k", "summary": "s", "content": "c"})))
    assert env.end_state == "finished" and not env.notebook.notes


def test_over_budget_and_max_rounds(make_env):
    base = make_env().context_tokens
    text = " ".join(f"Sentence number {i} talks about item{i}." for i in range(3000))
    env = make_env(text, max_context_tokens=base + 512 + 1500, max_output_tokens=512)
    env.step(call("buildIndex", chunk_size=2000))
    assert not env.done
    env.step(call("readChunk", chunk_id=0))
    assert env.end_state == "over_budget" and env.context_tokens > base + 1500
    env = make_env(max_rounds=2)
    env.step(call("analyzeText"))
    env.step(call("analyzeText"))
    assert env.end_state == "max_rounds"


def test_malformed_outputs_are_errors_and_end_the_episode_after_consecutive_ones(make_env):
    env = make_env(max_format_errors=3)
    env.step("I think the answer is 42.")
    assert "no tool call found" in last_tool(env)
    env.step('<tool_call>{"name": "readChunk", "arguments": {"chunk_id": "3"}}</tool_call>')
    assert "bad arguments for readChunk: chunk_id" in last_tool(env)
    env.step(call("analyzeText"))  # a good turn resets the consecutive count
    assert env.consecutive_error_turns == 0 and not env.done
    env.step('<tool_call>{"name": "readChunk", "arguments": {"chunk_id": 3}}</tool_call>')
    assert "no index yet" in last_tool(env)
    env.step('<tool_call>{"name": "fly", "arguments": {}}</tool_call>')
    assert "unknown tool 'fly'" in last_tool(env)
    env.step("<tool_call>{broken json</tool_call>")
    assert "invalid JSON" in last_tool(env)
    assert env.end_state == "malformed" and env.format_errors == 5


def test_trajectory_rebuilds_every_context(make_env):
    env = make_env()
    env.step(call("buildIndex", chunk_size=200))
    env.step(call("readChunk", chunk_id=0))
    env.step(call("note", key="k", summary="s", content="c"))
    env.step(call("deleteContext", msg_id=[4, 5]))
    env.step(call("finish", answer="x"))
    traj = env.trajectory("e", "t", "test", 0, correct=False)
    contexts = [traj.context_messages(t) for t in traj.turns]
    assert contexts[1][-2:] == [
        traj.messages[traj.turns[0].assistant].chat(),
        traj.messages[traj.turns[0].tool_results[0]].chat(),
    ]
    assert "Notebook: (empty)" in contexts[2][1]["content"] and "- k: s" in contexts[3][1]["content"]
    assert traj.turns[3].edited and traj.turns[2].edited and not traj.turns[1].edited
    assert [m.chat() for m in (traj.messages[i] for i in traj.final_context)] == env.messages()
    assert traj.reward == -0.5 and traj.reward_components["wrong"] == 1.0
