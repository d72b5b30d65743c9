"""GRPO's figures of each generation (SPEC 6): rewards, end states, context use, segments, tokens trained.

Every figure is over all processes (gathered), logged through TRL's `_metrics`, so it reaches `report_to` with
TRL's own. `reencode_mismatch_share` is the share of sampled turns whose decode -> encode round trip would have
changed the ids (trained as sampled here: token-in/token-out).

A mixin of `StateLMGRPOTrainer`.
"""

from __future__ import annotations

from collections import Counter

import torch
from accelerate.utils import gather, gather_object
from trl.trainer.utils import nanstd

from pipeline.data.trajectory import END_STATES


class GenerationMetrics:
    """The per-generation log (mixed into StateLMGRPOTrainer)."""

    def _log_generation(self, episodes, rewards_per_func, rewards, advantages, stats, chunks) -> None:
        """Every step: reward and each component, end states, accuracy, context use, deletions, segments, tokens."""
        metrics = self._metrics["train"]
        for i, name in enumerate(self.reward_func_names):
            metrics[f"rewards/{name}/mean"].append(torch.nanmean(rewards_per_func[:, i]).item())
            metrics[f"rewards/{name}/std"].append(nanstd(rewards_per_func[:, i]).item())
        metrics["reward"].append(rewards.mean().item())
        metrics["reward_std"].append(rewards.std().item() if rewards.numel() > 1 else 0.0)
        groups = rewards.view(-1, self.num_generations)
        metrics["frac_reward_zero_std"].append((groups.std(dim=1) < 1e-8).float().mean().item())
        metrics["advantage_abs_mean"].append(advantages.abs().mean().item())

        tokens = sum(int(c["tool_mask"].sum()) for c in chunks)
        local = [
            {
                "end_state": e.trajectory.end_state,
                "correct": e.trajectory.correct,
                "mean_context": e.trajectory.mean_context_tokens,
                "peak_context": e.trajectory.peak_context_tokens,
                "deletions": sum(c["name"] == "deleteContext" for t in e.trajectory.turns for c in t.tool_calls),
                "rounds": e.trajectory.rounds,
                "format_errors": e.trajectory.format_errors,
            }
            for e in episodes
        ]
        everything = gather_object(local)
        n = len(everything)
        ends = Counter(e["end_state"] for e in everything)
        for state in END_STATES:
            metrics[f"episodes/{state}"].append(ends[state] / n)
        metrics["episodes/accuracy"].append(sum(e["correct"] for e in everything) / n)
        metrics["episodes/context_tokens_mean"].append(sum(e["mean_context"] for e in everything) / n)
        metrics["episodes/context_tokens_peak"].append(max(e["peak_context"] for e in everything))
        metrics["episodes/context_tokens_peak_mean"].append(sum(e["peak_context"] for e in everything) / n)
        metrics["episodes/deletions"].append(sum(e["deletions"] for e in everything) / n)
        metrics["episodes/rounds"].append(sum(e["rounds"] for e in everything) / n)
        metrics["episodes/format_errors"].append(sum(e["format_errors"] for e in everything) / n)

        totals = torch.tensor([*stats.as_list(), len(episodes)], dtype=torch.float64, device=self.accelerator.device)
        cut, picked, unsegmentable, edit_picks, sampled, mismatched, n_episodes = gather(totals[None]).sum(0).tolist()
        # the share of sampled turns whose decode -> encode would have changed the ids (trained as sampled here)
        metrics["reencode_mismatch_share"].append(mismatched / max(sampled, 1))
        metrics["segments/per_episode"].append(cut / n_episodes)
        metrics["segments/trained_per_episode"].append(picked / n_episodes)
        metrics["segments/edit_adjacent_share"].append(edit_picks / max(picked, 1))
        metrics["episodes/unsegmentable"].append(unsegmentable / n_episodes)
        trained = gather(torch.tensor([tokens], device=self.accelerator.device)).sum().item()
        metrics["tokens/trained"].append(trained)
        self.state.num_input_tokens_seen += trained
        metrics["num_tokens"] = [self.state.num_input_tokens_seen]
