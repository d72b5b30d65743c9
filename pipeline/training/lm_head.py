"""The LM head's loss only at the positions that are trained, on the CPU too.

TRL's fused LM head (`add_fused_lm_head`, used by SFTTrainer and GRPOTrainer) projects and log-softmaxes only the
positions whose label is not -100 on CUDA/XPU, but every position elsewhere (a fixed tile shape keeps compilers
such as Neuron's from recompiling per batch). On a CPU nothing recompiles, and our rows train few of their
positions (the demo's: ~7% of a ~1,600-token segment are assistant tokens), so scoring every position spends most
of the head's time on results that are masked away: SmolLM2's 49,152-word head in float32 (TRL accumulates the
head's products in float32) was about half of a demo SFT step (`benchmarks/sft_speed_bench.py --lm-head`).

The same kernel runs on fewer rows, so the loss and gradients are those of the full path (tested); only TRL's
decision is widened, by rebinding the name its fused forward reads (`trl.trainer.utils._use_triton`, private in
the pinned TRL 1.16: its kernels module keeps its own binding, so the kernel choice itself is unchanged).
"""

from __future__ import annotations

import torch
import trl.trainer.utils as trl_utils

_stock_choice = trl_utils._use_triton


def _compact_on_cpu_too(device: torch.device) -> bool:
    """TRL's "score only the labelled positions" decision, also true on the CPU."""
    return device.type == "cpu" or _stock_choice(device)


def score_trained_positions_only(enabled: bool = True) -> None:
    """Make TRL's fused LM head score only labelled positions on the CPU (`enabled=False` restores TRL's choice).
    Process-wide and idempotent: every fused head of the process (policy and reference model) follows it."""
    trl_utils._use_triton = _compact_on_cpu_too if enabled else _stock_choice
