"""The Inventory variant (SPEC 2): stream generator, memory-wipe environment, end states and rewards,
one segment per turn, and the scripted expert (the curriculum: tests/test_curriculum.py)."""

from __future__ import annotations

import asyncio

import pytest

from pipeline.data.segments import segment_trajectory
from pipeline.env.inventory import (
    SYSTEM_PROMPT,
    InventoryConfig,
    InventoryEnv,
    format_inventory,
    parse_inventory,
    visible_text,
)
from pipeline.env.registry import env_config, make_env
from pipeline.policies.inventory_expert import InventoryExpert, ScriptedExperts
from pipeline.tasks.generators import GENERATORS
from pipeline.tasks.graders import grade
from pipeline.tasks.inventory import COMMAND, NOISE_WORDS, apply_commands, generate_inventory, inventory_states
from pipeline.tasks.words import INVENTORY_ITEMS

CHUNKS = ["a b [GET sword] c", "d [GET rope] e [DROP sword]", "[GET orb] f", "g h"]  # states: sword / rope / rope orb


def play(env: InventoryEnv, outputs: list[str]) -> InventoryEnv:
    for text in outputs:
        if env.done:
            break
        env.step(text)
    return env


def expert_play(env: InventoryEnv) -> InventoryEnv:
    expert = InventoryExpert()
    while not env.done:
        env.step(expert.decide(env.messages()))
    return env


# ---------------------------------------------------------------- generator


def test_streams_are_seeded_sized_in_words_and_drop_only_held_items():
    kwargs = {"n_chunks": 5, "words_per_chunk": 300, "command_density": 0.05, "n_items": 8}
    tasks = generate_inventory(6, seed=3, **kwargs)
    assert [t.model_dump() for t in tasks] == [t.model_dump() for t in generate_inventory(6, seed=3, **kwargs)]
    assert tasks[2].model_dump() == generate_inventory(3, seed=3, **kwargs)[2].model_dump()  # task i: (seed, i) only
    assert tasks[0].documents != generate_inventory(1, seed=4, **kwargs)[0].documents
    assert GENERATORS["inventory"] is generate_inventory
    for task in tasks:
        assert task.kind == "set" and len(task.documents) == 5
        assert all(len(chunk.split(" ")) == 300 + chunk.count("[") for chunk in task.documents)  # commands: 2 words
        vocabulary = set(task.metadata["items"])
        assert len(vocabulary) == 8 and vocabulary <= set(INVENTORY_ITEMS)
        held: set[str] = set()
        commands = [c for chunk in task.documents for c in COMMAND.findall(chunk)]
        assert len(commands) == task.metadata["n_commands"] > 20
        for verb, item in commands:
            assert item in vocabulary
            assert (item not in held) if verb == "GET" else (item in held)  # no adversarial drops by default
            held = held | {item} if verb == "GET" else held - {item}
        assert sorted(held) == task.answer == sorted(inventory_states(task.documents)[-1])
        noise = [w for chunk in task.documents for w in COMMAND.sub(" ", chunk).split()]
        assert set(noise) <= set(NOISE_WORDS) and not set(noise) & set(INVENTORY_ITEMS)
        assert {k: task.metadata[k] for k in ("n_chunks", "words_per_chunk", "n_items")} == {
            "n_chunks": 5,
            "words_per_chunk": 300,
            "n_items": 8,
        }


def test_adversarial_drops_name_items_not_held_and_change_nothing():
    task = generate_inventory(1, n_chunks=4, words_per_chunk=500, seed=1, command_density=0.05, adversarial_drops=True)[
        0
    ]
    held, unheld_drops = set(), 0
    for verb, item in (c for chunk in task.documents for c in COMMAND.findall(chunk)):
        if verb == "DROP" and item not in held:
            unheld_drops += 1
        held = held | {item} if verb == "GET" else held - {item}
    assert unheld_drops > 3 and sorted(held) == task.answer
    assert apply_commands(["orb"], "[DROP sword] [GET orb] [GET rope] [DROP orb]") == ["rope"]


def test_bad_generator_arguments_are_named():
    with pytest.raises(ValueError, match="n_items"):
        generate_inventory(1, n_items=len(INVENTORY_ITEMS) + 1)
    with pytest.raises(ValueError, match="words_per_chunk"):
        generate_inventory(1, words_per_chunk=0)


# ---------------------------------------------------------------- answer format


def test_inventory_line_parsing_and_what_survives_the_wipe():
    assert parse_inventory("I picked up a rope.\nInventory: [Sword, 'rope' ,]") == ["Sword", "rope"]
    assert parse_inventory("inventory: []") == []
    assert parse_inventory("Inventory: [a]\nInventory: [b, c]") == ["b", "c"]  # the last line counts
    assert parse_inventory("Inventory: sword, rope") is None and parse_inventory("") is None
    assert visible_text("<think>\nInventory: [x]\n</think>\n\nInventory: [y]") == "Inventory: [y]"
    assert visible_text("<think>never closed Inventory: [x]") == ""
    assert format_inventory(["a", "b"]) == "Inventory: [a, b]"


# ---------------------------------------------------------------- environment


def test_each_turn_sees_only_the_system_prompt_its_last_output_and_the_chunk(tokenizer):
    env = InventoryEnv(CHUNKS, tokenizer)
    first = env.messages()
    assert [m["role"] for m in first] == ["system", "user"] and first[0]["content"] == SYSTEM_PROMPT
    assert "Chunk 1 of 4:\na b [GET sword] c" in first[1]["content"] and "first chunk" in first[1]["content"]
    env.step("<think>\nthe sword is new\n</think>\n\nGot a sword.\nInventory: [sword]")
    second = env.messages()
    assert len(second) == 2 and second[0] == first[0]
    carried = "Your previous output:\nGot a sword.\nInventory: [sword]\n\nChunk 2 of 4:\n" + CHUNKS[1]
    assert carried in second[1]["content"]
    assert "[GET sword]" not in second[1]["content"] and "the sword is new" not in second[1]["content"]
    play(env, ["Inventory: [rope]", "Inventory: [rope, orb]"])
    assert "This was the last chunk" in env.messages()[1]["content"]
    env.step("Inventory: [orb, rope]")
    assert env.done and env.end_state == "finished" and env.answer == "orb, rope"
    assert env.tools == [] and [m["role"] for m in env.messages()] == ["system", "user", "assistant"]


def test_turn_contexts_rebuild_every_prompt_and_make_one_segment_per_turn(tokenizer):
    env = InventoryEnv(CHUNKS, tokenizer)
    prompts = []
    expert = InventoryExpert()
    while not env.done:
        prompts.append(env.messages())
        env.step(expert.decide(env.messages()))
    traj = env.trajectory("ep", "task", "scripted", 0, correct=True)
    assert [traj.context_messages(t) for t in traj.turns] == prompts
    assert [t.edited for t in traj.turns] == [True, True, True, False]
    assert [t.action for t in traj.turns] == ["inventory", "inventory", "inventory", "finish"]
    assert traj.turns[-1].tool_calls[0]["arguments"] == {"answer": "rope, orb"}
    for turn in traj.turns:
        rendered = tokenizer.apply_chat_template(
            traj.context_messages(turn), tokenize=False, add_generation_prompt=True
        )
        assert turn.context_tokens_before == len(tokenizer(rendered, add_special_tokens=False)["input_ids"])
    assert traj.turns[0].context_tokens_after == traj.turns[1].context_tokens_before  # the sawtooth is the wipe
    segments = segment_trajectory(tokenizer, traj)
    assert [s.turns for s in segments] == [[0], [1], [2], [3]]
    assert [s.break_reason for s in segments] == ["start", "edit", "edit", "edit"]


def test_expert_episode_is_finished_correct_with_full_reward_and_state_accuracy(tokenizer):
    task = generate_inventory(1, n_chunks=6, words_per_chunk=200, seed=5, command_density=0.05)[0]
    env = expert_play(InventoryEnv.from_task(task, tokenizer, InventoryConfig()))
    correct = grade(task, env.answer)
    traj = env.trajectory("ep", task.id, "scripted", 0, correct, metadata={"task_kind": "set"})
    assert env.end_state == "finished" and correct and traj.reward == 1.0
    assert traj.reward_components["correct"] == 1.0 and traj.format_errors == 0
    assert traj.metadata["task_kind"] == "set"
    assert traj.metadata["episode_length"] == 6 and traj.metadata["state_accuracy"] == 1.0
    assert traj.metadata["final_item_count"] == traj.metadata["gold_item_count"] == len(task.answer)
    assert traj.input_tokens > 6 * 200


def test_a_wrong_state_is_scored_per_turn_and_a_wrong_final_answer_costs_half(tokenizer):
    env = play(
        InventoryEnv(CHUNKS, tokenizer),
        ["Inventory: [sword]", "Inventory: [rope, sword]", "Inventory: [ROPE, orb]", "Inventory: [rope]"],
    )
    traj = env.trajectory("ep", "t", "p", 0, correct=False)
    assert env.end_state == "finished" and traj.metadata["state_correct"] == [True, False, True, False]
    assert traj.metadata["state_accuracy"] == 0.5 and traj.metadata["final_item_count"] == 1
    assert traj.reward == -0.5 and traj.reward_components["wrong"] == 1.0


def test_missing_inventory_lines_are_errors_shown_to_the_model_and_three_in_a_row_end_malformed(tokenizer):
    env = InventoryEnv(CHUNKS * 2, tokenizer)
    env.step("I have a sword")
    user = env.messages()[1]["content"]
    assert "Your previous output:\nI have a sword" in user and "Error: your previous output had no inventory" in user
    env.step("Inventory: [rope]")  # a good output resets the run of errors
    assert "Error" not in env.messages()[1]["content"] and not env.done
    play(env, ["junk", "<tool_call>{}</tool_call>", None, "never reached"])  # type: ignore[list-item]
    assert env.done and env.end_state == "malformed" and env.rounds == 5 and env.format_errors == 4
    traj = env.trajectory("ep", "t", "p", 0, correct=False)
    assert traj.reward == -1.0 and traj.answer is None and traj.metadata["final_item_count"] is None
    assert [t.action for t in traj.turns] == ["invalid", "inventory", "invalid", "invalid", "invalid"]
    assert traj.turns[-1].edited is False and traj.final_context[-1] == traj.turns[-1].assistant
    assert env.step("Inventory: []").done and env.rounds == 5  # stepping a finished episode changes nothing


def test_a_missing_final_answer_is_malformed_and_a_recovered_error_forfeits_the_correct_reward(tokenizer):
    env = play(
        InventoryEnv(CHUNKS, tokenizer),
        ["Inventory: [sword]", "Inventory: [rope]", "Inventory: [rope, orb]", "I think rope and orb"],
    )
    assert env.end_state == "malformed" and env.answer is None
    env = play(
        InventoryEnv(CHUNKS, tokenizer),
        ["oops", "Inventory: [rope]", "Inventory: [rope, orb]", "Inventory: [rope, orb]"],
    )
    traj = env.trajectory("ep", "t", "p", 0, correct=True)
    assert env.end_state == "finished" and traj.format_errors == 1 and traj.reward == 0.0


def test_budgets_end_the_episode_as_over_budget_or_max_rounds(tokenizer):
    env = play(InventoryEnv(CHUNKS, tokenizer, InventoryConfig(max_rounds=2)), ["Inventory: [sword]"] * 4)
    assert env.end_state == "max_rounds" and env.rounds == 2
    assert env.trajectory("e", "t", "p", 0, False).reward_components["over_budget"] == 1.0
    small = InventoryEnv(CHUNKS, tokenizer, InventoryConfig(max_context_tokens=2048 + 400))
    assert not small.done
    small.step("Inventory: [sword] " + "blah " * 600)  # carried text too long for the next turn
    assert small.end_state == "over_budget" and small.turns[-1].edited and len(small.turns) == 1
    assert InventoryEnv(CHUNKS, tokenizer, InventoryConfig(max_context_tokens=2100)).end_state == "over_budget"


def test_the_registry_builds_the_inventory_env_from_a_recipe_section(tokenizer):
    config = env_config({"kind": "inventory", "max_format_errors": 2})
    assert isinstance(config, InventoryConfig) and config.max_format_errors == 2
    task = generate_inventory(1, n_chunks=2, words_per_chunk=50)[0]
    env = make_env(task, tokenizer, config)
    assert isinstance(env, InventoryEnv) and env.chunks == task.documents
    with pytest.raises(ValueError, match="extra"):
        env_config({"kind": "inventory", "chunk_size": 3})


def test_scripted_policy_dispatches_on_the_environment(tokenizer):
    class Pensieve:
        name = "scripted"

        async def act(self, messages, tools, seed=None):
            return "pensieve"

        async def aclose(self):
            return None

    policy = ScriptedExperts(Pensieve())
    env = InventoryEnv(CHUNKS, tokenizer)
    assert asyncio.run(policy.act(env.messages(), env.tools)) == "Inventory: [sword]"
    assert asyncio.run(policy.act([{"role": "system", "content": "other"}], [])) == "pensieve"
