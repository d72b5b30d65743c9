"""Group-relative advantages for GRPO (SPEC 6).

The G episodes of one task form a group; an episode's advantage is its reward minus the group mean
(`dr_grpo`, after Dr. GRPO), divided by the group's standard deviation as well for `grpo`. A group whose
rewards are all equal (every episode malformed, say) has advantage 0 for every episode: the std is
0, and the small `eps` in the denominator keeps that a clean 0 instead of 0/0.
"""

from __future__ import annotations

import torch

ADVANTAGE_TYPES = ("grpo", "dr_grpo")


def group_advantages(rewards: torch.Tensor, group_size: int, kind: str = "grpo", eps: float = 1e-4) -> torch.Tensor:
    """Advantages of consecutive groups of `group_size` rewards (shape (N,), N a multiple of group_size)."""
    if kind not in ADVANTAGE_TYPES:
        raise ValueError(f"unknown advantage type {kind!r}; choose from {ADVANTAGE_TYPES}")
    if group_size < 2:
        raise ValueError(f"a group needs at least 2 episodes, got group_size={group_size}")
    if rewards.ndim != 1 or rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    grouped = rewards.float().view(-1, group_size)
    advantages = grouped - grouped.mean(dim=1, keepdim=True)
    if kind == "grpo":
        # unbiased std, as TRL's GRPOTrainer
        advantages = advantages / (grouped.std(dim=1, keepdim=True) + eps)
    return advantages.view(-1)
