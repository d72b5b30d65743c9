"""Stub compaction (env.compact_stubs): range stubs keep ids answerable, notes intact, contexts rebuildable."""

from __future__ import annotations

import re

from pipeline.env.pensieve import EnvConfig, PensieveEnv
from pipeline.policies.scripted import ScriptedExpert
from pipeline.tasks.generators import generate_niah
from tests.env.conftest import call


def read_note_delete(env, cycles: int) -> list[int]:
    """Scan a chunk, note it, delete both turns and the previous delete; returns every deleted id."""
    env.step(call("buildIndex", chunk_size=64))
    deleted = []
    for i in range(cycles):
        start = env.next_msg_id
        env.step(call("readChunk", scan=True))
        env.step(call("note", key=f"k{i}", summary=f"s{i}", content=f"chunk {i}"))
        ids = list(range(start, env.next_msg_id))
        if i:
            ids = list(range(start - 2, env.next_msg_id))  # the previous deleteContext call and its result
        env.step(call("deleteContext", msg_id=ids))
        deleted += ids
    return sorted(set(deleted))


def test_runs_of_stubs_become_one_range_stub_that_keeps_progress(make_env):
    env = make_env(compact_stubs=True, max_rounds=100)
    read_note_delete(env, 10)
    stubs = [m for m in (env.table[r] for r in env.context) if m.stub]
    assert len(stubs) == 1, [m.content for m in stubs]
    content = stubs[0].content
    assert re.match(r"\[msgs 4-\d+ deleted \| tools: readChunk x10, note x10, deleteContext x9 \|", content)
    assert f"read chunks 0-9, progress 10/{len(env.index)}" in content
    assert "range stub" in env.messages()[0]["content"]  # the system prompt says what it is


def test_every_deleted_id_stays_answerable_and_no_note_is_lost(make_env):
    env = make_env(compact_stubs=True, max_rounds=100)
    deleted = read_note_delete(env, 8)
    assert set(env.notebook.notes) == {f"k{i}" for i in range(8)}
    assert all(f"- k{i}: s{i}" in env.messages()[1]["content"] for i in range(8))
    env.step(call("deleteContext", msg_id=deleted))
    assert env.messages()[-1]["content"].endswith(f"Nothing deleted. Already deleted: {', '.join(map(str, deleted))}.")
    env.step(call("deleteContext", msg_id=[0]))
    assert "cannot be deleted" in env.messages()[-1]["content"]
    env.step(call("readNote", key="k3"))
    assert env.messages()[-1]["content"].endswith("chunk 3")


def test_compaction_is_off_by_default_and_shrinks_stub_tokens(make_env, tokenizer):
    def stub_tokens(env) -> int:
        return sum(len(tokenizer(env.table[r].content)["input_ids"]) for r in env.context if env.table[r].stub)

    plain, compact = make_env(max_rounds=100), make_env(compact_stubs=True, max_rounds=100)
    read_note_delete(plain, 20)
    read_note_delete(compact, 20)
    assert all(r is None or not plain.table[r].covers for r in plain.context)
    assert stub_tokens(compact) * 4 <= stub_tokens(plain)


def test_compacted_contexts_rebuild_exactly_from_the_trajectory(tokenizer):
    task = generate_niah(1, 3000, 3000, n_needles=3, seed=5, tokenizer=tokenizer)[0]
    env = PensieveEnv(task.question, task.load_input(), tokenizer, EnvConfig(compact_stubs=True))
    expert, seen = ScriptedExpert(chunk_size=256), []
    while not env.done:
        seen.append(env.messages())
        env.step(expert.decide(env.messages()))
    assert env.end_state == "finished" and sorted(env.answer.split(", ")) == sorted(task.answer)
    traj = env.trajectory("e", task.id, "scripted", 0, True)
    traj = type(traj).model_validate_json(traj.model_dump_json())  # through JSON, as written to disk
    assert any(m.covers for m in traj.messages)
    assert [traj.context_messages(t) for t in traj.turns] == seen
    assert sum("analyzeText" in (t.tool_calls[0]["name"] if t.tool_calls else "") for t in traj.turns) == 1
