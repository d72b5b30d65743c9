"""Pictures people would rather look at than tables: the sawtooth, accuracy by input length, training curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt

from pipeline.data.trajectory import Trajectory


def sawtooth_plot(trajectories: list[Trajectory], path: str | Path, title: str, budget: int | None = None) -> Path:
    """Context tokens before each turn (and after the last) for a few episodes; deletions marked."""
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for number, traj in enumerate(trajectories):
        if not traj.turns:
            continue
        xs = list(range(len(traj.turns) + 1))
        ys = [t.context_tokens_before for t in traj.turns] + [traj.turns[-1].context_tokens_after]
        label = f"{traj.task_id} ({(traj.input_tokens or 0) / 1000:.0f}K-token input, {traj.end_state})"
        (line,) = ax.plot(xs, ys, marker=".", linewidth=1.4, label=label)
        deletes = [i + 1 for i, t in enumerate(traj.turns) if any(c["name"] == "deleteContext" for c in t.tool_calls)]
        ax.scatter(
            deletes,
            [ys[i] for i in deletes],
            marker="v",
            s=50,
            color=line.get_color(),
            label="deleteContext" if number == 0 else None,
            zorder=3,
        )
    if budget:
        ax.axhline(budget, color="grey", linestyle="--", linewidth=1, label=f"budget ({budget} tokens)")
    ax.set_xlabel("turn")
    ax.set_ylabel("active context (tokens)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    return _save(fig, path)


def accuracy_by_length_plot(series: dict[str, dict[str, float]], path: str | Path, title: str) -> Path:
    """One line per system: accuracy in each input-length bucket (bucket labels in order)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, buckets in series.items():
        labels = list(buckets)
        ax.plot(labels, [buckets[b] * 100 for b in labels], marker="o", label=name)
    ax.set_xlabel("input length (tokens)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-5, 105)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def training_curves_plot(
    sft_losses: list[tuple[int, float]], grpo_rewards: list[tuple[int, float]], path: str | Path
) -> Path:
    """SFT loss and GRPO mean episode reward per step, side by side: did each stage move its figure?"""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    if sft_losses:
        left.plot(*zip(*sft_losses, strict=True), linewidth=1.2, color="tab:blue")
    left.set_xlabel("SFT step")
    left.set_ylabel("loss (assistant tokens)")
    left.set_title("SFT on scripted-teacher segments")
    left.grid(alpha=0.3)
    if grpo_rewards:
        right.plot(*zip(*grpo_rewards, strict=True), marker="o", linewidth=1.2, color="tab:green")
    right.set_xlabel("GRPO step")
    right.set_ylabel("mean episode reward")
    right.set_ylim(-1.1, 1.1)
    right.set_title("GRPO from the SFT model")
    right.grid(alpha=0.3)
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
