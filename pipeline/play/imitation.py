"""How closely a local model imitates the expert on held-out episodes, turn by turn, under teacher forcing.

Playing an episode compounds errors: one wrong keyword and every later turn sees a context the model never
trained on. The per-turn figure separates what was learned from that cascade: the expert's own episode is
rendered exactly as SFT rows are (`pipeline.data.segments`), the model reads it, and a turn counts as imitated
when the greedy (argmax) choice at every trained token of that turn is the expert's token. Reported per
action type, so "learned the loop but not the copying" shows up as high figures for analyzeText/buildIndex
and low ones for searchEngine/note/finish, whose arguments are copied from the context.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch

from pipeline.data.segments import segment_trajectory
from pipeline.data.trajectory import Trajectory


@torch.no_grad()
def imitation_figures(
    model: Any, tokenizer: Any, trajectories: list[Trajectory], chat_template_kwargs: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Share of the expert's turns reproduced exactly (and of their tokens), overall and per action type."""
    model.eval()
    device = next(model.parameters()).device
    turns: dict[str, list[bool]] = defaultdict(list)
    tokens: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # per action: [right, total]
    for traj in trajectories:
        taught = [t.index for t in traj.turns if t.trained]  # a turn the expert marked untrained is not imitated
        for segment in segment_trajectory(tokenizer, traj, taught, chat_template_kwargs=chat_template_kwargs):
            if segment.n_trained_tokens == 0:
                continue
            ids = torch.tensor([segment.input_ids], device=device)
            predicted = model(input_ids=ids).logits[0, :-1].argmax(-1)
            right = (predicted == ids[0, 1:]).tolist()  # right[p - 1]: token p predicted from its prefix
            for (start, end), action, trained in zip(segment.spans, segment.action_types, segment.trained, strict=True):
                if not trained:
                    continue
                hits = right[start - 1 : end - 1]
                turns[action].append(all(hits))
                tokens[action][0] += sum(hits)
                tokens[action][1] += len(hits)
    every = [ok for oks in turns.values() for ok in oks]
    return {
        "turns": len(every),
        "exact_turn_rate": sum(every) / len(every) if every else 0.0,
        "token_accuracy": sum(r for r, _ in tokens.values()) / max(1, sum(n for _, n in tokens.values())),
        "exact_turn_rate_by_action": {a: sum(oks) / len(oks) for a, oks in sorted(turns.items())},
    }
