"""The scripted expert (pipeline/policies/scripted.py) played through the real PensieveEnv: every
template family and key shape, distractors, recovery episodes with their failed search untrained,
and recovery from a search that really finds nothing."""

from __future__ import annotations

import asyncio

import pytest

from pipeline.data.trajectory import Trajectory
from pipeline.env.pensieve import EnvConfig
from pipeline.play.rollout import Episode, play_episode
from pipeline.policies.base import Action
from pipeline.policies.factory import make_policy
from pipeline.policies.scripted import ScriptedExpert
from pipeline.settings.recipe import PolicySpec
from pipeline.tasks.generators import generate_multihop, generate_niah
from pipeline.tasks.graders import grade
from pipeline.tasks.phrasing import KEY_SHAPES
from pipeline.tasks.schema import Task


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def play(task: Task, tokenizer, **expert) -> Trajectory:
    policy = ScriptedExpert(chunk_size=expert.pop("chunk_size", 300), **expert)
    return asyncio.run(play_episode(Episode(task, 0, 1), policy, tokenizer, EnvConfig(), grade))


def calls(traj: Trajectory) -> list[str]:
    return [turn.action for turn in traj.turns]


def results(traj: Trajectory) -> list[str]:
    return [traj.messages[turn.tool_results[0]].content.split("\n", 1)[-1] for turn in traj.turns]


@pytest.mark.parametrize("family", ["train", "heldout"])
@pytest.mark.parametrize("shape", sorted(KEY_SHAPES))
def test_expert_solves_every_family_and_key_shape_despite_distractors(tokenizer, family, shape):
    for task in generate_niah(
        2, 800, 1600, seed=11, tokenizer=tokenizer, templates=family, key_shapes=[shape], n_distractors=1
    ):
        traj = play(task, tokenizer)
        assert traj.end_state == "finished" and traj.correct and traj.format_errors == 0, (task.question, traj.answer)
        assert all(turn.trained for turn in traj.turns)


@pytest.mark.parametrize("family", ["classic", "train", "heldout"])
def test_expert_solves_set_and_multihop_tasks_in_every_family(tokenizer, family):
    tasks = generate_niah(2, 1500, 2500, n_needles=3, seed=12, tokenizer=tokenizer, templates=family)
    tasks += generate_multihop(2, 1200, 2500, seed=13, tokenizer=tokenizer, templates=family)
    for task in tasks:
        traj = play(task, tokenizer)
        assert traj.correct and traj.format_errors == 0, (task.question, task.answer, traj.answer)


def test_recovery_episode_masks_the_failed_search_and_checks_its_note(tokenizer):
    for task in generate_niah(3, 800, 2000, seed=14, tokenizer=tokenizer, templates="train"):
        traj = play(task, tokenizer, recovery_share=1.0)
        assert traj.correct and traj.format_errors == 0
        untrained = [i for i, turn in enumerate(traj.turns) if not turn.trained]
        assert len(untrained) == 1
        failed = untrained[0]
        assert calls(traj)[failed] == "searchEngine" and results(traj)[failed].startswith("No chunk matches")
        assert calls(traj)[failed + 1] == "searchEngine" and not results(traj)[failed + 1].startswith("No chunk")
        assert traj.turns[failed + 1].trained
        assert calls(traj)[-2:] == ["readNote", "finish"]


def test_note_retry_episode_masks_the_key_only_note_and_writes_it_again(tokenizer):
    """A sampled student's commonest failure is a note with its key only; the teacher rehearses what follows."""
    for task in generate_niah(3, 800, 2000, seed=14, tokenizer=tokenizer, templates="train"):
        traj = play(task, tokenizer, note_retry_share=1.0)
        assert traj.correct and traj.format_errors == 1, (task.question, traj.answer)
        untrained = [i for i, turn in enumerate(traj.turns) if not turn.trained]
        assert len(untrained) == 1
        failed = untrained[0]
        assert calls(traj)[failed - 1 : failed + 3] == ["readChunk", "note", "note", "deleteContext"]
        retry = traj.turns[failed + 1]
        assert traj.turns[failed].tool_calls[0]["arguments"] == {"key": retry.tool_calls[0]["arguments"]["key"]}
        assert "summary: Field required" in results(traj)[failed]
        assert retry.trained and retry.format_errors == 0
        assert retry.tool_calls[0]["arguments"]["summary"] == task.answer
    # its own share of questions, not the recovery episodes'
    questions = [t.question for t in generate_niah(400, 50, 50, seed=15, templates="train")]
    expert = ScriptedExpert(recovery_share=0.3, note_retry_share=0.3)
    retries = [expert.is_note_retry(q) for q in questions]
    assert 0.22 < sum(retries) / len(retries) < 0.38
    assert retries != [expert.is_recovery(q) for q in questions]
    with pytest.raises(ValueError, match="note_retry_share"):
        ScriptedExpert(note_retry_share=-0.1)


def test_without_recovery_share_no_search_fails_and_every_turn_is_trained(tokenizer):
    task = generate_niah(1, 1200, 1200, seed=14, tokenizer=tokenizer, templates="train")[0]
    traj = play(task, tokenizer)
    assert traj.correct and all(turn.trained for turn in traj.turns)
    assert not any(r.startswith("No chunk matches") for r in results(traj)) and "readNote" not in calls(traj)


def test_recovery_share_picks_a_stable_share_of_questions():
    expert = ScriptedExpert(recovery_share=0.3)
    questions = [t.question for t in generate_niah(400, 50, 50, seed=15, templates="train")]
    picked = [expert.is_recovery(q) for q in questions]
    assert 0.22 < sum(picked) / len(picked) < 0.38
    assert picked == [ScriptedExpert(recovery_share=0.3).is_recovery(q) for q in questions]
    assert not any(ScriptedExpert().is_recovery(q) for q in questions)
    with pytest.raises(ValueError, match="recovery_share"):
        ScriptedExpert(recovery_share=1.5)


def test_decoy_search_is_returned_as_an_untrained_action(tokenizer):
    from pipeline.env.pensieve import PensieveEnv

    task = generate_niah(1, 600, 600, seed=16, tokenizer=tokenizer, templates="train")[0]
    env = PensieveEnv.from_task(task, tokenizer, EnvConfig())
    expert = ScriptedExpert(chunk_size=300, recovery_share=1.0)
    actions = []
    while not env.done and len(actions) < 5:
        action = asyncio.run(expert.act(env.messages(), env.tools))
        assert isinstance(action, Action)
        actions.append(action)
        env.step(action.text)
    assert [a.trained for a in actions] == [True, True, True, False, True]
    assert expert.decide(env.messages()) == expert.decide_action(env.messages()).text


def test_a_search_that_really_finds_nothing_is_recovered_by_a_scan(tokenizer):
    task = generate_niah(1, 1200, 1200, seed=17, tokenizer=tokenizer, templates="train", key_shapes=["code"])[0]
    key = task.metadata["needle_keys"][0]
    unsearchable = task.model_copy(update={"documents": [task.documents[0].replace(key, key.replace("-", ""))]})
    traj = play(unsearchable, tokenizer)
    assert traj.correct and traj.format_errors == 0 and all(turn.trained for turn in traj.turns)
    assert sum(r.startswith("No chunk matches") for r in results(traj)) == 2  # the key, then its digits
    assert "checkBudget" in calls(traj)[4:] and calls(traj).count("readChunk") >= 1


def test_a_long_input_without_the_key_ends_with_unknown_and_no_scan(tokenizer):
    task = generate_niah(1, 4000, 4000, seed=18, tokenizer=tokenizer, templates="train", key_shapes=["code"])[0]
    key = task.metadata["needle_keys"][0]
    missing = task.model_copy(update={"documents": [task.documents[0].replace(key, "somewhere")]})
    traj = play(missing, tokenizer)
    assert traj.end_state == "finished" and traj.answer == "unknown" and traj.format_errors == 0
    assert "readChunk" not in calls(traj)


def test_policy_spec_recovery_share_reaches_the_expert():
    policy = make_policy(PolicySpec(kind="scripted", chunk_size=512, recovery_share=0.25))
    assert policy.pensieve.recovery_share == 0.25 and policy.pensieve.chunk_size == 512
    assert make_policy(PolicySpec(kind="scripted")).pensieve.recovery_share == 0.0


def test_small_chunks_are_built_as_asked_and_still_solve(tokenizer):
    """The demo's teacher reads 96-token chunks so that training inputs of ~3K tokens have two-digit chunk ids."""
    for task in generate_niah(3, 2500, 3500, seed=19, tokenizer=tokenizer, templates="train"):
        traj = play(task, tokenizer, chunk_size=96)
        build = next(turn for turn in traj.turns if turn.action == "buildIndex")
        assert build.tool_calls[0]["arguments"]["chunk_size"] == 96
        assert "chunks of up to 96 tokens" in results(traj)[calls(traj).index("buildIndex")]
        assert traj.correct and traj.format_errors == 0, (task.question, traj.answer)
