"""Segments (pipeline/data/segments.py): a segment trains exactly what its per-turn snapshots train, for fewer
tokens; masks cover exactly the assistant tokens; edits and template drift (checked on tokens) cut segments."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from pipeline.collect import run_collect
from pipeline.data.segments import (
    Segment,
    SegmentError,
    end_of_turn,
    render_prompt,
    render_turn,
    segment_trajectory,
    snapshot_trajectory,
)
from pipeline.data.trajectory import MessageRecord, Trajectory, Turn
from pipeline.data.trajectory_files import iter_trajectories
from pipeline.env.parsing import format_assistant_text
from pipeline.env.pensieve import EnvConfig, PensieveEnv
from pipeline.settings.recipe import CollectRecipe

# ------------------------------------------------------------------------------------------------
# Fixtures: the tiny model, scripted trajectories from the real env, and hand-driven episodes


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def load_model(model_dir: Path, num_layers: int | None = None):
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    # float64: the comparison is about which tokens are trained, not about float32 summation order
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # a truncated model reports the unused layers' weights
    try:
        extra = {} if num_layers is None else {"num_hidden_layers": num_layers}
        return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64, **extra).eval()
    finally:
        logging.set_verbosity(verbosity)


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    """The tiny model cut to its first layer (same embeddings, layer 0, head): the equality holds for any
    causal LM, and one layer in float64 keeps the many full-context forwards fast on a CPU. The slow test
    below repeats the check with all layers."""
    return load_model(tiny_model_dir, num_layers=1)


def collect_scripted(out_dir: Path, model_dir: Path) -> list[Trajectory]:
    """Scripted-expert episodes from the real environment: single-needle NIAH and multi-hop (two facts)."""
    recipe = CollectRecipe(
        output_dir=str(out_dir),
        student_tokenizer=str(model_dir),
        tasks=[
            {"generator": "niah", "n": 1, "min_tokens": 600, "max_tokens": 600, "n_needles": 1, "seed": 0},
            {"generator": "multihop", "n": 1, "min_tokens": 1000, "max_tokens": 1000, "seed": 2},
        ],
        policy={"kind": "scripted"},
        concurrency=2,
    )
    run_collect(recipe, progress=False)
    return list(iter_trajectories(out_dir / "trajectories.jsonl"))


@pytest.fixture(scope="module")
def scripted(tiny_model_dir, tmp_path_factory) -> list[Trajectory]:
    trajectories = collect_scripted(tmp_path_factory.mktemp("collect"), tiny_model_dir)
    assert len(trajectories) == 2 and all(t.end_state == "finished" and t.correct for t in trajectories)
    return trajectories


def call(name: str, reasoning: str | None = None, **arguments) -> str:
    """Raw assistant text as Qwen3 writes it; `reasoning` adds a think block ('' = an empty one)."""
    text = format_assistant_text("", [{"name": name, "arguments": arguments}])
    return text if reasoning is None else f"<think>\n{reasoning}\n</think>\n\n{text}"


def drive(tokenizer, texts: list[str], episode_id: str = "hand#0") -> Trajectory:
    """Play raw assistant texts in the real environment and return the trajectory."""
    document = " ".join(f"Sentence {i} says the code of item{i} is {1000 + i}." for i in range(120))
    env = PensieveEnv("What is the code of item42?", document, tokenizer, EnvConfig())
    for text in texts:
        env.step(text)
    return env.trajectory(episode_id, "hand", "hand", 0, correct=env.answer == "1042")


# Several consecutive non-editing turns, reasoning kept by the template, and two edits.
LONG_RUN = [
    call("analyzeText"),
    call("checkBudget"),
    call("buildIndex", chunk_size=200, overlap=0),
    call("searchEngine", reasoning="Look for the item.", keyword="item42"),
    call("readChunk", chunk_id=0),
    call("readChunk", scan=True),
    call("checkBudget"),
    call("note", key="code", summary="code of item42", content="1042"),  # edits: the notebook list
    call("readNote", key="code"),
    call("deleteContext", msg_id=[9, 10, 11, 12]),  # edits: stubs
    call("readChunk", chunk_id=2),
    call("checkBudget"),
    call("finish", answer="1042"),
]


@pytest.fixture(scope="module")
def hand(tokenizer) -> list[Trajectory]:
    return [
        drive(tokenizer, LONG_RUN, "long-run#0"),
        drive(tokenizer, [t for t in LONG_RUN if "note" not in t and "deleteContext" not in t], "no-edit#0"),
    ]


_NLL_CACHE: dict[tuple[int, tuple[int, ...]], torch.Tensor] = {}


def token_nll(model, input_ids: list[int]) -> torch.Tensor:
    """NLL of every token but the first under the model (token t predicted from t-1). Identical inputs give
    identical logits, so a row seen before (a segment row is its last turn's snapshot) is not run again."""
    key = (id(model), tuple(input_ids))
    if key not in _NLL_CACHE:
        ids = torch.tensor([input_ids])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, :-1]
        _NLL_CACHE[key] = -torch.log_softmax(logits, dim=-1).gather(1, ids[0, 1:, None])[:, 0]
    return _NLL_CACHE[key]


def masked_nll(model, segment: Segment) -> torch.Tensor:
    """Per-token NLL of the masked tokens of one row, in order."""
    assert segment.completion_mask[0] == 0
    return token_nll(model, segment.input_ids)[torch.tensor(segment.completion_mask[1:], dtype=torch.bool)]


def assert_same_loss(model, segments: list[Segment], snapshots: list[Segment]) -> None:
    per_token_segments = torch.cat([masked_nll(model, s) for s in segments])
    per_token_snapshots = torch.cat([masked_nll(model, s) for s in snapshots])
    assert per_token_segments.shape == per_token_snapshots.shape
    assert torch.allclose(per_token_segments, per_token_snapshots, atol=1e-9, rtol=0)
    assert abs(per_token_segments.sum().item() - per_token_snapshots.sum().item()) < 1e-5


def runs_between_edits(traj: Trajectory) -> list[list[int]]:
    runs, current = [], []
    for turn in traj.turns:
        current.append(turn.index)
        if turn.edited:
            runs.append(current)
            current = []
    return [*runs, current] if current else runs


# ------------------------------------------------------------------------------------------------
# (a) segments train exactly what per-turn snapshots train, on fewer tokens


@pytest.mark.parametrize("source", ["scripted", "hand"])
def test_segment_loss_equals_snapshot_loss(request, source, tokenizer, model):
    trajectories = request.getfixturevalue(source)
    for traj in trajectories if source == "scripted" else trajectories[:1]:  # hand[0]: a 7-turn run and 2 edits
        segments = segment_trajectory(tokenizer, traj)
        snapshots = snapshot_trajectory(tokenizer, traj)
        assert [s.turns for s in snapshots] == [[t.index] for t in traj.turns]
        assert [t for s in segments for t in s.turns] == [t.index for t in traj.turns], "segments partition turns"
        assert_same_loss(model, segments, snapshots)

        # No drift with these texts: segments are exactly the runs between edits
        assert [s.turns for s in segments] == runs_between_edits(traj)
        for segment in segments:
            assert segment.snapshot_tokens == sum(s.n_tokens for s in snapshots if s.turns[0] in segment.turns)
            if len(segment.turns) >= 2:
                assert segment.n_tokens < segment.snapshot_tokens
            else:
                assert segment.n_tokens == segment.snapshot_tokens
        if any(len(run) >= 2 for run in runs_between_edits(traj)):
            assert sum(s.n_tokens for s in segments) < sum(s.n_tokens for s in snapshots)


@pytest.mark.slow
def test_segment_loss_equals_snapshot_loss_with_every_layer(scripted, tokenizer, tiny_model_dir):
    full = load_model(tiny_model_dir)
    traj = scripted[0]
    assert_same_loss(full, segment_trajectory(tokenizer, traj), snapshot_trajectory(tokenizer, traj))


def test_long_run_is_one_segment_when_nothing_edits(hand, tokenizer):
    no_edit = hand[1]
    assert not any(t.edited for t in no_edit.turns)
    (segment,) = segment_trajectory(tokenizer, no_edit)
    assert segment.turns == list(range(len(no_edit.turns)))
    snapshots = snapshot_trajectory(tokenizer, no_edit)
    assert segment.n_tokens == snapshots[-1].n_tokens
    assert segment.n_tokens * 3 < sum(s.n_tokens for s in snapshots)


# ------------------------------------------------------------------------------------------------
# (b) masks cover exactly the assistant tokens


def test_mask_covers_exactly_assistant_text_and_eos(scripted, hand, tokenizer):
    assert end_of_turn(tokenizer) == "<|im_end|>\n", "derived from Qwen3's template, not hard-coded"
    for traj in [*scripted, *hand]:
        for max_turns in (None, 1):
            expected, decoded = [], []
            for segment in segment_trajectory(tokenizer, traj, max_turns_per_segment=max_turns):
                covered = [0] * segment.n_tokens
                for turn, (start, end) in zip(segment.turns, segment.spans, strict=True):
                    raw = traj.messages[traj.turns[turn].assistant].content
                    assert tokenizer.decode(segment.input_ids[start:end]) == raw + "<|im_end|>"
                    covered[start:end] = [1] * (end - start)
                    expected.append(raw + "<|im_end|>")
                assert covered == segment.completion_mask
                masked = [i for i, m in zip(segment.input_ids, segment.completion_mask, strict=True) if m]
                decoded.append(tokenizer.decode(masked))
            assert "".join(decoded) == "".join(expected)


def test_untrained_turns_stay_in_context_with_mask_zero(hand, tokenizer):
    traj = hand[1]  # one segment of every turn
    raw = [traj.messages[t.assistant].content for t in traj.turns]
    (segment,) = segment_trajectory(tokenizer, traj, trained_turns=[1, 4])
    assert segment.turns == [0, 1, 2, 3, 4], "the row ends at the last trained turn"
    assert segment.trained == [False, True, False, False, True]
    masked = [i for i, m in zip(segment.input_ids, segment.completion_mask, strict=True) if m]
    assert tokenizer.decode(masked) == raw[1] + "<|im_end|>" + raw[4] + "<|im_end|>"
    assert raw[2] in tokenizer.decode(segment.input_ids), "an untrained turn is still context"
    assert segment.snapshot_tokens == sum(len(render_turn(tokenizer, traj, traj.turns[i])) for i in (1, 4))


def test_render_turn_matches_what_the_env_showed_the_policy(hand, tokenizer):
    traj = hand[0]
    for turn in traj.turns:
        tokens = render_turn(tokenizer, traj, turn)
        assert len(tokens.prompt_ids) == turn.context_tokens_before, "the env counted the same prompt"
        assert tokens.full_ids[: len(tokens.prompt_ids)] == tokens.prompt_ids
        assert tokens.completion_ids[tokens.n_trained - 1] == tokenizer.eos_token_id
        assert tokenizer.decode(tokens.completion_ids[tokens.n_trained :]) == "\n"


# ------------------------------------------------------------------------------------------------
# (c) an edit always starts a new segment


def test_every_edit_starts_a_new_segment(scripted, hand, tokenizer):
    for traj in [*scripted, *hand]:
        for segment in segment_trajectory(tokenizer, traj):
            edited = [traj.turns[t].edited for t in segment.turns]
            assert not any(edited[:-1]), "no edit inside a segment"
            first = segment.turns[0]
            assert segment.starts_after_edit == (first > 0 and traj.turns[first - 1].edited)
            assert segment.break_reason == ("start" if first == 0 else "edit")
            assert segment.ends_with_edit == edited[-1]


def test_an_edit_flag_cuts_even_when_tokens_still_grow(tokenizer):
    """Deleting an already-deleted message changes nothing, but the turn is an edit: it still cuts."""
    texts = [call("checkBudget"), call("deleteContext", msg_id=2), call("deleteContext", msg_id=2), call("checkBudget")]
    traj = drive(tokenizer, texts)
    assert [t.edited for t in traj.turns] == [False, True, True, False]
    after_noop = render_turn(tokenizer, traj, traj.turns[3]).prompt_ids
    assert (
        after_noop[: len(render_turn(tokenizer, traj, traj.turns[2]))]
        == render_turn(tokenizer, traj, traj.turns[2]).full_ids
    ), "the second delete deleted nothing: tokens are a prefix"
    segments = segment_trajectory(tokenizer, traj)
    assert [(s.turns, s.break_reason) for s in segments] == [([0, 1], "start"), ([2], "edit"), ([3], "edit")]


# ------------------------------------------------------------------------------------------------
# (d) template drift is detected on tokens


def test_qwen3_empty_think_is_dropped_when_not_last_so_segments_cut(tokenizer, model):
    # The tiny model's template is Qwen3's: a last assistant message is rendered with an empty think
    # block that disappears once it is followed by other messages.
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "A"}]
    assert "<think>\n\n</think>\n\nA<|im_end|>" in tokenizer.apply_chat_template(messages, tokenize=False)
    messages.append({"role": "tool", "content": "r"})
    assert "<think>" not in tokenizer.apply_chat_template(messages, tokenize=False)

    # A model that writes an empty think block: the next context renders that turn without it
    texts = [call("analyzeText"), call("checkBudget", reasoning=""), call("checkBudget"), call("readNote", key="x")]
    traj = drive(tokenizer, texts)
    assert not any(t.edited for t in traj.turns)
    segments = segment_trajectory(tokenizer, traj)
    assert [(s.turns, s.break_reason) for s in segments] == [([0, 1], "start"), ([2, 3], "drift")]
    assert_same_loss(model, segments, snapshot_trajectory(tokenizer, traj))


def test_drift_is_found_on_tokens_when_strings_are_a_prefix(tokenizer, model):
    """A template under which each turn's text is a string prefix of the next prompt, but the next prompt
    tokenizes differently: the end of turn '\\n' merges with a tool result (rendered bare) starting with '\\n'."""
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = (
        "{%- for m in messages %}{{ {'assistant': '>', 'tool': ''}.get(m.role, m.role + ': ') + m.content + '\\n' }}"
        "{%- endfor %}{%- if add_generation_prompt %}{{ '>' }}{%- endif %}"
    )
    assert end_of_turn(plain) == "\n"
    messages = [
        MessageRecord(role="system", content="sys", msg_id=0),
        MessageRecord(role="user", content="question", msg_id=1),
        MessageRecord(role="assistant", content="first", msg_id=2),
        MessageRecord(role="tool", content="ok", msg_id=3),
        MessageRecord(role="assistant", content="second", msg_id=4),
        MessageRecord(role="tool", content="\nindented result", msg_id=5),
        MessageRecord(role="assistant", content="third", msg_id=6),
    ]

    def turn(i: int, context: list[int], assistant: int) -> Turn:
        return Turn(index=i, context=context, assistant=assistant, context_tokens_before=0, context_tokens_after=0,
                    edited=False)  # fmt: skip

    traj = Trajectory(
        episode_id="drift#0", task_id="drift", policy="hand", seed=0, end_state="finished", messages=messages,
        turns=[turn(0, [0, 1], 2), turn(1, [0, 1, 2, 3], 4), turn(2, [0, 1, 2, 3, 4, 5], 6)],
    )  # fmt: skip
    for before, after in zip(traj.turns, traj.turns[1:], strict=False):
        text = render_prompt(plain, traj, before) + traj.messages[before.assistant].content + end_of_turn(plain)
        assert render_prompt(plain, traj, after).startswith(text), "as strings, every turn is a prefix"
    segments = segment_trajectory(plain, traj)
    assert [(s.turns, s.break_reason) for s in segments] == [([0, 1], "start"), ([2], "drift")]
    assert_same_loss(model, segments, snapshot_trajectory(plain, traj))


def test_a_completion_that_merges_with_the_prompt_is_an_error(tokenizer):
    traj = drive(tokenizer, ["\n\n" + call("checkBudget")])  # '\n' + '\n\n' tokenize as one token
    with pytest.raises(SegmentError, match="turn 0: the prompt's tokens are not a prefix"):
        render_turn(tokenizer, traj, traj.turns[0])


def test_broken_references_name_the_turn(hand, tokenizer):
    traj = hand[0].model_copy(deep=True)
    traj.turns[3].context.append(10_000)
    with pytest.raises(SegmentError, match=r"episode 'long-run#0' turn 3: turns.3.context has indices \[10000\]"):
        segment_trajectory(tokenizer, traj)


def test_caps_on_turns_and_tokens(hand, tokenizer):
    traj = hand[1]
    assert [s.turns for s in segment_trajectory(tokenizer, traj, max_turns_per_segment=4)] == [
        [0, 1, 2, 3],
        [4, 5, 6, 7],
        [8, 9, 10],
    ]
    lengths = [len(render_turn(tokenizer, traj, t)) for t in traj.turns]
    segments = segment_trajectory(tokenizer, traj, max_tokens_per_segment=lengths[2])
    assert segments[0].turns == [0, 1, 2] and segments[1].break_reason == "max_tokens"
    assert all(s.n_tokens <= lengths[2] or len(s.turns) == 1 for s in segments)


# ------------------------------------------------------------------------------------------------
# Token-in/token-out: a turn that recorded its sampled ids trains exactly those ids


def split_ids(tokenizer, text: str) -> list[int]:
    """The ids of `text` with one token split into two ids that the tokenizer merges back on re-encoding: the
    sequence a sampler may produce but decode -> encode does not give back."""
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    for position, token_id in enumerate(ids):
        piece = tokenizer.convert_ids_to_tokens(token_id)
        for cut in range(1, len(piece)):
            left, right = tokenizer.convert_tokens_to_ids([piece[:cut], piece[cut:]])
            if tokenizer.unk_token_id not in (left, right) and None not in (left, right):
                return [*ids[:position], left, right, *ids[position + 1 :]]
    raise AssertionError(f"no token of {text!r} splits into two tokens")


def sampled_episode(tokenizer, sampled: list[list[int]]) -> Trajectory:
    """Play sampled ids in the real environment as a local policy would: the text is their decode."""
    from pipeline.play.rollout import record_action
    from pipeline.policies.base import Action
    from pipeline.policies.hf import decode_assistant, dropped_ids

    document = " ".join(f"Sentence {i} says the code of item{i} is {1000 + i}." for i in range(120))
    env = PensieveEnv("What is the code of item42?", document, tokenizer, EnvConfig())
    for ids in sampled:
        action = Action(decode_assistant(tokenizer, ids, dropped_ids(tokenizer)), token_ids=ids,
                        logprobs=[-0.5 - k for k in range(len(ids))])  # fmt: skip
        env.step(action.text)
        record_action(env.turns[-1], action)
    return env.trajectory("sampled#0", "hand", "hf", 0, correct=env.answer == "1042")


def test_sampled_ids_are_trained_even_when_reencoding_changes_them(tokenizer):
    from pipeline.data.segments import reencode_differs

    eos = tokenizer.eos_token_id
    first = [*split_ids(tokenizer, call("checkBudget")), eos]  # stopped at the EOS
    plain = [*tokenizer(call("analyzeText"), add_special_tokens=False)["input_ids"], eos]
    cut = list(tokenizer(call("finish", answer="1042"), add_special_tokens=False)["input_ids"])[:-2]  # at the cap
    traj = sampled_episode(tokenizer, [first, plain, cut])
    assert [t.token_ids for t in traj.turns] == [first, plain, cut], "the record keeps the sampled ids"
    assert traj.turns[0].logprobs == [-0.5 - k for k in range(len(first))]
    assert Trajectory.model_validate_json(traj.model_dump_json()) == traj
    assert [reencode_differs(tokenizer, traj, t) for t in traj.turns] == [True, False, False]

    tail = end_of_turn(tokenizer).split(tokenizer.eos_token, 1)[1]
    tail_ids = tokenizer(tail, add_special_tokens=False)["input_ids"]
    eot_ids = tokenizer(end_of_turn(tokenizer), add_special_tokens=False)["input_ids"]
    for turn, sampled, after in zip(traj.turns, [first, plain, cut], [tail_ids, tail_ids, eot_ids], strict=True):
        tokens = render_turn(tokenizer, traj, turn, sampled_ids=True)
        assert tokens.completion_ids == sampled + after and tokens.n_trained == len(sampled)
        assert (
            tokens.prompt_ids == tokenizer(render_prompt(tokenizer, traj, turn), add_special_tokens=False)["input_ids"]
        ), "the prompt is still the template's rendering: what the policy was given"
    # Rendering the text instead trains other ids for the first turn (the split token comes back merged)
    assert render_turn(tokenizer, traj, traj.turns[0]).completion_ids[: len(first)] != first

    segments = segment_trajectory(tokenizer, traj, sampled_ids=True)
    # turn 0's ids are not what the next prompt re-renders, so the next turn starts a segment (drift); turn 1's are
    assert [(s.turns, s.break_reason) for s in segments] == [([0], "start"), ([1, 2], "drift")]
    for segment in segments:
        for turn, (lo, hi) in zip(segment.turns, segment.spans, strict=True):
            assert segment.input_ids[lo:hi] == traj.turns[turn].token_ids
        trained = [i for i, m in enumerate(segment.completion_mask) if m]
        assert trained == [i for lo, hi in segment.spans for i in range(lo, hi)], "mask: exactly the sampled ids"
