"""Cut an episode into training rows (SPEC 5, 6): one implementation for SFT curation and GRPO sampling.

A turn's tokens. The prompt is the chat template over the messages the model saw before the turn, with
the generation prompt (exactly what the policy was given). The completion is the raw assistant text
plus the template's end of turn, which is derived from the template (render a probe assistant message
and take what follows it; Qwen3: `<|im_end|>\\n`). Prompt and prompt+completion are tokenized and the
completion must be exactly the token suffix; otherwise the turn is rejected with a SegmentError.

Sampled turns (token-in/token-out). A turn that records the ids the student sampled (`turn.token_ids`) is not
re-encoded when the caller says those are ids of this tokenizer (`sampled_ids=True`: GRPO, whose policy is the
model trained; a teacher's ids may be another vocabulary, so SFT renders the text): its completion is the sampled
ids, all trained, then the template's end of turn as context (the tail after the EOS, or the whole end of turn
when the sampler stopped before it, which was then never sampled and is not trained). Re-encoding the decoded
text can give other ids (two sampled tokens the tokenizer would merge); `reencode_differs` tells when it would
have. The next turn's prompt is rendered from the text, as the policy was given it, so a turn whose ids do not
re-encode the same ends its segment (drift).

What is trained. The completion tokens up to and including the EOS token (`<|im_end|>`), as TRL trains
the EOS of an assistant turn: the model must learn to stop. The template's text after the EOS (Qwen3's
`\\n`) is never generated (generation stops at the EOS), so it is context, mask 0. System, user, tool and
template tokens are never trained.

Segments. A segment is a maximal run of consecutive turns in which each turn's prompt+completion is a
token prefix of the next turn's prompt: one row then holds the whole run, and the loss on each turn's
tokens is exactly the loss of that turn as a per-turn snapshot (a causal model sees the same prefix),
for fewer tokens. A new segment starts when
- the previous turn edited the context (`turn.edited`: deleteContext, a re-rendered notebook list),
  even if the tokens happen to still be a prefix, so that edits always bound segments;
- template drift: the tokens are not a prefix for any other reason. Checked on token ids, never on
  strings. Qwen3's template, for instance, renders an assistant message whose reasoning is empty
  (`<think>\\n\\n</think>\\n\\n...`) without the think block once it is no longer the last message,
  and drops the reasoning of assistant messages before the last user query;
- optional caps: `max_turns_per_segment` (1 gives per-turn snapshots) and `max_tokens_per_segment`.

Turns that are not trained (`trained_turns`) stay in the rows as context with mask 0; a row ends at
the completion of its last trained turn, so untrained turns at the end of a run cost no tokens.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from pipeline.data.trajectory import Trajectory, Turn

BreakReason = Literal["start", "edit", "drift", "max_turns", "max_tokens"]
_PROBE = "STATELM_END_OF_TURN_PROBE"
_END_OF_TURN_CACHE: dict[tuple[str, str, str], str] = {}


class SegmentError(ValueError):
    """A trajectory that cannot be turned into training tokens; the message names the episode and turn."""


@dataclass(frozen=True)
class TurnTokens:
    """One turn as tokens: what the model was given, what it produced, and how much of that is trained."""

    prompt_ids: list[int]
    completion_ids: list[int] = field(repr=False)
    n_trained: int = 0  # leading completion tokens that are trained: the raw text and the EOS

    @property
    def full_ids(self) -> list[int]:
        return self.prompt_ids + self.completion_ids

    def __len__(self) -> int:
        return len(self.prompt_ids) + len(self.completion_ids)


@dataclass
class Segment:
    """One training row: consecutive turns of one episode whose token sequences only grow."""

    episode_id: str
    turns: list[int] = field(default_factory=list)  # turn indices in the row, in order
    action_types: list[str] = field(default_factory=list)
    trained: list[bool] = field(default_factory=list)
    input_ids: list[int] = field(default_factory=list, repr=False)
    completion_mask: list[int] = field(default_factory=list, repr=False)
    spans: list[tuple[int, int]] = field(default_factory=list)  # per turn: its [start, end) of trainable tokens
    break_reason: BreakReason = "start"  # why the segment starts here: episode start, edit, drift or a cap
    edited: list[bool] = field(default_factory=list)  # per turn: did it edit the context
    snapshot_tokens: int = 0  # tokens its trained turns would take as per-turn snapshots

    @property
    def n_tokens(self) -> int:
        return len(self.input_ids)

    @property
    def n_trained_tokens(self) -> int:
        return sum(self.completion_mask)

    @property
    def starts_after_edit(self) -> bool:
        """The previous turn edited the context (GRPO trains these first, SPEC 6)."""
        return self.break_reason == "edit"

    @property
    def ends_with_edit(self) -> bool:
        """The row's last turn edits the context."""
        return bool(self.edited) and self.edited[-1]

    @property
    def trained_turns(self) -> list[int]:
        return [t for t, trained in zip(self.turns, self.trained, strict=True) if trained]

    def to_row(self) -> dict[str, Any]:
        """The dataset row: the SFT contract (input_ids, completion_mask, episode_id, turns) and figures."""
        return {
            "input_ids": self.input_ids,
            "completion_mask": self.completion_mask,
            "episode_id": self.episode_id,
            "turns": self.turns,
            "action_types": self.action_types,
            "trained": self.trained,
            "spans": [list(span) for span in self.spans],
            "break_reason": self.break_reason,
            "n_tokens": self.n_tokens,
            "n_trained_tokens": self.n_trained_tokens,
            "snapshot_tokens": self.snapshot_tokens,
        }


# ---------------------------------------------------------------------------------------------
# One turn


def end_of_turn(tokenizer: Any, chat_template_kwargs: dict[str, Any] | None = None) -> str:
    """The text the chat template puts after an assistant message's content (Qwen3: `<|im_end|>\\n`)."""
    kwargs = chat_template_kwargs or {}
    key = (str(tokenizer.chat_template), str(tokenizer.eos_token), json.dumps(kwargs, sort_keys=True, default=str))
    if key not in _END_OF_TURN_CACHE:
        messages = [{"role": "user", "content": "probe"}, {"role": "assistant", "content": _PROBE}]
        rendered = _render(tokenizer, messages, None, False, kwargs)
        if rendered.count(_PROBE) != 1:
            raise SegmentError(
                f"the chat template does not render an assistant message's content verbatim: {rendered!r}"
            )
        _END_OF_TURN_CACHE[key] = rendered.split(_PROBE, 1)[1]
    return _END_OF_TURN_CACHE[key]


def render_prompt(
    tokenizer: Any, traj: Trajectory, turn: Turn, chat_template_kwargs: dict[str, Any] | None = None
) -> str:
    """The rendered context the model was given before `turn`, ending with the generation prompt."""
    return _render(tokenizer, traj.context_messages(turn), traj.tools or None, True, chat_template_kwargs or {})


def render_turn(
    tokenizer: Any,
    traj: Trajectory,
    turn: Turn,
    chat_template_kwargs: dict[str, Any] | None = None,
    sampled_ids: bool = False,
) -> TurnTokens:
    """Tokenize one turn: prompt ids, completion ids (raw assistant text + end of turn) and the trained count.
    With `sampled_ids`, a turn that recorded its sampled ids keeps them as its completion (see the module doc)."""
    prompt = render_prompt(tokenizer, traj, turn, chat_template_kwargs)
    raw = traj.messages[turn.assistant].content
    eot = end_of_turn(tokenizer, chat_template_kwargs)
    prompt_ids = _encode(tokenizer, prompt)
    where = f"episode {traj.episode_id!r} turn {turn.index}"
    if sampled_ids and turn.token_ids is not None:
        return _sampled_turn(tokenizer, prompt_ids, turn.token_ids, eot, where)
    full_ids = _encode(tokenizer, prompt + raw + eot)
    if full_ids[: len(prompt_ids)] != prompt_ids:
        raise SegmentError(
            f"{where}: the prompt's tokens are not a prefix of prompt+completion (the tokenizer merges across the "
            f"boundary {prompt[-20:]!r} | {raw[:20]!r}), so the completion tokens are not well defined"
        )
    completion_ids = full_ids[len(prompt_ids) :]
    return TurnTokens(prompt_ids, completion_ids, _n_trained(tokenizer, completion_ids, eot, where))


def _sampled_turn(tokenizer: Any, prompt_ids: list[int], sampled: list[int], eot: str, where: str) -> TurnTokens:
    """A turn the student sampled: its completion is the sampled ids themselves (all trained, so GRPO trains
    exactly what the policy produced, with its sampling logprobs), then the template's end of turn as context:
    the tail after the EOS when the sampler stopped at the EOS, the whole end of turn when it stopped before
    (cut at the output cap, or another stop token). Never re-encoded from the text."""
    if not sampled:
        raise SegmentError(f"{where}: token_ids is empty (a sampled turn has at least one token)")
    eos = tokenizer.eos_token
    if eos and eos in eot and sampled[-1] == tokenizer.eos_token_id:
        tail = eot[eot.rindex(eos) + len(eos) :]
        after = _encode(tokenizer, tail) if tail else []
    else:
        after = _encode(tokenizer, eot)
    return TurnTokens(prompt_ids, list(sampled) + after, len(sampled))


def reencode_differs(tokenizer: Any, traj: Trajectory, turn: Turn) -> bool | None:
    """Whether the decode -> encode round trip of a sampled turn gives other ids than were sampled (what training
    on the re-rendered text would have got wrong); None for a turn without sampled ids. A sampled EOS at the end
    is the template's, not the text's, so it is left out of the comparison."""
    if turn.token_ids is None:
        return None
    body = list(turn.token_ids)
    if body and body[-1] == tokenizer.eos_token_id:
        body.pop()
    return _encode(tokenizer, traj.messages[turn.assistant].content) != body


def _n_trained(tokenizer: Any, completion_ids: list[int], eot: str, where: str) -> int:
    """How many completion tokens are trained: all of them up to and including the EOS, not the template's
    tail after it. Checked on ids: the EOS is a special token, so the tail tokenizes on its own."""
    eos = tokenizer.eos_token
    if not eos or eos not in eot:
        return len(completion_ids)  # a template without the EOS in its end of turn: train all of it
    tail = eot[eot.rindex(eos) + len(eos) :]
    tail_ids = _encode(tokenizer, tail) if tail else []
    n_trained = len(completion_ids) - len(tail_ids)
    if (
        n_trained < 1
        or completion_ids[n_trained - 1] != tokenizer.eos_token_id
        or completion_ids[n_trained:] != tail_ids
    ):
        raise SegmentError(f"{where}: the completion does not end with the EOS {eos!r} and the tail {tail!r}")
    return n_trained


def _render(
    tokenizer: Any, messages: list[dict[str, str]], tools: list | None, generation: bool, kwargs: dict[str, Any]
) -> str:
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template(
            messages, tools=tools, add_generation_prompt=generation, tokenize=False, **kwargs
        )
    except TemplateError as exc:
        raise SegmentError(f"the chat template failed: {exc}") from exc


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


# ---------------------------------------------------------------------------------------------
# Episodes


def check_trajectory(traj: Trajectory) -> None:
    """The table references a record must satisfy before it can be rendered; errors name the turn and field."""
    n = len(traj.messages)
    for position, turn in enumerate(traj.turns):
        where = f"episode {traj.episode_id!r} turn {position}"
        if turn.index != position:
            raise SegmentError(f"{where}: turns.{position}.index is {turn.index}, expected {position}")
        if not turn.context:
            raise SegmentError(f"{where}: turns.{position}.context is empty")
        bad = [i for i in turn.context if not 0 <= i < n]
        if bad:
            raise SegmentError(f"{where}: turns.{position}.context has indices {bad[:5]} outside the {n} messages")
        if not 0 <= turn.assistant < n or traj.messages[turn.assistant].role != "assistant":
            raise SegmentError(f"{where}: turns.{position}.assistant={turn.assistant} is not an assistant message")


def segment_trajectory(
    tokenizer: Any,
    traj: Trajectory,
    trained_turns: Iterable[int] | None = None,
    max_turns_per_segment: int | None = None,
    max_tokens_per_segment: int | None = None,
    chat_template_kwargs: dict[str, Any] | None = None,
    sampled_ids: bool = False,
) -> list[Segment]:
    """Cut an episode into segments (see the module doc). `trained_turns` (default: all) are the turn
    indices whose assistant tokens are masked in; the others stay in the rows as context. Every trained
    turn is in exactly one segment. `sampled_ids`: train the ids each turn sampled, where it recorded them
    (GRPO: they are ids of this very tokenizer; a teacher's ids may not be, so SFT renders the text)."""
    check_trajectory(traj)
    trained = set(range(len(traj.turns))) if trained_turns is None else set(trained_turns)
    segments: list[Segment] = []
    run: list[tuple[Turn, TurnTokens]] = []
    reason: BreakReason = "start"
    for turn in traj.turns:
        tokens = render_turn(tokenizer, traj, turn, chat_template_kwargs, sampled_ids)
        if run:
            previous, previous_tokens = run[-1]
            cut = _break_reason(
                previous, previous_tokens, tokens, len(run), max_turns_per_segment, max_tokens_per_segment
            )
            if cut is not None:
                segments.append(_build(traj.episode_id, run, trained, reason))
                run, reason = [], cut
        run.append((turn, tokens))
    if run:
        segments.append(_build(traj.episode_id, run, trained, reason))
    return segments


def snapshot_trajectory(
    tokenizer: Any,
    traj: Trajectory,
    trained_turns: Iterable[int] | None = None,
    chat_template_kwargs: dict[str, Any] | None = None,
) -> list[Segment]:
    """Per-turn snapshots: the special case of one turn per segment."""
    return segment_trajectory(tokenizer, traj, trained_turns, 1, None, chat_template_kwargs)


def _break_reason(
    previous: Turn,
    previous_tokens: TurnTokens,
    tokens: TurnTokens,
    run_length: int,
    max_turns: int | None,
    max_tokens: int | None,
) -> BreakReason | None:
    if previous.edited:
        return "edit"
    n = len(previous_tokens)
    if (
        tokens.prompt_ids[: len(previous_tokens.prompt_ids)] != previous_tokens.prompt_ids
        or tokens.prompt_ids[len(previous_tokens.prompt_ids) : n] != previous_tokens.completion_ids
    ):
        return "drift"
    if max_turns is not None and run_length >= max_turns:
        return "max_turns"
    if max_tokens is not None and len(tokens) > max_tokens:
        return "max_tokens"
    return None


def _build(episode_id: str, run: list[tuple[Turn, TurnTokens]], trained: set[int], reason: BreakReason) -> Segment:
    """One row from a run: the ids of its last trained turn (or of the whole run when none is trained),
    mask 1 on each trained turn's completion up to its EOS."""
    last = max((k for k, (turn, _) in enumerate(run) if turn.index in trained), default=len(run) - 1)
    run = run[: last + 1]
    input_ids = run[-1][1].full_ids
    mask = [0] * len(input_ids)
    segment = Segment(episode_id, input_ids=input_ids, completion_mask=mask, break_reason=reason)
    for turn, tokens in run:
        start = len(tokens.prompt_ids)
        span = (start, start + tokens.n_trained)
        is_trained = turn.index in trained
        if is_trained:
            mask[span[0] : span[1]] = [1] * tokens.n_trained
            segment.snapshot_tokens += len(tokens)
        segment.turns.append(turn.index)
        segment.action_types.append(turn.action)
        segment.trained.append(is_trained)
        segment.edited.append(turn.edited)
        segment.spans.append(span)
    return segment
